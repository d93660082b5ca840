//! `cargo xtask fuzz [--seconds N] [TARGET...]`: run the cargo-fuzz targets of `fuzz/` (every
//! parser and guest-facing surface of kvmcap) with libFuzzer, keep each crash as a regression
//! input, and report per target: seconds run, executions, crashes.
//!
//! Each target runs as `cargo +nightly fuzz run TARGET CORPUS SEEDS... -- -max_total_time=N`,
//! with its working corpus in `fuzz/corpus/TARGET/` (not committed) and, read only, its seeds:
//! `fuzz/seeds/TARGET/`, `fuzz/regressions/TARGET/` and, for the TOML parsers, the fixtures.
//! A crash libFuzzer writes to `fuzz/artifacts/TARGET/` is copied into
//! `fuzz/regressions/TARGET/`, where the stable smoke (`harness/tests/fuzz_smoke.rs`, part of
//! `cargo test`) replays it from then on. libFuzzer's output goes to
//! `target/kvmcap/fuzz/TARGET.log`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use xtask::XtaskError;

/// One target's run.
#[derive(Clone, Debug, PartialEq)]
pub struct FuzzRun {
    /// The target.
    pub target: String,
    /// Seconds libFuzzer ran (its own count, else wall time).
    pub seconds: f64,
    /// Inputs executed, if libFuzzer said.
    pub executions: Option<u64>,
    /// Each crash, as copied into `fuzz/regressions/TARGET/`.
    pub crashes: Vec<PathBuf>,
}

/// The fuzz project.
pub fn fuzz_dir() -> PathBuf {
    xtask::workspace_root().join("fuzz")
}

fn spawn_err(tool: &str) -> impl FnOnce(std::io::Error) -> XtaskError + '_ {
    move |source| XtaskError::Spawn {
        tool: tool.to_owned(),
        source,
    }
}

/// The targets `fuzz/Cargo.toml` declares, in file order.
pub fn targets() -> Result<Vec<String>, XtaskError> {
    let path = fuzz_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| XtaskError::Missing {
        what: path.display().to_string(),
        hint: e.to_string(),
    })?;
    targets_of(&text).map_err(|problem| XtaskError::Output { path, problem })
}

fn targets_of(manifest: &str) -> Result<Vec<String>, String> {
    let v: toml::Value = toml::from_str(manifest).map_err(|e| e.to_string())?;
    Ok(v.get("bin")
        .and_then(|b| b.as_array())
        .map(|bins| {
            bins.iter()
                .filter_map(|b| b.get("name")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Makes sure `cargo +nightly fuzz` runs: a nightly toolchain must exist; cargo-fuzz is
/// installed with `cargo install cargo-fuzz` when missing.
fn ensure_cargo_fuzz() -> Result<(), XtaskError> {
    let works = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works(&["+nightly", "--version"]) {
        return Err(XtaskError::Missing {
            what: "a nightly toolchain (cargo-fuzz needs one)".into(),
            hint: "rustup toolchain install nightly".into(),
        });
    }
    if works(&["+nightly", "fuzz", "--version"]) {
        return Ok(());
    }
    xtask::cargo_install("cargo-fuzz")
}

/// The read-only seed directories of `target` that exist.
fn seed_dirs(target: &str) -> Vec<PathBuf> {
    let root = xtask::workspace_root();
    let mut dirs = vec![
        fuzz_dir().join("seeds").join(target),
        fuzz_dir().join("regressions").join(target),
    ];
    match target {
        "catalog" => dirs.push(root.join("fixtures/msr")),
        "feature" => dirs.push(root.join("fixtures/features")),
        "scenario" => dirs.push(root.join("fixtures/scenarios")),
        _ => {}
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// What libFuzzer's output says: executions, seconds, and the crash inputs it wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// `stat::number_of_executed_units`, else the last `#N` status line.
    pub executions: Option<u64>,
    /// `Done N runs in S second(s)`.
    pub seconds: Option<f64>,
    /// `Test unit written to PATH` (crash, leak, timeout or OOM inputs).
    pub artifacts: Vec<PathBuf>,
}

/// Parses libFuzzer's output.
pub fn parse_log(log: &str) -> Stats {
    let mut s = Stats::default();
    let mut last_status = None;
    for line in log.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            s.executions = n.trim().parse().ok().or(s.executions);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 123 runs in 60 second(s)"
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", secs, ..] = words.as_slice() {
                last_status = runs.parse().ok().or(last_status);
                s.seconds = secs.parse().ok();
            }
        } else if let Some(path) = line.split("Test unit written to ").nth(1) {
            s.artifacts.push(PathBuf::from(path.trim()));
        } else if let Some(rest) = line.strip_prefix('#') {
            // "#4096\tpulse  cov: ..." or "#12345\tDONE ..."
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                last_status = Some(n);
            }
        }
    }
    if s.executions.is_none() {
        s.executions = last_status;
    }
    s
}

/// Runs one target for `seconds`, copying its crashes into `fuzz/regressions/TARGET/`.
fn run_target(target: &str, seconds: u64) -> Result<FuzzRun, XtaskError> {
    let corpus = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| XtaskError::Output {
        path: corpus.clone(),
        problem: e.to_string(),
    })?;
    let logs = xtask::target_dir().join("kvmcap/fuzz");
    std::fs::create_dir_all(&logs).map_err(|e| XtaskError::Output {
        path: logs.clone(),
        problem: e.to_string(),
    })?;
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| XtaskError::Output {
        path: log_path.clone(),
        problem: e.to_string(),
    })?;
    let err_log = log.try_clone().map_err(|e| XtaskError::Output {
        path: log_path.clone(),
        problem: e.to_string(),
    })?;
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg(target)
        .arg(&corpus)
        .args(seed_dirs(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-print_final_stats=1"])
        .current_dir(xtask::workspace_root())
        .stdout(log)
        .stderr(err_log);
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log_path.display()
    );
    let start = Instant::now();
    let status = cmd.status().map_err(spawn_err("cargo +nightly fuzz run"))?;
    let wall = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stats = parse_log(&text);
    if !status.success() && stats.artifacts.is_empty() {
        let lines: Vec<&str> = text.lines().collect();
        return Err(XtaskError::Build {
            command: format!("cargo +nightly fuzz run {target}"),
            status: status.to_string(),
            tail: format!("\n{}", lines[lines.len().saturating_sub(20)..].join("\n")),
        });
    }
    let regressions = fuzz_dir().join("regressions").join(target);
    let mut crashes = Vec::new();
    for a in &stats.artifacts {
        let src = if a.is_absolute() {
            a.clone()
        } else {
            xtask::workspace_root().join(a)
        };
        let name = src
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "crash".into());
        let dst = regressions.join(&name);
        std::fs::create_dir_all(&regressions)
            .and_then(|_| std::fs::copy(&src, &dst))
            .map_err(|e| XtaskError::Output {
                path: dst.clone(),
                problem: format!("copying {}: {e}", src.display()),
            })?;
        eprintln!(
            "xtask: {target}: crash input saved as {}",
            rel(&dst).display()
        );
        crashes.push(dst);
    }
    Ok(FuzzRun {
        target: target.to_owned(),
        seconds: stats.seconds.unwrap_or(wall),
        executions: stats.executions,
        crashes,
    })
}

fn rel(p: &Path) -> &Path {
    p.strip_prefix(xtask::workspace_root()).unwrap_or(p)
}

/// Runs `only` (or every target) for `seconds` each. Builds the targets once first.
pub fn run(seconds: u64, only: &[String]) -> Result<Vec<FuzzRun>, XtaskError> {
    let all = targets()?;
    for t in only {
        if !all.contains(t) {
            return Err(XtaskError::Usage(format!(
                "no fuzz target `{t}` (targets: {})",
                all.join(", ")
            )));
        }
    }
    let chosen: Vec<String> = if only.is_empty() { all } else { only.to_vec() };
    ensure_cargo_fuzz()?;
    // `cargo fuzz build` takes one target or none (all).
    let one: &[String] = if chosen.len() == 1 { &chosen } else { &[] };
    let status = Command::new("cargo")
        .args(["+nightly", "fuzz", "build", "--fuzz-dir"])
        .arg(fuzz_dir())
        .args(one)
        .current_dir(xtask::workspace_root())
        .status()
        .map_err(spawn_err("cargo +nightly fuzz build"))?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: "cargo +nightly fuzz build".into(),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    chosen.iter().map(|t| run_target(t, seconds)).collect()
}

/// The per-target table (Markdown).
pub fn table(runs: &[FuzzRun]) -> String {
    let mut out = String::from(
        "| target | seconds | executions | crashes | saved as |\n|---|---:|---:|---:|---|\n",
    );
    for r in runs {
        let saved: Vec<String> = r
            .crashes
            .iter()
            .map(|p| rel(p).display().to_string())
            .collect();
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} |\n",
            r.target,
            r.seconds,
            r.executions.map_or("?".into(), |n| n.to_string()),
            r.crashes.len(),
            saved.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                   #4096\tpulse  cov: 20 ft: 30 corp: 5/40b lim: 43 exec/s: 2048 rss: 31Mb\n\
                   #123456\tDONE   cov: 20 ft: 30 corp: 5/40b lim: 43 exec/s: 2057 rss: 31Mb\n\
                   Done 123456 runs in 60 second(s)\nstat::number_of_executed_units: 123457\n\
                   stat::average_exec_per_sec:     2057\n";
        let s = parse_log(log);
        assert_eq!(s.executions, Some(123457));
        assert_eq!(s.seconds, Some(60.0));
        assert!(s.artifacts.is_empty());
        let crash = "#77\tNEW    cov: 1\n==1== ERROR: libFuzzer: deadly signal\n\
                     artifact_prefix='/w/fuzz/artifacts/cpio/'; Test unit written to /w/fuzz/artifacts/cpio/crash-abc\n";
        let s = parse_log(crash);
        assert_eq!(s.executions, Some(77));
        assert_eq!(
            s.artifacts,
            vec![PathBuf::from("/w/fuzz/artifacts/cpio/crash-abc")]
        );
    }

    #[test]
    fn targets_come_from_the_manifest() {
        let m = "[package]\nname='f'\n[[bin]]\nname = \"frame\"\npath='a'\n[[bin]]\nname = \"cpio\"\npath='b'\n";
        assert_eq!(targets_of(m).unwrap(), vec!["frame", "cpio"]);
        let real = targets().unwrap();
        assert!(real.contains(&"bzimage".to_owned()), "{real:?}");
    }
}
