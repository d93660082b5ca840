//! Booting one lab: QEMU with the lab kernel and initramfs, its console read as it goes (each
//! job announced as it reports), a lab that says it is done ended promptly, a lab cut short
//! (stuck, over its deadline, crashed) ended with the reports it printed kept and its
//! unreported jobs run once more.

use std::io::Read;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msr_probe::frame::decode_all;

use crate::lab_options::{host_tsc_khz, qemu, LabOptions, LAB_PPIN};
use crate::lab_run::{JobOutcome, LabRun};
use crate::XtaskError;

/// The job names whose frames begin in `line` (a frame's begin line carries its stream name).
fn begun(line: &str) -> Option<&str> {
    let rest = &line[line.find("@kvmcap:B:0:")? + "@kvmcap:B:0:".len()..];
    rest.split_once(':').map(|(_, name)| name.trim_end())
}

/// [`run_one`], then once more in a new lab for the jobs a lab cut short (stuck, over its
/// deadline, or crashed) did not report (once: a second cut stands); the job it was running
/// gets `first_attempt` saying so. The lab is emulated SVM under QEMU TCG: under load its
/// kernel was seen taking a timer interrupt inside `__schedule` with the runqueue locked
/// (interrupts on where they must be off) and overflowing its IRQ stack, with no KVM frame
/// in the trace.
pub(crate) fn run_lab(o: &LabOptions) -> Result<LabRun, XtaskError> {
    let (mut run, overrun) = run_one(o)?;
    let Some(from) = overrun else {
        return Ok(run);
    };
    let why = run.jobs[from].clone().err().unwrap_or_default();
    let rest = LabOptions {
        jobs: o.jobs[from..].to_vec(),
        console_log: o.console_log.with_extension("rerun.log"),
        progress: o
            .progress
            .as_ref()
            .map(|_| (Arc::new(AtomicUsize::new(0)), o.jobs.len() - from)),
        ..o.clone()
    };
    eprintln!(
        "xtask: {why}; its {} unreported job(s) run once more in a new lab",
        rest.jobs.len()
    );
    let (again, _) = run_one(&rest)?;
    for (i, mut j) in again.jobs.into_iter().enumerate() {
        if let (0, Ok(outcome)) = (i, &mut j) {
            outcome.first_attempt = Some(why.clone());
        }
        run.jobs[from + i] = j;
    }
    run.elapsed += again.elapsed;
    if run.jobs.iter().all(|j| j.is_err()) {
        return Err(XtaskError::Lab {
            problem: why,
            tail: String::new(),
        });
    }
    Ok(run)
}

/// Boots one lab with all of `o.jobs` and collects every job's report; with the index of the
/// first job it did not report when the lab was ended (stuck or over its deadline).
fn run_one(o: &LabOptions) -> Result<(LabRun, Option<usize>), XtaskError> {
    let qemu = match &o.qemu {
        Some(q) => q.clone(),
        None => qemu()?,
    };
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
    // When a job last reported (ms since the start; a frame's begin line means one did).
    let last_report = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reported = last_report.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let mut scanned = 0;
        loop {
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    // Whole lines only: a frame's begin line names a finished job.
                    let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
                    if end > scanned {
                        for line in String::from_utf8_lossy(&buf[scanned..end]).lines() {
                            if let Some(name) = begun(line) {
                                reported
                                    .store(start.elapsed().as_millis() as u64, Ordering::Release);
                                if let Some((count, total)) = &progress {
                                    let k = count.fetch_add(1, Ordering::Relaxed) + 1;
                                    eprintln!("xtask: lab {k}/{total}: {name}");
                                }
                            }
                        }
                        scanned = end;
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
    let mut stalled = false;
    let mut done_at: Option<Instant> = None;
    let silent_for = || {
        start
            .elapsed()
            .saturating_sub(Duration::from_millis(last_report.load(Ordering::Acquire)))
    };
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(15)) => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) if start.elapsed() > o.deadline || silent_for() > o.stall => {
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                stalled = start.elapsed() <= o.deadline;
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
    // A lab that did not say it was done was cut short: past its deadline, stuck, or its
    // kernel crashed (the lab reboots on a panic and -no-reboot then ends QEMU).
    let cut_short = timed_out || !done_seen.load(Ordering::Acquire);
    let crash: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("BUG:") || l.starts_with("Oops:") || l.starts_with("Kernel panic")
        })
        .take(2)
        .collect();
    let ended = || {
        if !timed_out && !crash.is_empty() {
            format!("the lab's kernel crashed: {}", crash.join("; "))
        } else if !timed_out {
            "the lab ended before it said it was done".to_owned()
        } else if stalled {
            format!(
                "the lab stopped reporting (no job reported for {} s)",
                o.stall.as_secs()
            )
        } else {
            format!(
                "the lab did not finish within {} s (hung or too slow)",
                o.deadline.as_secs()
            )
        }
    };
    let mut jobs = Vec::new();
    let mut frames = decode_all(&framed_text(&text)).into_iter();
    // A lab cut short keeps the reports it printed: the job it was running is named, the
    // jobs after it are not run.
    let mut overrun = None;
    for (i, job) in o.jobs.iter().enumerate() {
        if cut_short && overrun.is_some() && frames.len() == 0 {
            jobs.push(Err(format!("{job}: not run ({})", ended())));
            continue;
        }
        if cut_short && frames.len() == 0 {
            overrun = Some(i);
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
                    .and_then(|v| JobOutcome::from_report(job, &v))
            }
            Some(Ok(f)) => Err(format!("{job}: the lab reported `{}` instead", f.stream)),
            Some(Err(e)) => Err(format!("{job}: {e}")),
            None => Err(format!("{job}: no report (the lab stopped before it)")),
        };
        jobs.push(outcome);
    }
    if jobs.iter().all(|j| j.is_err()) && overrun.is_none() {
        return Err(XtaskError::Lab {
            problem: "the lab printed no report at all".into(),
            tail: tail(),
        });
    }
    Ok((
        LabRun {
            jobs,
            elapsed,
            console_log: o.console_log.clone(),
            shards: 1,
        },
        overrun,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn a_crashed_lab_names_the_crash_and_its_unreported_jobs_run_once_more() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = ["run:a:user:1", "run:b:user:1"];
        let crash = "echo 'BUG: IRQ stack guard page was hit'; \
                     echo 'Kernel panic - not syncing: Fatal exception in interrupt'; exit 0";
        let o = LabOptions {
            qemu: Some(fake_qemu(dir.path(), &jobs, crash)),
            ..crate::lab_options::test_options(dir.path(), &jobs)
        };
        let run = run_lab(&o).unwrap();
        assert!(run.pass(), "{}", run.table());
        let why = run.jobs[1].as_ref().unwrap().first_attempt.clone().unwrap();
        assert_eq!(
            why,
            "run:b:user:1: no report; it was running when the lab's kernel crashed: \
             BUG: IRQ stack guard page was hit; Kernel panic - not syncing: Fatal exception in interrupt"
        );
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

    /// A stand-in QEMU: its first run prints the report of the first job and then hangs; its
    /// second prints the reports of the rest and ends.
    fn fake_qemu(dir: &Path, jobs: &[&str], then: &str) -> PathBuf {
        let frames = |names: &[&str]| -> String {
            names
                .iter()
                .flat_map(|j| {
                    let doc = format!("{{\"job\":\"{j}\",\"pass\":true,\"job_ms\":1.0}}");
                    msr_probe::frame::encode_document(j, &doc).unwrap()
                })
                .map(|l| format!("{l}\n"))
                .collect()
        };
        std::fs::write(dir.join("first"), frames(&jobs[..1])).unwrap();
        std::fs::write(
            dir.join("second"),
            frames(&jobs[1..]) + "kvmcap lab: done\n",
        )
        .unwrap();
        let exe = dir.join("qemu");
        let d = dir.display();
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\nif [ -e {d}/ran ]; then cat {d}/second; exit 0; fi\n\
                 touch {d}/ran; cat {d}/first; {then}\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        exe
    }

    #[test]
    fn a_stuck_lab_is_ended_and_its_unreported_jobs_run_once_more() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = ["run:a:user:1", "run:b:user:1", "run:c:user:1"];
        let o = LabOptions {
            qemu: Some(fake_qemu(dir.path(), &jobs, "exec sleep 30")),
            stall: Duration::from_secs(1),
            ..crate::lab_options::test_options(dir.path(), &jobs)
        };
        let run = run_lab(&o).unwrap();
        assert!(run.pass(), "{}", run.table());
        let firsts: Vec<_> = run
            .jobs
            .iter()
            .map(|j| j.as_ref().unwrap().first_attempt.clone())
            .collect();
        assert_eq!(firsts[0], None);
        let why = firsts[1].as_deref().unwrap();
        assert!(
            why.starts_with("run:b:user:1: no report; it was running when the lab stopped reporting (no job reported for 1 s)"),
            "{why}"
        );
        assert_eq!(firsts[2], None, "run:c was not running: no note");
        assert!(run
            .table()
            .contains("run:b:user:1 ran twice; first attempt"));
        assert!(dir.path().join("console.rerun.log").exists());
    }
}
