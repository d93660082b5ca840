//! `cargo xtask kernel build`: a kernel source tree built from `tinyconfig` plus
//! `fixtures/kernel/kvmcap.config`, cached under `target/kernel/` by source version and
//! fragment hash, with a progress bar.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use crate::kernel::{ensure_packages, fnv64, run_quiet, tail, SourceTree, BUILD_PACKAGES};
use crate::{target_dir, workspace_root, XtaskError};

/// A built kernel.
#[derive(Clone, Debug)]
pub struct Built {
    /// The bzImage.
    pub bzimage: PathBuf,
    /// The build output directory (incremental rebuilds reuse it).
    pub build_dir: PathBuf,
    /// Whether the cache answered without running make.
    pub cached: bool,
    /// The cache key.
    pub key: String,
}

/// The config fragment applied on top of tinyconfig.
pub fn fragment_path() -> PathBuf {
    workspace_root().join("fixtures/kernel/kvmcap.config")
}

fn progress(done: usize, total: usize, what: &str, tty: bool, last_pct: &mut usize) {
    let pct = (done * 100 / total.max(1)).min(99);
    if tty {
        let width = 30;
        let filled = pct * width / 100;
        eprint!(
            "\r[{}{}] {:>3}% {:<50.50}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            pct,
            what
        );
        let _ = std::io::stderr().flush();
    } else if pct >= *last_pct + 10 {
        *last_pct = pct / 10 * 10;
        eprintln!("xtask: kernel build {}%", *last_pct);
    }
}

/// The cache key of a build of a source tree of `version` with the fragment as it is.
pub fn key(version: &str) -> Result<String, XtaskError> {
    let fragment = std::fs::read(fragment_path()).map_err(|e| XtaskError::Output {
        path: fragment_path(),
        problem: e.to_string(),
    })?;
    Ok(format!(
        "{:016x}",
        fnv64(&[version.as_bytes(), &fragment, b""])
    ))
}

/// The build folder of a source tree of `version` (under `target/kernel/`).
pub fn build_dir(version: &str) -> Result<PathBuf, XtaskError> {
    Ok(target_dir()
        .join("kernel")
        .join(format!("build-{}", key(version)?)))
}

/// Configures and builds `tree` with the fragment into a build dir keyed by the tree's version
/// and the fragment. Make's own dependency tracking keeps rebuilds incremental.
pub fn build(tree: &SourceTree) -> Result<Built, XtaskError> {
    ensure_packages(BUILD_PACKAGES)?;
    let key = key(&tree.version)?;
    let build_dir = build_dir(&tree.version)?;
    let bzimage = build_dir.join("arch/x86/boot/bzImage");
    let stamp = build_dir.join(".kvmcap-built");
    std::fs::create_dir_all(&build_dir).map_err(|e| XtaskError::Output {
        path: build_dir.clone(),
        problem: e.to_string(),
    })?;
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&tree.dir)
            .arg(format!("O={}", build_dir.display()))
            .args(args);
        c
    };
    let started = SystemTime::now();
    // No file of the source tree changed since the last build started: make has nothing to do
    // (its walk of the tree alone takes seconds).
    let built_at = std::fs::metadata(&stamp).and_then(|m| m.modified()).ok();
    if let Some(at) = built_at {
        if bzimage.exists()
            && build_dir.join(".config").exists()
            && newest_mtime(&tree.dir).is_some_and(|n| n <= at)
        {
            return Ok(Built {
                bzimage,
                build_dir,
                cached: true,
                key,
            });
        }
    }
    if !build_dir.join(".config").exists() || !stamp.exists() {
        run_quiet(&mut make(&["tinyconfig"]), "make tinyconfig")?;
        run_quiet(
            Command::new(tree.dir.join("scripts/kconfig/merge_config.sh"))
                // Its temporary file goes into the current folder: not the source tree.
                .current_dir(&build_dir)
                .arg("-m")
                .arg("-O")
                .arg(&build_dir)
                .arg(build_dir.join(".config"))
                .arg(fragment_path()),
            "merge_config.sh",
        )?;
        run_quiet(&mut make(&["olddefconfig"]), "make olddefconfig")?;
    }
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    let log_path = build_dir.join("build.log");
    let steps_path = build_dir.join(".kvmcap-steps");
    let total: usize = std::fs::read_to_string(&steps_path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1400);
    let mut child = make(&[&format!("-j{jobs}"), "bzImage"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| XtaskError::Spawn {
            tool: "make".into(),
            source,
        })?;
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(e) = stderr {
            for l in BufReader::new(e).lines().map_while(Result::ok) {
                text.push_str(&l);
                text.push('\n');
            }
        }
        text
    });
    let tty = std::io::stderr().is_terminal();
    let mut log = String::new();
    let mut steps = 0usize;
    let mut last_pct = 0usize;
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.starts_with("  ") && l.as_bytes().get(2).is_some_and(u8::is_ascii_uppercase) {
                steps += 1;
                progress(steps, total, l.trim(), tty, &mut last_pct);
            }
            log.push_str(&l);
            log.push('\n');
        }
    }
    let status = child.wait().map_err(|source| XtaskError::Spawn {
        tool: "make".into(),
        source,
    })?;
    if tty {
        eprintln!();
    }
    log.push_str(&err_reader.join().unwrap_or_default());
    let _ = std::fs::write(&log_path, &log);
    if !status.success() {
        let _ = std::fs::remove_file(&stamp);
        return Err(XtaskError::Build {
            command: format!("make bzImage (log: {})", log_path.display()),
            status: status.to_string(),
            tail: tail(&log, 25),
        });
    }
    if steps > 200 {
        let _ = std::fs::write(&steps_path, steps.to_string());
    }
    let cached = steps == 0 && stamp.exists();
    // The stamp carries the time the build started: a file changed while make ran is newer.
    let _ = std::fs::write(&stamp, &key);
    if let Ok(f) = std::fs::File::options().append(true).open(&stamp) {
        let _ = f.set_modified(started);
    }
    Ok(Built {
        bzimage,
        build_dir,
        cached,
        key,
    })
}

/// The newest modification time of any file under `dir` (`.git` left out), as make sees the
/// tree: files only (a folder's time also moves when a build writes and removes a temporary
/// file in it, as the selftests' build does). `None` if `dir` cannot be read.
pub fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    std::fs::read_dir(dir).ok()?;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name() == ".git" {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if let Ok(t) = m.modified() {
                newest = Some(newest.map_or(t, |n: SystemTime| n.max(t)));
            }
        }
    }
    newest.or(Some(SystemTime::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_time_is_the_newest_file_s() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a/b")).unwrap();
        std::fs::write(d.path().join("a/b/f.c"), "x").unwrap();
        std::fs::write(d.path().join("a/g.c"), "x").unwrap();
        let t0 = newest_mtime(d.path()).unwrap();
        // A temporary file made and removed: the folder's time moves, the tree's does not.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("a/tmp"), "x").unwrap();
        std::fs::remove_file(d.path().join("a/tmp")).unwrap();
        assert_eq!(newest_mtime(d.path()), Some(t0));
        // A changed file's time.
        let later = SystemTime::now() + std::time::Duration::from_secs(10);
        let f = std::fs::File::options()
            .append(true)
            .open(d.path().join("a/b/f.c"))
            .unwrap();
        f.set_modified(later).unwrap();
        assert_eq!(newest_mtime(d.path()), Some(later));
        assert_eq!(newest_mtime(&d.path().join("none")), None);
    }
}
