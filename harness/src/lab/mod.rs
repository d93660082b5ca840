//! The lab host's side: `kvmcap lab-init` runs as `/init` of the lab's initramfs, inside the
//! lab kernel (the patched KVM), runs each job of `KVMCAP_LAB_JOBS` against `/dev/kvm`, and
//! prints each result framed on the console for `cargo xtask lab` to collect.
//!
//! Jobs are comma-separated, fields colon-separated:
//!
//! - `verify:FEATURE:BACKEND:VCPUS` boots the Linux guest (`/guest/bzImage`,
//!   `/guest/initramfs.cpio`) and verifies what it reads (the feature's MSRs);
//! - `catalog:FEATURE:BACKEND:VCPUS` the same with the whole catalog;
//! - `run:SCENARIO:BACKEND:VCPUS` runs a scenario on the bare guest: `/scenarios/SCENARIO.toml`
//!   (the lab's fixtures directory is `/`), else the built-in one of that name;
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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::commands::probe::{probe_bare, ProbeRequest};
use crate::commands::scenario::{run_scenario, Scenario};
use crate::commands::verify::{verify_linux, VerifyRequest};
use crate::features::FeatureSpec;
use crate::host::HostSources;
use crate::report::document::{Document, LabJobV1, SelftestV1};
use crate::report::results::{Case, Status, Suite};
use crate::vmm::error::Limits;
use crate::vmm::stats::ExitStats;
use msr_probe::Catalog;

/// QEMU in the bench lab image.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Guest memory of every Linux-guest job, kvmcap's and QEMU's.
pub const GUEST_MEM_MIB: u32 = 128;
/// Reads per vCPU of a `cost` job.
pub const COST_READS: usize = 1000;
/// QEMU console bytes kept (the report arrives through it).
const QEMU_CONSOLE_LIMIT: usize = 1 << 20;

/// Where the lab's files live inside its initramfs.
#[derive(Clone, Debug)]
pub struct LabPaths {
    /// The KVM device.
    pub kvm: PathBuf,
    /// The guest kernel.
    pub guest_kernel: PathBuf,
    /// The guest initramfs.
    pub guest_initramfs: PathBuf,
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
            selftests: "/selftests".into(),
            qemu: QEMU.into(),
        }
    }
}

/// A job's result as the lab prints it (`kvmcap.lab-job/1`).
#[derive(Debug, Serialize)]
pub struct JobResult {
    /// The schema name.
    pub schema: LabJobV1,
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
    /// The job's cases (for KTAP and JUnit: `cargo xtask lab` reads them), its time `job_ms`.
    pub suite: Suite,
    /// Exit accounting per vCPU, summed over the job's VMs (empty for jobs that ran no VM of
    /// kvmcap's: `selftest`, `qemu`, a job that could not run).
    pub stats: Vec<ExitStats>,
}

impl JobResult {
    /// A job's result: its report's cases become the job's suite (case names prefixed with
    /// their run when the report holds several runs).
    pub fn new(
        job: &Job,
        pass: bool,
        snapshot: serde_json::Value,
        report: serde_json::Value,
        suites: Vec<Suite>,
    ) -> Self {
        let several = suites.len() > 1;
        let cases = suites
            .into_iter()
            .flat_map(|s| {
                let prefix = several.then(|| s.name.clone());
                s.cases.into_iter().map(move |mut c| {
                    if let Some(p) = &prefix {
                        c.name = format!("{p}: {}", c.name);
                    }
                    c
                })
            })
            .collect();
        JobResult {
            schema: LabJobV1,
            job: job.name(),
            pass,
            snapshot,
            report,
            job_ms: 0.0,
            suite: Suite {
                name: job.name(),
                time_ms: 0.0,
                cases,
                error: None,
            },
            stats: Vec::new(),
        }
    }

    /// A job that could not run, and why.
    pub fn failed(job: &Job, e: String) -> Self {
        let mut r = Self::new(
            job,
            false,
            serde_json::Value::String(format!("error: {e}")),
            serde_json::Value::String(e.clone()),
            Vec::new(),
        );
        r.suite.error = Some(e);
        r
    }
}

impl Document for JobResult {
    fn pass(&self) -> bool {
        self.pass
    }

    fn suites(&self) -> Vec<Suite> {
        vec![self.suite.clone()]
    }
}

/// A job's result from its report: its pass, JSON, cases and exit accounting.
fn documented(job: &Job, d: &impl Document, snapshot: serde_json::Value) -> JobResult {
    let mut r = JobResult::new(job, d.pass(), snapshot, to_value(d), d.suites());
    r.stats = d.exit_stats();
    r
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
    r.suite.time_ms = r.job_ms;
    r
}

fn run_job_untimed(
    job: &Job,
    paths: &LabPaths,
    host_values: &[String],
    catalog: &Catalog,
) -> JobResult {
    let fail = |e: String| JobResult::failed(job, e);
    let host = match HostSources::default().with_explicit(host_values, catalog) {
        Ok(h) => h,
        Err(e) => return fail(e.to_string()),
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
                    JobResult::new(
                        job,
                        code == 0,
                        serde_json::json!({ "selftest": job.subject, "exit": code }),
                        serde_json::json!({
                            "schema": SelftestV1::ID,
                            "pass": code == 0,
                            "exit": code,
                            "output": &text[text.ceil_char_boundary(keep)..],
                        }),
                        vec![Suite {
                            name: job.subject.clone(),
                            time_ms: 0.0,
                            cases: vec![Case::new(
                                job.subject.clone(),
                                if code == 0 {
                                    Status::Pass
                                } else {
                                    Status::Fail(format!("exit {code}"))
                                },
                            )],
                            error: None,
                        }],
                    )
                }
                Err(e) => fail(format!("{}: {e}", path.display())),
            }
        }
        "explore" => {
            let spec = match FeatureSpec::find(&job.subject, catalog) {
                Ok(s) => s,
                Err(e) => return fail(e.to_string()),
            };
            match crate::commands::explore::explore(
                &crate::commands::explore::ExploreRequest {
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
                Ok(r) => documented(job, &r, to_value(&r.snapshot_view())),
                Err(e) => fail(e.to_string()),
            }
        }
        "run" => {
            let scenario = match Scenario::find(&job.subject, catalog) {
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
                Ok(r) => documented(job, &r, to_value(&r.snapshot_view())),
                Err(e) => fail(e.to_string()),
            }
        }
        kind => {
            let spec = match FeatureSpec::find(&job.subject, catalog) {
                Ok(s) => s,
                Err(e) => return fail(e.to_string()),
            };
            if kind == "cost" {
                return match cost::cost(job, &spec, paths, &host, limits, catalog) {
                    Ok(r) => r,
                    Err(e) => fail(e),
                };
            }
            let result = if kind == "qemu" {
                qemu::run_qemu_job(job, &spec, paths, &host, limits.deadline, catalog)
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
                Ok(r) => documented(job, &r, to_value(&r.snapshot_view(Some(&spec)))),
                Err(e) => fail(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::frame::Decoder;
    use msr_probe::MsrIndex;

    #[test]
    fn jobs_are_checked_before_any_boot() {
        let c = Catalog::builtin().unwrap();
        let ok = parse_jobs("selftest:ppin_test:kernel:1,run:ppin-ctl-states:kernel:2:intel,run:ppin-absent:none:2,explore:ppin:user:2:amd,probe:ppin:kernel:2,verify:ppin:user:2,qemu:ppin:none:2,cost:platform-info:none:1").unwrap();
        check_jobs(&ok, &c).unwrap();
        for (bad, why) in [
            ("run:no-such:user:1", "unknown scenario"),
            ("run:ppin-absent:kernel:2", "does not list backend kernel"),
            ("explore:ppin:user:3", "at most 2 vCPUs"),
            ("verify:nope:user:1", "unknown feature"),
            ("verify:ppin:user:33", "at most 32 vCPUs"),
        ] {
            let e = check_jobs(&parse_jobs(bad).unwrap(), &c).unwrap_err();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

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
    const RECORDED: &str = include_str!("../../tests/data/qemu-microvm-console.txt");

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

mod cost;
pub mod init;
pub mod isolate;
mod jobs;
mod qemu;

pub use cost::{cost_msr, cost_result, vendor_named};
pub use jobs::{check_jobs, parse_jobs, Job};
pub use qemu::{first_frame, judge_qemu_run, qemu_args, qemu_cmdline, run_qemu, QemuRun};
