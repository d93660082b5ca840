//! `qemu` jobs: the same Linux guest booted with QEMU instead of kvmcap, its console report
//! taken and judged as `verify` does.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;
use crate::backend::wiring::model_inputs;
use crate::commands::verify::{judge_guest, probe_words, validate};
use crate::features::model::Oracle;
use crate::features::FeatureSpec;
use crate::guests::linux::BASE_CMDLINE;
use crate::host::HostSources;
use crate::report::{Report, RunFingerprint};
use msr_probe::frame::{Decoder, Frame, Progress};
use msr_probe::{Catalog, MsrIndex, ProbeReport};

/// The guest command line QEMU gets: kvmcap's own ([`BASE_CMDLINE`], `noxsave` as the lab's
/// `verify` adds it, and the probe words of `verify`) without the report window, which only
/// kvmcap's VMM reads; msr-probe then prints its report on the console.
pub fn qemu_cmdline(msrs: &[MsrIndex]) -> String {
    let base: Vec<&str> = BASE_CMDLINE
        .split_whitespace()
        .filter(|w| !w.starts_with("KVMCAP_REPORT="))
        .collect();
    format!("{} noxsave {}", base.join(" "), probe_words(Some(msrs)))
}

/// QEMU's arguments for the guest: microvm (no firmware tables but an MP table, no PCI: its
/// fastest machine), the host CPU model, the same vCPUs and memory as kvmcap's `verify`.
pub fn qemu_args(paths: &LabPaths, vcpus: u8, mem_mib: u32, cmdline: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "kvm",
        "-M",
        "microvm,acpi=off",
        "-cpu",
        "host",
        "-smp",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(vcpus.to_string());
    a.push("-m".into());
    a.push(mem_mib.to_string());
    a.extend(
        [
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.push("-kernel".into());
    a.push(paths.guest_kernel.display().to_string());
    a.push("-initrd".into());
    a.push(paths.guest_initramfs.display().to_string());
    a.push("-append".into());
    a.push(cmdline.to_owned());
    a
}

/// What a QEMU run gave.
#[derive(Debug)]
pub struct QemuRun {
    /// The first complete frame on its console, or why there is none.
    pub frame: Result<Frame, String>,
    /// From spawning QEMU to the frame's end line (or QEMU's end).
    pub elapsed: Duration,
    /// The console, bounded.
    pub console: String,
    /// QEMU's stderr.
    pub stderr: String,
}

/// Feeds console output to `decoder` line by line until a frame completes.
pub fn first_frame(decoder: &mut Decoder, lines: &[String]) -> Option<Result<Frame, String>> {
    for l in lines {
        match decoder.feed(l) {
            Ok(Progress::Complete(f)) => return Some(Ok(f)),
            Ok(_) => {}
            Err(e) => return Some(Err(e.to_string())),
        }
    }
    None
}

/// Runs QEMU, reads its console as it comes, and ends it as soon as the first frame is
/// complete (or at `deadline`).
pub fn run_qemu(qemu: &Path, args: &[String], deadline: Duration) -> Result<QemuRun, String> {
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let stdout = child.stdout.take().ok_or("QEMU has no stdout")?;
    let mut stderr = child.stderr.take().ok_or("QEMU has no stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut decoder = Decoder::new();
    let mut console = String::new();
    let mut frame = None;
    let mut elapsed = None;
    while frame.is_none() {
        let left = deadline.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if console.len() < QEMU_CONSOLE_LIMIT {
                    console.push_str(&line);
                }
                frame = first_frame(&mut decoder, std::slice::from_ref(&line));
                if frame.is_some() {
                    elapsed = Some(start.elapsed());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                frame = Some(Err(format!("no report within {} s", deadline.as_secs())));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                frame = Some(Err(match decoder.finish() {
                    Err(e) => e.to_string(),
                    Ok(()) => "QEMU ended without a report".to_owned(),
                }));
                break;
            }
        }
    }
    let elapsed = elapsed.unwrap_or_else(|| start.elapsed());
    let _ = child.kill();
    let status = child.wait();
    let mut stderr = err_reader.join().unwrap_or_default();
    if let Ok(s) = status {
        if !s.success() && frame.as_ref().is_some_and(|f| f.is_err()) {
            stderr.push_str(&format!("\n(QEMU {s})"));
        }
    }
    Ok(QemuRun {
        frame: frame.unwrap_or_else(|| Err("no report".into())),
        elapsed,
        console,
        stderr,
    })
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// A `qemu` job: boot the guest under QEMU, judge its report as `verify` does.
pub(super) fn run_qemu_job(
    job: &Job,
    spec: &FeatureSpec,
    paths: &LabPaths,
    host: &HostSources,
    deadline: Duration,
    catalog: &Catalog,
) -> Result<Report, String> {
    let msrs = spec.msrs();
    let args = qemu_args(paths, job.vcpus, GUEST_MEM_MIB, &qemu_cmdline(&msrs));
    let run = run_qemu(&paths.qemu, &args, deadline)?;
    judge_qemu_run(job, spec, &msrs, &run, host, catalog)
}

/// Judges what a QEMU run gave, as `verify` judges its own runs (backend `none`: the model
/// as stock KVM leaves it).
pub fn judge_qemu_run(
    job: &Job,
    spec: &FeatureSpec,
    msrs: &[MsrIndex],
    run: &QemuRun,
    host: &HostSources,
    catalog: &Catalog,
) -> Result<Report, String> {
    let no_report = |why: String| {
        format!(
            "QEMU's guest gave no report: {why}; QEMU stderr: {}; last console lines: {}",
            tail(&run.stderr, 5),
            tail(&run.console, 10)
        )
    };
    let frame = run.frame.clone().map_err(&no_report)?;
    let guest: ProbeReport = serde_json::from_str(&frame.document())
        .map_err(|e| no_report(format!("report is not a msr-probe report: {e}")))?;
    validate(&guest, job.vcpus, msrs).map_err(&no_report)?;
    let vendor = vendor_named(&guest.fingerprint.cpu_vendor);
    let inputs = model_inputs(
        spec,
        job.backend,
        vendor,
        job.pair,
        host,
        spec.capability.args,
        &[],
    )
    .map_err(|e| e.to_string())?;
    // QEMU's run had no kvmcap VMM: the one model of this run is built here.
    let oracle = Oracle::build(spec, &inputs).ok();
    let (readings, kernel_ppin) = judge_guest(
        &guest,
        Some(spec),
        job.backend,
        Some(&inputs),
        oracle.as_ref(),
        host,
        catalog,
    );
    Ok(Report {
        schema: crate::report::document::ReportV1,
        pass: false,
        fingerprint: RunFingerprint::of_this_host(
            "linux",
            vendor,
            Some(spec),
            job.backend,
            guest.cpus.len(),
            host,
            inputs.announced.clone(),
        ),
        negotiation: Vec::new(),
        vcpus: Vec::new(),
        stats: Vec::new(),
        readings,
        kernel_ppin,
        notes: vec![format!(
            "QEMU {QEMU} -M microvm,acpi=off; guest kernel {}, guest CPU {}, report via the console",
            guest.fingerprint.kernel, guest.fingerprint.cpu_model
        )],
        elapsed_ms: run.elapsed.as_secs_f64() * 1000.0,
        tsc_khz: None,
    }
    .sealed())
}
