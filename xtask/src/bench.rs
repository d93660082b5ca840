//! `cargo xtask bench`: kvmcap against the peers a KVM engineer would use instead, measured in
//! the same invocation on the same machine, reported as median, p10, p90 and ratios, written
//! to BENCHMARKS.md with a chart drawn from the JSON. No test asserts on these numbers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::{target_dir, workspace_root, XtaskError};

/// Summary statistics of one measurement, in milliseconds.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Runs.
    pub runs: usize,
    /// Median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// Computes the statistics of `samples` (ms).
pub fn stats(samples: &mut [f64]) -> Stats {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if samples.is_empty() {
            return f64::NAN;
        }
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i]
    };
    Stats {
        runs: samples.len(),
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

fn to_json(s: &Stats) -> Value {
    json!({"runs": s.runs, "median_ms": s.median, "p10_ms": s.p10, "p90_ms": s.p90})
}

/// Times `a` and `b` alternately, `runs` each, so that a change in the shared machine's load
/// moves both (their ratio is what the benchmark reports).
fn time_interleaved(
    a: &mut Command,
    b: &mut Command,
    runs: usize,
) -> Result<(Stats, Stats), XtaskError> {
    let (mut sa, mut sb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        sa.push(time_once(a)?);
        sb.push(time_once(b)?);
    }
    Ok((stats(&mut sa), stats(&mut sb)))
}

/// One run of `cmd`, in milliseconds; a failure is an error.
fn time_once(cmd: &mut Command) -> Result<f64, XtaskError> {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: format!("{cmd:?}"),
            source,
        })?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        return Err(XtaskError::Build {
            command: format!("{cmd:?}"),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(ms)
}

/// Builds the C floor (raw ioctls, what KVM selftests do).
pub fn build_floor() -> Result<PathBuf, XtaskError> {
    let src = workspace_root().join("xtask/bench/floor.c");
    let out = target_dir().join("kvmcap/bench/floor");
    if let Some(d) = out.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: "cc".into(),
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: format!("cc {}", src.display()),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(out)
}

/// Builds kvmcap in release mode.
pub fn build_kvmcap() -> Result<PathBuf, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "--quiet", "-p", "kvmcap"])
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: cargo,
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: "cargo build --release -p kvmcap".into(),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(target_dir().join("release/kvmcap"))
}

/// One benchmark's result.
#[derive(Clone, Debug)]
pub struct Bench {
    /// Its name.
    pub name: String,
    /// What kvmcap measured.
    pub kvmcap: Option<Stats>,
    /// The peer's name.
    pub peer: String,
    /// What the peer measured.
    pub peer_stats: Option<Stats>,
    /// What the numbers mean, or why one is missing.
    pub note: String,
}

impl Bench {
    /// kvmcap / peer (medians).
    pub fn ratio(&self) -> Option<f64> {
        Some(self.kvmcap.as_ref()?.median / self.peer_stats.as_ref()?.median)
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "kvmcap": self.kvmcap.as_ref().map(to_json),
            "peer": self.peer,
            "peer_stats": self.peer_stats.as_ref().map(to_json),
            "ratio": self.ratio(),
            "note": self.note,
        })
    }
}

/// Bare probe of the whole catalog on 2 vCPUs, against the raw-ioctl floor.
pub fn bare_probe(
    kvmcap: &Path,
    floor: &Path,
    runs: usize,
    catalog: &[String],
) -> Result<Bench, XtaskError> {
    let catalog_len = catalog.len();
    let (k, f) = time_interleaved(
        Command::new(kvmcap).args([
            "probe",
            "--guest",
            "bare",
            "--backend",
            "none",
            "--catalog",
            "--vcpus",
            "2",
            "--json",
        ]),
        Command::new(floor).arg("2").args(catalog),
        runs,
    )?;
    Ok(Bench {
        name: format!("bare probe, process start to report, catalog ({catalog_len} MSRs) x 2 vCPUs"),
        kvmcap: Some(k),
        peer: "C floor: raw ioctls, the same reads in a real-mode guest, no report (xtask/bench/floor.c)".into(),
        peer_stats: Some(f),
        note: "whole processes, exec included; kvmcap also negotiates, runs vCPU threads, judges and prints JSON".into(),
    })
}

/// The bare probe's multiboot image under QEMU (`-accel kvm`), as kvm-unit-tests run: the
/// same compiled reads, QEMU process start to exit (its guest has dumped the results area),
/// for QEMU's fastest machine (microvm, qboot) and kvm-unit-tests' default (pc, SeaBIOS).
/// The dump is checked once to be complete; the readings' agreement with kvmcap's own run
/// goes in the note.
pub fn bare_probe_qemu(
    kvmcap: &Path,
    kvmcap_stats: &Stats,
    runs: usize,
    catalog_len: usize,
) -> Result<Vec<Bench>, XtaskError> {
    let qemu = crate::lab::qemu()?;
    let dir = target_dir().join("kvmcap/bench");
    let image = dir.join("probe.mb");
    let dump = dir.join("probe.dump");
    let selection = ["--catalog", "--vcpus", "2"];
    let status = Command::new(kvmcap)
        .args(["image", "--out"])
        .arg(&image)
        .args(selection)
        .stdout(Stdio::null())
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: "kvmcap image".into(),
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: "kvmcap image --out".into(),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    let run_qemu = |machine: &str, runs: usize| -> Result<Stats, XtaskError> {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let _ = std::fs::remove_file(&dump);
            let start = Instant::now();
            let out = Command::new(&qemu)
                .args(["-accel", "kvm", "-M", machine])
                // `-cpu host` as kvmcap gives the guest KVM's supported CPUID; this host's KVM
                // refuses QEMU's write of IA32_ARCH_CAPABILITIES, so that one is off.
                .args(["-cpu", "host,-arch-capabilities", "-smp", "2", "-m", "64"])
                .args(["-nodefaults", "-display", "none", "-no-reboot", "-kernel"])
                .arg(&image)
                .arg("-debugcon")
                .arg(format!("file:{}", dump.display()))
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
                .stdout(Stdio::null())
                .output()
                .map_err(|source| XtaskError::Spawn {
                    tool: qemu.display().to_string(),
                    source,
                })?;
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
            // isa-debug-exit: the guest wrote 0, QEMU exits (0 << 1) | 1.
            if out.status.code() != Some(1) {
                return Err(XtaskError::Build {
                    command: format!("qemu -M {machine} -kernel {}", image.display()),
                    status: out.status.to_string(),
                    tail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
        Ok(stats(&mut samples))
    };
    let micro = run_qemu("microvm", runs)?;
    let agreement = compare_dump(kvmcap, &dump, &selection)?;
    let pc = run_qemu("pc", (runs / 4).max(5))?;
    let name =
        format!("bare probe, process start to report, catalog ({catalog_len} MSRs) x 2 vCPUs");
    Ok(vec![
        Bench {
            name: name.clone(),
            kvmcap: Some(kvmcap_stats.clone()),
            peer: "QEMU -accel kvm -M microvm (qboot) running the same probe as a multiboot image (`kvmcap image`)".into(),
            peer_stats: Some(micro),
            note: format!("QEMU process start to exit, after its guest dumped the results area to the debug console; its boot CPU runs both vCPUs' lists (no AP start-up in the image). {agreement}"),
        },
        Bench {
            name,
            kvmcap: Some(kvmcap_stats.clone()),
            peer: "QEMU -accel kvm -M pc (SeaBIOS), kvm-unit-tests' default machine, same image".into(),
            peer_stats: Some(pc),
            note: "as above; SeaBIOS runs in real mode, which this host's KVM emulates instruction by instruction".into(),
        },
    ])
}

/// Reads QEMU's dump with `kvmcap image --dump` and counts the readings that equal kvmcap's
/// own run of the same probe.
fn compare_dump(kvmcap: &Path, dump: &Path, selection: &[&str]) -> Result<String, XtaskError> {
    let json = |cmd: &mut Command, what: &str| -> Result<Value, XtaskError> {
        let out = cmd.output().map_err(|source| XtaskError::Spawn {
            tool: what.into(),
            source,
        })?;
        serde_json::from_slice(&out.stdout).map_err(|e| XtaskError::Output {
            path: kvmcap.to_owned(),
            problem: format!(
                "{what}: {e} ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    };
    let q = json(
        Command::new(kvmcap)
            .args(["image", "--json", "--dump"])
            .arg(dump)
            .args(selection),
        "kvmcap image --dump",
    )?;
    let k = json(
        Command::new(kvmcap)
            .args(["probe", "--guest", "bare", "--backend", "none", "--json"])
            .args(selection),
        "kvmcap probe",
    )?;
    let (q, k) = (
        q.as_array().cloned().unwrap_or_default(),
        k["readings"].as_array().cloned().unwrap_or_default(),
    );
    let mut differ: Vec<String> = Vec::new();
    let mut same = 0;
    for (a, b) in q.iter().zip(&k) {
        if a["guest"] == b["guest"] {
            same += 1;
        } else if b["cpu"] == 0 {
            differ.push(a["name"].as_str().unwrap_or("?").to_owned());
        }
    }
    Ok(format!(
        "Readings: {same} of {} equal kvmcap's; on vCPU 0 these differ: {} (QEMU sets them, or they change: the TSC; on vCPU 1 also the APIC base's BSP bit).",
        k.len().max(q.len()),
        differ.join(", ")
    ))
}

/// The cost of one guest MSR access, measured in the guest (lfence; rdtsc around each rdmsr
/// of the bare probe) over N reads, median per run, reported in microseconds.
pub fn msr_cost(kvmcap: &Path, runs: usize) -> Result<Vec<Bench>, XtaskError> {
    let n = 1000usize;
    let measure = |backend: &str, msr: &str, host: Option<&str>| -> Result<Stats, XtaskError> {
        let mut per_run = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut c = Command::new(kvmcap);
            c.args([
                "probe",
                "--guest",
                "bare",
                "--backend",
                backend,
                "--vcpus",
                "1",
                "--msr",
                msr,
                "--timed",
                "--repeat",
            ])
            .arg(n.to_string())
            .arg("--json");
            if let Some(h) = host {
                c.args(["--host-value", h]);
            }
            let out = c.output().map_err(|source| XtaskError::Spawn {
                tool: "kvmcap probe".into(),
                source,
            })?;
            let doc: Value =
                serde_json::from_slice(&out.stdout).map_err(|e| XtaskError::Output {
                    path: kvmcap.to_owned(),
                    problem: format!("probe JSON: {e}"),
                })?;
            let khz = doc["tsc_khz"].as_f64().unwrap_or(0.0);
            let mut cycles: Vec<f64> = doc["readings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["cycles"].as_f64())
                .collect();
            if khz <= 0.0 || cycles.is_empty() {
                return Err(XtaskError::Output {
                    path: kvmcap.to_owned(),
                    problem: "probe JSON has no cycles or tsc_khz".into(),
                });
            }
            // ms per access, so Stats' formatting shows µs.
            per_run.push(stats(&mut cycles).median / khz);
        }
        Ok(stats(&mut per_run))
    };
    let in_kernel = measure("none", "MSR_PLATFORM_INFO", None)?;
    let user = measure("user", "AMD_PPIN", Some("MSR_PPIN=0x1122334455667788"))?;
    let gp = measure("none", "AMD_PPIN", None)?;
    Ok(vec![
        Bench {
            name: "guest rdmsr: PPIN through backend user (exit to the VMM's model)".into(),
            kvmcap: Some(user),
            peer: "MSR_PLATFORM_INFO, emulated inside KVM".into(),
            peer_stats: Some(in_kernel.clone()),
            note: format!(
                "in-guest lfence;rdtsc around each of {n} reads, median per run; this host is itself a VM, so every exit is nested. Stock KVM here has no KVM_CAP_PPIN: the kernel backend's figures are the lab rows"
            ),
        },
        Bench {
            name: "guest rdmsr: PPIN with stock KVM (#GP delivered to the guest)".into(),
            kvmcap: Some(gp),
            peer: "MSR_PLATFORM_INFO, emulated inside KVM".into(),
            peer_stats: Some(in_kernel),
            note: "the #GP path: exit, KVM injects #GP, the probe's handler skips the instruction".into(),
        },
    ])
}

/// One `cargo xtask patch-boot-verify`, as a user runs it (the alias: debug xtask).
fn patch_boot_verify() -> Result<f64, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    time_once(Command::new(cargo).current_dir(workspace_root()).args([
        "run",
        "--quiet",
        "--package",
        "xtask",
        "--",
        "patch-boot-verify",
    ]))
}

/// The edit loop: patch-boot-verify after touching arch/x86/kvm/x86.c (warm, `runs` times),
/// against the same from cold when `cold` (target/kernel removed first: the source unpacked
/// and patched, the kernel and selftest built from scratch; Rust artifacts stay). Without
/// `cold`, one untimed run first brings everything up to date.
pub fn edit_loop(runs: usize, cold: bool) -> Result<Bench, XtaskError> {
    let kernel_dir = target_dir().join("kernel");
    let cold_stats = if cold {
        if kernel_dir.exists() {
            std::fs::remove_dir_all(&kernel_dir).map_err(|e| XtaskError::Output {
                path: kernel_dir.clone(),
                problem: e.to_string(),
            })?;
        }
        Some(stats(&mut [patch_boot_verify()?]))
    } else {
        patch_boot_verify()?;
        None
    };
    let x86 = crate::patches::patched_root(crate::kernel::Kernel::Newest)
        .join(crate::kernel::NEWEST_PACKAGE)
        .join("arch/x86/kvm/x86.c");
    let mut samples = Vec::new();
    for _ in 0..runs {
        let f = std::fs::File::options()
            .append(true)
            .open(&x86)
            .map_err(|e| XtaskError::Output {
                path: x86.clone(),
                problem: e.to_string(),
            })?;
        f.set_modified(std::time::SystemTime::now())
            .map_err(|e| XtaskError::Output {
                path: x86.clone(),
                problem: e.to_string(),
            })?;
        samples.push(patch_boot_verify()?);
    }
    Ok(Bench {
        name: "edit loop: touch arch/x86/kvm/x86.c, then patch-boot-verify to a green table".into(),
        kvmcap: Some(stats(&mut samples)),
        peer: "the same from cold: target/kernel removed (source unpacked and patched, kernel and selftest built from scratch)".into(),
        peer_stats: cold_stats,
        note: if cold {
            "warm: incremental kernel build (x86.o and the link), selftest and initramfs up to date, lab boot, 12 jobs; `cargo xtask patch-boot-verify` prints where its time goes".into()
        } else {
            "warm only (--quick skips the cold run, which rebuilds the kernel: minutes)".into()
        },
    })
}

/// The chart: one bar per ratio on a log scale around parity (1.0, the dashed line); bars
/// to the left (green) are where kvmcap is faster, to the right (red) where it loses.
fn svg(benches: &[Bench]) -> String {
    let rows: Vec<(String, f64)> = benches
        .iter()
        .filter_map(|b| {
            b.ratio()
                .filter(|r| *r > 0.0 && r.is_finite())
                .map(|r| (format!("{} vs {}", b.name, b.peer), r))
        })
        .collect();
    let span = rows
        .iter()
        .map(|(_, r)| r.log10().abs())
        .fold(0.5f64, f64::max);
    let h = 50 + rows.len() * 50;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1000\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"10\" y=\"20\" font-size=\"14\">kvmcap / peer, median ratio, log scale: left of the dashed line (1.0) kvmcap is faster</text>\n"
    );
    let half = 300.0;
    let one = 10.0 + half;
    for (i, (name, r)) in rows.iter().enumerate() {
        let y = 40 + i * 50;
        let w = half * r.log10() / span;
        let (x, width) = if w < 0.0 { (one + w, -w) } else { (one, w) };
        s.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"18\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{}\">{}</text>\n<text x=\"10\" y=\"{}\">{}</text>\n",
            width.max(1.0),
            if *r <= 1.0 { "#3a7" } else { "#c64" },
            one + half + 10.0,
            y + 14,
            ratio_text(*r),
            y + 32,
            name.replace('&', "&amp;").replace('<', "&lt;")
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{one:.1}\" y1=\"30\" x2=\"{one:.1}\" y2=\"{h}\" stroke=\"#333\" stroke-dasharray=\"4\"/>\n</svg>\n"
    ));
    s
}

/// A ratio as text; below 1, also how many times faster kvmcap was.
fn ratio_text(r: f64) -> String {
    if r < 1.0 && r > 0.0 {
        let times = 1.0 / r;
        if times < 10.0 {
            format!("{r:.3}x ({times:.1}x faster)")
        } else {
            format!("{r:.3}x ({times:.0}x faster)")
        }
    } else {
        format!("{r:.2}x")
    }
}

fn fmt(s: &Option<Stats>) -> String {
    match s {
        Some(s) if s.median < 1.0 => format!(
            "{:.1} µs ({:.1}–{:.1}), n={}",
            s.median * 1000.0,
            s.p10 * 1000.0,
            s.p90 * 1000.0,
            s.runs
        ),
        Some(s) => format!(
            "{:.1} ms ({:.1}–{:.1}), n={}",
            s.median, s.p10, s.p90, s.runs
        ),
        None => "not measured".into(),
    }
}

/// Writes BENCHMARKS.md, the chart and the JSON; returns the table.
pub fn write_report(benches: &[Bench], json_path: Option<&Path>) -> Result<String, XtaskError> {
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let doc = json!({
        "machine": {"cpu": machine, "cpus": cpus, "kernel": kernel.trim()},
        "benchmarks": benches.iter().map(Bench::json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n";
    let json_out = json_path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| target_dir().join("kvmcap/bench/bench.json"));
    let write = |p: &Path, t: &str| {
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::write(p, t).map_err(|e| XtaskError::Output {
            path: p.to_owned(),
            problem: e.to_string(),
        })
    };
    write(&json_out, &text)?;
    let mut table = String::from("| benchmark | kvmcap median (p10–p90) | peer | peer median (p10–p90) | ratio |\n|---|---|---|---|---|\n");
    for b in benches {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            b.name,
            fmt(&b.kvmcap),
            b.peer,
            fmt(&b.peer_stats),
            b.ratio().map_or("-".into(), ratio_text)
        ));
    }
    let mut md = format!(
        "# kvmcap benchmarks\n\nRegenerated by `cargo xtask bench` (this file, `benchmarks.svg` and {}). \
         Machine: {machine}, {cpus} CPUs, kernel {}. Absolute times on these shared machines are noisy: \
         read the ratios, measured in the same invocation.\n\n{table}\n![kvmcap / peer](benchmarks.svg)\n\n## Notes\n\n",
        json_out.strip_prefix(workspace_root()).unwrap_or(&json_out).display(),
        kernel.trim()
    );
    for b in benches {
        md.push_str(&format!("- **{}**: {}\n", b.name, b.note));
    }
    md.push_str(
        "\n## Caveats\n\n\
         - The QEMU peers of the bare probe run both vCPUs' reads on QEMU's boot CPU (the multiboot image starts no \
         application processors); QEMU still creates 2 vCPUs. `-cpu host,-arch-capabilities`: this host's KVM refuses \
         QEMU's write of IA32_ARCH_CAPABILITIES.\n\
         - The C floor runs its guest in real mode on one thread, vCPU after vCPU, and judges nothing; this host's KVM \
         emulates guest instructions, where real mode is cheaper per instruction than long mode.\n\
         - Lab figures come from QEMU TCG (emulated SVM): absolute times are the lab's; the ratios are the point.\n\
         - The cold edit loop removes `target/kernel` only (Rust artifacts stay built); `--quick` skips it.\n",
    );
    md.push_str(&crate::mutants::benchmarks_section());
    write(&workspace_root().join("BENCHMARKS.md"), &md)?;
    write(&workspace_root().join("benchmarks.svg"), &svg(benches))?;
    Ok(table)
}

/// Runs every benchmark.
pub fn run(
    quick: bool,
    json_path: Option<&Path>,
    with_edit_loop: bool,
    with_lab: bool,
) -> Result<String, XtaskError> {
    let runs = if quick { 20 } else { 50 };
    let kvmcap = build_kvmcap()?;
    let floor = build_floor()?;
    let catalog: Vec<String> = msr_probe::Catalog::builtin()
        .map_err(|e| XtaskError::Output {
            path: workspace_root().join("fixtures/msr/catalog.toml"),
            problem: e.to_string(),
        })?
        .entries()
        .iter()
        .map(|e| format!("{:x}", e.index.raw()))
        .collect();
    let floor_bench = bare_probe(&kvmcap, &floor, runs, &catalog)?;
    let kvmcap_bare = floor_bench.kvmcap.clone();
    let mut benches = vec![floor_bench];
    if let Some(k) = &kvmcap_bare {
        benches.extend(bare_probe_qemu(&kvmcap, k, runs, catalog.len())?);
    }
    benches.extend(msr_cost(&kvmcap, if quick { 10 } else { 20 })?);
    if with_lab {
        benches.extend(crate::bench_lab::lab_benches(quick)?);
    }
    if with_edit_loop {
        benches.push(edit_loop(if quick { 1 } else { 3 }, !quick)?);
    }
    write_report(&benches, json_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=11).map(f64::from).collect();
        let s = stats(&mut v);
        assert_eq!((s.median, s.p10, s.p90, s.runs), (6.0, 2.0, 10.0, 11));
    }
}
