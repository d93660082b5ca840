//! The lab host: boots the lab kernel under `qemu-system-x86_64 -accel tcg -cpu max` (emulated
//! AMD SVM with nested paging) with kvmcap as `/init`, which runs the jobs against the lab's
//! KVM and prints each result framed on the console; collects and checks them here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use msr_probe::frame::decode_all;

pub use crate::lab_run::{JobOutcome, LabRun};
use crate::XtaskError;

/// The PPIN every lab job's host source supplies (the `explicit` source).
pub const LAB_PPIN: &str = "MSR_PPIN=0x1122334455667788";

/// Where QEMU sits in the bench lab image (the path `kvmcap lab-init` runs).
pub const LAB_QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// The jobs `cargo xtask lab` runs by default (`kvmcap lab-init` grammar).
pub const DEFAULT_JOBS: &[&str] = &[
    "verify:ppin:none:1",
    "verify:ppin:none:2",
    "verify:ppin:user:1",
    "verify:ppin:user:2",
    "catalog:ppin:user:2",
    "run:ppin-ctl-states:user:2",
    "run:ppin-absent:none:2",
    "run:platform-info:kernel:1",
    "run:guest-ends:user:2",
];

/// How to run the lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The lab kernel (also the guest kernel).
    pub kernel: PathBuf,
    /// The lab initramfs.
    pub initramfs: PathBuf,
    /// The jobs.
    pub jobs: Vec<String>,
    /// Lab CPUs.
    pub cpus: u8,
    /// Lab memory in MiB.
    pub mem_mib: u32,
    /// When to give up on the lab.
    pub deadline: Duration,
    /// Where the lab's console goes (with shards, shard N's goes to `console.N.log` beside it).
    pub console_log: PathBuf,
    /// How many lab QEMUs run the jobs in parallel, each with its share (1: one lab, the jobs
    /// in order, as the benchmarks that interleave their jobs need).
    pub shards: usize,
    /// Print a line on stderr as each job reports (`xtask: lab 3/12: run:ppin-enable:user:1`):
    /// the count so far (shared by the parallel labs) and the total.
    pub progress: Option<(Arc<AtomicUsize>, usize)>,
}

/// [`run`] printing each job as it reports (lab boots and jobs take seconds each).
pub fn run_with_progress(o: &LabOptions) -> Result<LabRun, XtaskError> {
    let mut o = o.clone();
    o.progress = Some((Arc::new(AtomicUsize::new(0)), o.jobs.len()));
    run(&o)
}

/// The job names whose frames begin in `line` (a frame's begin line carries its stream name).
fn begun(line: &str) -> Option<&str> {
    let rest = &line[line.find("@kvmcap:B:0:")? + "@kvmcap:B:0:".len()..];
    rest.split_once(':').map(|(_, name)| name.trim_end())
}

/// The host's TSC frequency in kHz (the lab kernel must not calibrate against the PIT under
/// TCG: measured, it can then spin forever in KVM_RUN).
pub fn host_tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// Finds QEMU on `PATH` or says how to install it.
pub fn qemu() -> Result<PathBuf, XtaskError> {
    qemu_in(std::env::var_os("PATH"))
}

/// Finds QEMU in a `PATH`-style list of directories.
pub fn qemu_in(path: Option<std::ffi::OsString>) -> Result<PathBuf, XtaskError> {
    let name = "qemu-system-x86_64";
    path.into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| XtaskError::Missing {
            what: name.into(),
            hint: "apt-get install qemu-system-x86".into(),
        })
}

/// What a job costs in the lab relative to the others (measured in job_ms: a Linux guest boot
/// or 156 generated cases take seconds, a scenario a few hundred milliseconds).
pub fn job_weight(job: &str) -> u32 {
    let mut parts = job.split(':');
    let (kind, subject) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let vcpus = parts.nth(1).unwrap_or("1");
    match (kind, subject) {
        ("explore", "ppin") => 55,
        ("verify" | "qemu", _) if vcpus == "2" => 45,
        ("verify" | "qemu" | "catalog", _) => 30,
        ("selftest", _) => 35,
        ("explore", _) => 4,
        _ => 3,
    }
}

/// Splits `jobs` into `shards` lists of job indices of about equal [`job_weight`], heaviest
/// first (each list keeps the jobs' order).
pub fn shard(jobs: &[String], shards: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(job_weight(&jobs[i])));
    let mut out: Vec<(u32, Vec<usize>)> = vec![(0, Vec::new()); shards.max(1)];
    for i in order {
        if let Some(s) = out.iter_mut().min_by_key(|(w, _)| *w) {
            s.0 += job_weight(&jobs[i]);
            s.1.push(i);
        }
    }
    out.into_iter()
        .map(|(_, mut s)| {
            s.sort_unstable();
            s
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Boots the lab (in `o.shards` QEMUs at once, each with its share of the jobs) and collects
/// every job's report, in the jobs' order.
pub fn run(o: &LabOptions) -> Result<LabRun, XtaskError> {
    let shards = shard(&o.jobs, o.shards.min(o.jobs.len()));
    if shards.len() <= 1 {
        return run_one(o);
    }
    let options: Vec<LabOptions> = shards
        .iter()
        .enumerate()
        .map(|(n, idx)| LabOptions {
            progress: o.progress.clone(),
            jobs: idx.iter().map(|&i| o.jobs[i].clone()).collect(),
            console_log: if n == 0 {
                o.console_log.clone()
            } else {
                o.console_log.with_extension(format!("{n}.log"))
            },
            shards: 1,
            ..o.clone()
        })
        .collect();
    let start = Instant::now();
    let runs: Vec<Result<LabRun, XtaskError>> = std::thread::scope(|s| {
        let handles: Vec<_> = options
            .iter()
            .map(|opts| s.spawn(move || run_one(opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(XtaskError::Lab {
                        problem: "a lab shard's thread panicked".into(),
                        tail: String::new(),
                    })
                })
            })
            .collect()
    });
    let mut jobs: Vec<Option<Result<JobOutcome, String>>> = vec![None; o.jobs.len()];
    for (idx, run) in shards.iter().zip(runs) {
        for (&i, j) in idx.iter().zip(run?.jobs) {
            jobs[i] = Some(j);
        }
    }
    Ok(LabRun {
        jobs: jobs
            .into_iter()
            .zip(&o.jobs)
            .map(|(j, name)| j.unwrap_or_else(|| Err(format!("{name}: no report"))))
            .collect(),
        elapsed: start.elapsed(),
        console_log: o.console_log.clone(),
        shards: shards.len(),
    })
}

/// Boots one lab with all of `o.jobs` and collects every job's report.
fn run_one(o: &LabOptions) -> Result<LabRun, XtaskError> {
    let qemu = qemu()?;
    let append = format!(
        "console=ttyS0 tsc_early_khz={} tsc=reliable reboot=t panic=-1 loglevel=1 8250.nr_uarts=1 i8042.noaux i8042.nokbd KVMCAP_LAB_JOBS={} KVMCAP_LAB_HOST={}",
        host_tsc_khz(),
        o.jobs.join(","),
        LAB_PPIN
    );
    let smp = format!("{0},sockets={0},cores=1,threads=1", o.cpus);
    let mut cmd = Command::new(&qemu);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", &smp, "-m"])
        .arg(o.mem_mib.to_string())
        .arg("-kernel")
        .arg(&o.kernel)
        .arg("-initrd")
        .arg(&o.initramfs)
        .args(["-append", &append])
        .args([
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-nodefaults",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| XtaskError::Spawn {
        tool: qemu.display().to_string(),
        source,
    })?;
    let mut stdout = child.stdout.take().ok_or_else(|| XtaskError::Missing {
        what: "QEMU's stdout".into(),
        hint: String::new(),
    })?;
    // The lab says it is done on its console before it reboots (`-no-reboot` then ends
    // QEMU). Seen once under TCG: the reboot never completed and QEMU idled until the
    // deadline; a lab that said it is done gets a few seconds to exit, then is ended.
    let done_seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = done_seen.clone();
    let progress = o.progress.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let mut scanned = 0;
        loop {
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some((count, total)) = &progress {
                        // Whole lines only: a frame's begin line names a finished job.
                        let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
                        if end > scanned {
                            for line in String::from_utf8_lossy(&buf[scanned..end]).lines() {
                                if let Some(name) = begun(line) {
                                    let k = count.fetch_add(1, Ordering::Relaxed) + 1;
                                    eprintln!("xtask: lab {k}/{total}: {name}");
                                }
                            }
                            scanned = end;
                        }
                    }
                    let tail = &buf[buf.len().saturating_sub(n + 32)..];
                    if tail.windows(16).any(|w| w == b"kvmcap lab: done") {
                        seen.store(true, std::sync::atomic::Ordering::Release);
                    }
                }
            }
        }
        buf
    });
    let mut timed_out = false;
    let mut done_at: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(15)) => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) if start.elapsed() > o.deadline => {
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break;
            }
            Ok(None) => {
                if done_at.is_none() && done_seen.load(std::sync::atomic::Ordering::Acquire) {
                    done_at = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => break,
        }
    }
    let elapsed = start.elapsed();
    let out = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&out).into_owned();
    if let Some(d) = o.console_log.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(&o.console_log, &text);
    let tail = || {
        text.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ended = || {
        format!(
            "the lab did not finish within {} s (hung or too slow)",
            o.deadline.as_secs()
        )
    };
    let mut jobs = Vec::new();
    let mut frames = decode_all(&framed_text(&text)).into_iter();
    // A lab ended at its deadline keeps the reports it printed: the job it was running is
    // named, the jobs after it are not run.
    let mut running_named = false;
    for job in &o.jobs {
        if timed_out && running_named && frames.len() == 0 {
            jobs.push(Err(format!("{job}: not run ({})", ended())));
            continue;
        }
        if timed_out && frames.len() == 0 {
            running_named = true;
            jobs.push(Err(format!(
                "{job}: no report; it was running when {}",
                ended()
            )));
            continue;
        }
        let outcome = match frames.next() {
            Some(Ok(f)) if &f.stream == job => {
                serde_json::from_str::<serde_json::Value>(&f.document())
                    .map_err(|e| format!("{job}: report is not JSON: {e}"))
                    .map(|v| JobOutcome {
                        job: job.clone(),
                        pass: v["pass"].as_bool().unwrap_or(false),
                        snapshot: v["snapshot"].clone(),
                        report: v["report"].clone(),
                        job_ms: v["job_ms"].as_f64(),
                        suite: serde_json::from_value(v["suite"].clone()).ok(),
                        stats: v["stats"].clone(),
                        first_attempt: v["first_attempt"].as_str().map(str::to_owned),
                    })
            }
            Some(Ok(f)) => Err(format!("{job}: the lab reported `{}` instead", f.stream)),
            Some(Err(e)) => Err(format!("{job}: {e}")),
            None => Err(format!("{job}: no report (the lab stopped before it)")),
        };
        jobs.push(outcome);
    }
    if jobs.iter().all(|j| j.is_err()) {
        return Err(XtaskError::Lab {
            problem: if timed_out {
                ended()
            } else {
                "the lab printed no report at all".into()
            },
            tail: tail(),
        });
    }
    Ok(LabRun {
        jobs,
        elapsed,
        console_log: o.console_log.clone(),
        shards: 1,
    })
}

/// The kernel's one console message at the lab's end (loglevel 1 keeps only emergencies).
const REBOOT_MESSAGE: &str = "reboot: Restarting system\r\n";

/// The console text with the kernel's reboot message taken out: the lab's `/init` reboots
/// once its last frame is written, and the kernel's message can land in the middle of a frame
/// line the tty is still draining (seen under load); the frames' checksums still guard them.
pub fn framed_text(console: &str) -> std::borrow::Cow<'_, str> {
    if console.contains(REBOOT_MESSAGE) {
        std::borrow::Cow::Owned(console.replace(REBOOT_MESSAGE, ""))
    } else {
        std::borrow::Cow::Borrowed(console)
    }
}

/// Writes each job's report to `dir/<job>.json`.
pub fn save_reports(run: &LabRun, dir: &Path) -> Result<(), XtaskError> {
    std::fs::create_dir_all(dir).map_err(|e| XtaskError::Output {
        path: dir.to_owned(),
        problem: e.to_string(),
    })?;
    for j in run.jobs.iter().flatten() {
        let path = dir.join(format!("{}.json", j.job.replace(':', "-")));
        let doc = serde_json::to_string_pretty(&j.report).unwrap_or_default();
        std::fs::write(&path, doc).map_err(|e| XtaskError::Output {
            path: path.clone(),
            problem: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_balance_the_heavy_jobs_and_keep_every_job_once() {
        let jobs: Vec<String> = [
            "selftest:ppin_test:kernel:1",
            "explore:ppin:kernel:2:intel",
            "explore:ppin:user:2:intel",
            "verify:ppin:kernel:2:intel",
            "verify:ppin:user:2:intel",
            "run:ppin-enable:kernel:1:amd",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = shard(&jobs, 2);
        assert_eq!(s.len(), 2);
        let mut all: Vec<usize> = s.concat();
        all.sort_unstable();
        assert_eq!(all, (0..jobs.len()).collect::<Vec<_>>());
        // The two explores go to different labs, and so do the two verifies.
        for pair in [[1, 2], [3, 4]] {
            assert!(s
                .iter()
                .all(|l| !(l.contains(&pair[0]) && l.contains(&pair[1]))));
        }
        assert!(s.iter().all(|l| l.windows(2).all(|w| w[0] < w[1])));
        assert_eq!(shard(&jobs, 1), vec![(0..jobs.len()).collect::<Vec<_>>()]);
        assert_eq!(shard(&jobs[..1], 3).len(), 1);
    }

    #[test]
    fn a_frame_cut_by_the_reboot_message_still_decodes() {
        let lines = msr_probe::frame::encode_document("run:x:kernel:1", "{\"pass\":true}").unwrap();
        let mut text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
        let at = text.len() / 2;
        text.insert_str(at, REBOOT_MESSAGE);
        assert!(decode_all(&text).iter().any(|f| f.is_err()));
        let frames = decode_all(&framed_text(&text));
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].as_ref().unwrap().document(), "{\"pass\":true}");
    }

    #[test]
    fn missing_qemu_says_how_to_install_it() {
        let e = qemu_in(Some("/nonexistent:/also/not".into())).unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert!(
            e.to_string().contains("apt-get install qemu-system-x86"),
            "{e}"
        );
    }
}
