//! The lab host's side: `kvmcap lab-init` runs as `/init` of the lab's initramfs, inside the
//! lab kernel (the patched KVM), runs each job of `KVMCAP_LAB_JOBS` against `/dev/kvm`, and
//! prints each result framed on the console for `cargo xtask lab` to collect.
//!
//! Jobs are comma-separated, fields colon-separated:
//!
//! - `verify:FEATURE:BACKEND:VCPUS` boots the Linux guest (`/guest/bzImage`,
//!   `/guest/initramfs.cpio`) and verifies what it reads (the feature's MSRs);
//! - `catalog:FEATURE:BACKEND:VCPUS` the same with the whole catalog;
//! - `run:SCENARIO:BACKEND:VCPUS` runs `/scenarios/SCENARIO.toml` on the bare guest;
//! - `probe:FEATURE:BACKEND:VCPUS` the bare probe of the feature's MSRs;
//! - `selftest:NAME:kernel:1` runs the KVM selftest `/selftests/NAME` (built from the patched
//!   tree); it passes on exit 0 (a skip, exit 4, is a failure: the lab must have the cap);
//! - `qemu:FEATURE:none:VCPUS` boots the same guest as `verify` (same kernel, initramfs,
//!   memory, vCPUs and command line, minus the report window) with QEMU instead:
//!   `/usr/bin/qemu-system-x86_64 -accel kvm -M microvm,acpi=off -cpu host`, present only in
//!   the bench lab image (`cargo xtask bench-lab`); takes msr-probe's report off QEMU's
//!   console, ends QEMU as soon as the report is complete, and judges it as `verify` does.
//!   Backend `none` only: QEMU enables no kvmcap capability;
//! - `cost:FEATURE:BACKEND:VCPUS` the bare probe with timed reads (`ProbeRequest::timed`): the
//!   feature's value MSR for the lab CPU's vendor (PPIN: the vendor's PPIN MSR; platform-info:
//!   `MSR_PLATFORM_INFO`), read [`COST_READS`] times on each vCPU; its report keeps the guest's
//!   cycles per read and the TSC frequency, not a row per read.
//!
//! Every job's result carries `job_ms`: wall time in the lab from the job's start to its
//! verdict (for `verify` and `qemu` this includes booting the guest).
//!
//! Host values come from `KVMCAP_LAB_HOST` (`NAME=VALUE` words separated by `+`).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::Backend;
use crate::feature::Announce;
use crate::feature::FeatureSpec;
use crate::host::HostSources;
use crate::probe::{probe_bare, ProbeRequest};
use crate::report::{Report, RunFingerprint};
use crate::scenario::{run_scenario, Scenario};
use crate::verify::{judge_guest, probe_words, validate, verify_linux, VerifyRequest};
use crate::vmm::cpuid::CpuVendor;
use crate::vmm::linux::BASE_CMDLINE;
use crate::vmm::machine::{model_inputs, Limits};
use msr_probe::frame::{Decoder, Frame, Progress};
use msr_probe::{Catalog, Fingerprint, MsrIndex, ProbeReport, Reading};

/// QEMU in the bench lab image.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Guest memory of every Linux-guest job, kvmcap's and QEMU's.
pub const GUEST_MEM_MIB: u32 = 128;
/// Reads per vCPU of a `cost` job.
pub const COST_READS: usize = 1000;
/// QEMU console bytes kept (the report arrives through it).
const QEMU_CONSOLE_LIMIT: usize = 1 << 20;

/// One lab job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// `verify`, `catalog`, `run`, `probe`, `explore`, `selftest`, `qemu` or `cost`.
    pub kind: String,
    /// The feature or scenario.
    pub subject: String,
    /// The backend.
    pub backend: Backend,
    /// vCPUs.
    pub vcpus: u8,
    /// Which PPIN pair the guest's CPUID announces (`vendor` unless the job names one).
    pub pair: Announce,
}

impl Job {
    /// The job as written, used as its frame's stream name.
    pub fn name(&self) -> String {
        let base = format!(
            "{}:{}:{}:{}",
            self.kind, self.subject, self.backend, self.vcpus
        );
        match self.pair {
            Announce::Vendor => base,
            p => format!("{base}:{p}"),
        }
    }
}

/// Parses `KVMCAP_LAB_JOBS`.
pub fn parse_jobs(text: &str) -> Result<Vec<Job>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|j| {
            let f: Vec<&str> = j.split(':').collect();
            let (kind, subject, backend, vcpus, pair) = match f[..] {
                [k, s, b, v] => (k, s, b, v, "vendor"),
                [k, s, b, v, p] => (k, s, b, v, p),
                _ => {
                    return Err(format!(
                        "lab job `{j}`: expected KIND:SUBJECT:BACKEND:VCPUS[:PAIR]"
                    ))
                }
            };
            if !matches!(
                kind,
                "verify" | "catalog" | "run" | "probe" | "selftest" | "qemu" | "cost" | "explore"
            ) {
                return Err(format!("lab job `{j}`: unknown kind `{kind}`"));
            }
            if kind == "qemu" && backend != "none" {
                return Err(format!(
                    "lab job `{j}`: QEMU enables no kvmcap capability: backend must be none"
                ));
            }
            Ok(Job {
                kind: kind.to_owned(),
                subject: subject.to_owned(),
                backend: backend.parse().map_err(|e| format!("lab job `{j}`: {e}"))?,
                vcpus: vcpus
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("lab job `{j}`: bad vCPU count"))?,
                pair: pair.parse().map_err(|e| format!("lab job `{j}`: {e}"))?,
            })
        })
        .collect()
}

/// Where the lab's files live inside its initramfs.
#[derive(Clone, Debug)]
pub struct LabPaths {
    /// The KVM device.
    pub kvm: PathBuf,
    /// The guest kernel.
    pub guest_kernel: PathBuf,
    /// The guest initramfs.
    pub guest_initramfs: PathBuf,
    /// The scenarios folder.
    pub scenarios: PathBuf,
    /// The selftests folder.
    pub selftests: PathBuf,
    /// QEMU (bench lab image only).
    pub qemu: PathBuf,
}

impl Default for LabPaths {
    fn default() -> Self {
        Self {
            kvm: "/dev/kvm".into(),
            guest_kernel: "/guest/bzImage".into(),
            guest_initramfs: "/guest/initramfs.cpio".into(),
            scenarios: "/scenarios".into(),
            selftests: "/selftests".into(),
            qemu: QEMU.into(),
        }
    }
}

/// A job's result as the lab prints it.
#[derive(Debug, Serialize)]
pub struct JobResult {
    /// The job.
    pub job: String,
    /// Whether it passed.
    pub pass: bool,
    /// The machine-independent view, for snapshots.
    pub snapshot: serde_json::Value,
    /// The full report (or the error).
    pub report: serde_json::Value,
    /// Wall time from the job's start to its verdict, in the lab.
    pub job_ms: f64,
}

fn to_value(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v)
        .unwrap_or_else(|e| serde_json::Value::String(format!("serialization failed: {e}")))
}

/// Runs one job and times it.
pub fn run_job(
    job: &Job,
    paths: &LabPaths,
    host_values: &[String],
    catalog: &Catalog,
) -> JobResult {
    let start = Instant::now();
    let mut r = run_job_untimed(job, paths, host_values, catalog);
    r.job_ms = start.elapsed().as_secs_f64() * 1000.0;
    r
}

fn run_job_untimed(
    job: &Job,
    paths: &LabPaths,
    host_values: &[String],
    catalog: &Catalog,
) -> JobResult {
    let fail = |e: String| JobResult {
        job: job.name(),
        pass: false,
        snapshot: serde_json::Value::String(format!("error: {e}")),
        report: serde_json::Value::String(e),
        job_ms: 0.0,
    };
    let host = match HostSources::default().with_explicit(host_values, catalog) {
        Ok(h) => h,
        Err(e) => return fail(e.to_string()),
    };
    let judged = |pass: bool, snapshot: serde_json::Value, report: serde_json::Value| JobResult {
        job: job.name(),
        pass,
        snapshot,
        report,
        job_ms: 0.0,
    };
    let limits = Limits {
        deadline: Duration::from_secs(
            if matches!(job.kind.as_str(), "verify" | "catalog" | "qemu") {
                120
            } else {
                20
            },
        ),
        ..Limits::default()
    };
    match job.kind.as_str() {
        "selftest" => {
            let path = paths.selftests.join(&job.subject);
            match std::process::Command::new(&path).output() {
                Ok(out) => {
                    let code = out.status.code().unwrap_or(-1);
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    // Bounded: the whole report must fit a frame comfortably.
                    let keep = text.len().saturating_sub(16 * 1024);
                    JobResult {
                        job: job.name(),
                        pass: code == 0,
                        snapshot: serde_json::json!({ "selftest": job.subject, "exit": code }),
                        report: serde_json::json!({ "exit": code, "output": &text[text.ceil_char_boundary(keep)..] }),
                        job_ms: 0.0,
                    }
                }
                Err(e) => fail(format!("{}: {e}", path.display())),
            }
        }
        "explore" => {
            let spec = match FeatureSpec::find(&job.subject, catalog) {
                Ok(s) => s,
                Err(e) => return fail(e.to_string()),
            };
            match crate::explore::explore(
                &crate::explore::ExploreRequest {
                    kvm_path: paths.kvm.clone(),
                    feature: &spec,
                    backend: job.backend,
                    vcpus: job.vcpus,
                    announce: job.pair,
                    host: &host,
                    limits,
                    kvm_label: "lab".into(),
                },
                catalog,
            ) {
                Ok(r) => judged(r.pass, to_value(&r.snapshot_view()), to_value(&r)),
                Err(e) => fail(e.to_string()),
            }
        }
        "run" => {
            let path = paths.scenarios.join(format!("{}.toml", job.subject));
            let scenario = match Scenario::find(&path.display().to_string(), catalog) {
                Ok(s) => s,
                Err(e) => return fail(e.to_string()),
            };
            match run_scenario(
                &scenario,
                job.backend,
                job.vcpus,
                job.pair,
                &paths.kvm,
                catalog,
                limits,
            ) {
                Ok(r) => judged(r.pass, to_value(&r.snapshot_view()), to_value(&r)),
                Err(e) => fail(e.to_string()),
            }
        }
        kind => {
            let spec = match FeatureSpec::find(&job.subject, catalog) {
                Ok(s) => s,
                Err(e) => return fail(e.to_string()),
            };
            if kind == "cost" {
                return match cost(job, &spec, paths, &host, limits, catalog) {
                    Ok(r) => r,
                    Err(e) => fail(e),
                };
            }
            let result = if kind == "qemu" {
                run_qemu_job(job, &spec, paths, &host, limits.deadline, catalog)
            } else if kind == "probe" {
                probe_bare(
                    &ProbeRequest {
                        kvm_path: paths.kvm.clone(),
                        feature: Some(&spec),
                        backend: job.backend,
                        announce: job.pair,
                        vcpus: job.vcpus,
                        msrs: spec.msrs(),
                        host: &host,
                        limits,
                        irqchip: false,
                        timed: false,
                    },
                    catalog,
                )
                .map_err(|e| e.to_string())
            } else {
                verify_linux(
                    &VerifyRequest {
                        kvm_path: paths.kvm.clone(),
                        kernel: paths.guest_kernel.clone(),
                        initramfs: paths.guest_initramfs.clone(),
                        feature: Some(&spec),
                        backend: job.backend,
                        announce: job.pair,
                        vcpus: job.vcpus,
                        msrs: (kind == "verify").then(|| spec.msrs()),
                        host: &host,
                        limits,
                        mem_mib: GUEST_MEM_MIB,
                        console_limit: 1 << 20,
                        echo_console: false,
                        // In the lab (QEMU TCG, nested SVM) the guest's XSETBV never reaches
                        // the lab's KVM: CPUID.0xD.0:EBX stays at 576, the guest's XSAVE
                        // size check fails and it falls back without XSAVE, which 6.12
                        // survives and 7.2 does not (oops in prepare_creds()). No XSAVE:
                        // the MSR reads under test do not need it.
                        cmdline: "noxsave".into(),
                    },
                    catalog,
                )
                .map_err(|e| e.to_string())
            };
            match result {
                Ok(r) => JobResult {
                    job: job.name(),
                    pass: r.ok(),
                    snapshot: to_value(&r.snapshot_view(Some(&spec))),
                    report: to_value(&r),
                    job_ms: 0.0,
                },
                Err(e) => fail(e),
            }
        }
    }
}

/// The vendor a CPUID vendor string names.
pub fn vendor_named(s: &str) -> CpuVendor {
    match s {
        "GenuineIntel" => CpuVendor::Intel,
        "AuthenticAMD" | "HygonGenuine" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    }
}

/// The MSR a `cost` job reads: the feature's value MSR for `vendor` (model ppin), else its
/// first KVM-served MSR.
pub fn cost_msr(spec: &FeatureSpec, vendor: CpuVendor) -> Option<MsrIndex> {
    spec.pair_for(vendor)
        .map(|p| p.value)
        .or_else(|| spec.kvm_msrs.first().map(|k| k.msr))
}

/// A `cost` job: the bare probe reading one MSR [`COST_READS`] times per vCPU, timed in the
/// guest.
fn cost(
    job: &Job,
    spec: &FeatureSpec,
    paths: &LabPaths,
    host: &HostSources,
    limits: Limits,
    catalog: &Catalog,
) -> Result<JobResult, String> {
    let vendor = vendor_named(&Fingerprint::of_running_system().cpu_vendor);
    let msr = cost_msr(spec, vendor).ok_or_else(|| {
        format!(
            "feature {} has no MSR for a {vendor:?} CPU to time",
            spec.name
        )
    })?;
    let r = probe_bare(
        &ProbeRequest {
            kvm_path: paths.kvm.clone(),
            feature: Some(spec),
            backend: job.backend,
            announce: job.pair,
            vcpus: job.vcpus,
            msrs: vec![msr; COST_READS],
            host,
            limits,
            irqchip: false,
            timed: true,
        },
        catalog,
    )
    .map_err(|e| e.to_string())?;
    Ok(cost_result(job, &r, msr, catalog))
}

/// A `cost` job's result from the probe's report: per vCPU the cycles of every read, the TSC
/// frequency, and what the reads returned (they must all pass their verdicts).
pub fn cost_result(job: &Job, r: &Report, msr: MsrIndex, catalog: &Catalog) -> JobResult {
    let vcpus = usize::from(job.vcpus);
    let mut cycles: Vec<Vec<u32>> = vec![Vec::new(); vcpus];
    let mut seen: Vec<String> = Vec::new();
    for row in &r.readings {
        if let (Some(c), Some(per)) = (row.cycles, cycles.get_mut(row.cpu as usize)) {
            per.push(c);
        }
        let what = match &row.guest {
            Reading::Value(v) => format!("{v:#x}"),
            Reading::Fault(_) => "#GP".to_owned(),
            Reading::Unavailable(u) => format!("unavailable: {u}"),
        };
        if !seen.contains(&what) {
            seen.push(what);
        }
    }
    let complete = cycles.iter().all(|c| c.len() == COST_READS);
    let pass = r.ok() && complete && r.tsc_khz.is_some();
    JobResult {
        job: job.name(),
        pass,
        snapshot: serde_json::json!({
            "msr": catalog.name_of(msr),
            "backend": job.backend.to_string(),
            "reads": COST_READS,
            "guest_saw": seen,
            "verdicts_ok": r.ok(),
            "timed": complete,
        }),
        report: serde_json::json!({
            "msr": catalog.name_of(msr),
            "index": msr.raw(),
            "reads_per_vcpu": COST_READS,
            "guest_saw": seen,
            "failures": r.failures(),
            "tsc_khz": r.tsc_khz,
            "cycles": cycles,
            "negotiation": to_value(&r.negotiation),
            "vcpus": to_value(&r.vcpus),
            "elapsed_ms": r.elapsed_ms,
        }),
        job_ms: 0.0,
    }
}

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
fn run_qemu_job(
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
    let (readings, kernel_ppin) = judge_guest(
        &guest,
        Some(spec),
        job.backend,
        Some(&inputs),
        host,
        catalog,
    );
    let me = Fingerprint::of_running_system();
    Ok(Report {
        fingerprint: RunFingerprint {
            kernel: me.kernel,
            cpu_vendor: me.cpu_vendor,
            cpu_model: me.cpu_model,
            guest_vendor: vendor,
            guest: "linux".into(),
            feature: Some(spec.name.clone()),
            backend: job.backend,
            vcpus: guest.cpus.len(),
            host_sources: host.describe(),
            announced: inputs.announced.clone(),
        },
        negotiation: Vec::new(),
        vcpus: Vec::new(),
        readings,
        kernel_ppin,
        notes: vec![format!(
            "QEMU {QEMU} -M microvm,acpi=off; guest kernel {}, guest CPU {}, report via the console",
            guest.fingerprint.kernel, guest.fingerprint.cpu_model
        )],
        elapsed_ms: run.elapsed.as_secs_f64() * 1000.0,
        tsc_khz: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_job_kinds_parse() {
        let jobs =
            parse_jobs("qemu:ppin:none:2,cost:ppin:kernel:1,cost:platform-info:none:1").unwrap();
        assert_eq!(
            jobs.iter().map(Job::name).collect::<Vec<_>>(),
            [
                "qemu:ppin:none:2",
                "cost:ppin:kernel:1",
                "cost:platform-info:none:1"
            ]
        );
        let e = parse_jobs("qemu:ppin:user:2").unwrap_err();
        assert!(e.contains("backend must be none"), "{e}");
        assert!(parse_jobs("costly:ppin:user:1").is_err());
    }

    #[test]
    fn qemu_gets_kvmcaps_guest_command_line_minus_the_window() {
        let msrs = [MsrIndex::new(0xc001_02f0), MsrIndex::new(0xc001_02f1)];
        let line = qemu_cmdline(&msrs);
        assert!(!line.contains("KVMCAP_REPORT"), "{line}");
        assert!(
            line.starts_with("console=ttyS0 reboot=t panic=-1"),
            "{line}"
        );
        assert!(
            line.ends_with("KVMCAP_MSRS=0xc00102f0,0xc00102f1 KVMCAP_STREAM=verify"),
            "{line}"
        );
        let args = qemu_args(&LabPaths::default(), 2, GUEST_MEM_MIB, &line);
        let joined = args.join(" ");
        assert!(
            joined.starts_with("-accel kvm -M microvm,acpi=off -cpu host -smp 2 -m 128 "),
            "{joined}"
        );
        assert!(joined.contains("-kernel /guest/bzImage -initrd /guest/initramfs.cpio"));
        assert_eq!(args.last().map(String::as_str), Some(line.as_str()));
    }

    /// A QEMU microvm console recorded on a development host (`-accel tcg -cpu max`, same
    /// guest kernel and initramfs, the AMD PPIN pair; TCG reads both as 0, PPIN not announced).
    const RECORDED: &str = include_str!("../tests/data/qemu-microvm-console.txt");

    #[test]
    fn a_recorded_qemu_console_is_decoded_and_judged() {
        let catalog = Catalog::builtin().unwrap();
        let spec = FeatureSpec::find("ppin", &catalog).unwrap();
        let host = HostSources::default()
            .with_explicit(&["MSR_PPIN=0x1122334455667788".to_owned()], &catalog)
            .unwrap();
        let lines: Vec<String> = RECORDED.lines().map(|l| format!("{l}\n")).collect();
        let frame = first_frame(&mut Decoder::new(), &lines).expect("a frame");
        let run = QemuRun {
            frame,
            elapsed: Duration::from_millis(1),
            console: RECORDED.to_owned(),
            stderr: String::new(),
        };
        let job = parse_jobs("qemu:ppin:none:2").unwrap().remove(0);
        let amd = [MsrIndex::new(0xc001_02f0), MsrIndex::new(0xc001_02f1)];
        // The recording read the AMD pair only.
        let r = judge_qemu_run(&job, &spec, &amd, &run, &host, &catalog).unwrap();
        assert_eq!(r.fingerprint.vcpus, 2);
        assert_eq!(r.readings.len(), 4);
        assert_eq!(r.kernel_ppin.len(), 2);
        // A report for one CPU where two were asked for is refused.
        let one = parse_jobs("qemu:ppin:none:3").unwrap().remove(0);
        let e = judge_qemu_run(&one, &spec, &amd, &run, &host, &catalog).unwrap_err();
        assert!(e.contains("report covers 2 CPUs, the VM has 3"), "{e}");
        // No frame at all: the console's tail is in the error.
        let none = QemuRun {
            frame: Err("QEMU ended without a report".into()),
            elapsed: Duration::from_millis(1),
            console: "Linux version 6.12\nKernel panic\n".into(),
            stderr: "qemu-system-x86_64: failed to initialize kvm".into(),
        };
        let e = judge_qemu_run(&job, &spec, &amd, &none, &host, &catalog).unwrap_err();
        assert!(
            e.contains("failed to initialize kvm") && e.contains("Kernel panic"),
            "{e}"
        );
    }
}
