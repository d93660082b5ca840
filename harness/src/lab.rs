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
//!   tree); it passes on exit 0 (a skip, exit 4, is a failure: the lab must have the cap).
//!
//! Host values come from `KVMCAP_LAB_HOST` (`NAME=VALUE` words separated by `+`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::backend::Backend;
use crate::feature::FeatureSpec;
use crate::host::HostSources;
use crate::probe::{probe_bare, ProbeRequest};
use crate::scenario::{run_scenario, Scenario};
use crate::verify::{verify_linux, VerifyRequest};
use crate::vmm::machine::Limits;
use msr_probe::Catalog;

/// One lab job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// `verify`, `catalog`, `run` or `probe`.
    pub kind: String,
    /// The feature or scenario.
    pub subject: String,
    /// The backend.
    pub backend: Backend,
    /// vCPUs.
    pub vcpus: u8,
}

impl Job {
    /// The job as written, used as its frame's stream name.
    pub fn name(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.kind, self.subject, self.backend, self.vcpus
        )
    }
}

/// Parses `KVMCAP_LAB_JOBS`.
pub fn parse_jobs(text: &str) -> Result<Vec<Job>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|j| {
            let f: Vec<&str> = j.split(':').collect();
            let [kind, subject, backend, vcpus] = f[..] else {
                return Err(format!(
                    "lab job `{j}`: expected KIND:SUBJECT:BACKEND:VCPUS"
                ));
            };
            if !matches!(kind, "verify" | "catalog" | "run" | "probe" | "selftest") {
                return Err(format!("lab job `{j}`: unknown kind `{kind}`"));
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
}

impl Default for LabPaths {
    fn default() -> Self {
        Self {
            kvm: "/dev/kvm".into(),
            guest_kernel: "/guest/bzImage".into(),
            guest_initramfs: "/guest/initramfs.cpio".into(),
            scenarios: "/scenarios".into(),
            selftests: "/selftests".into(),
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
}

fn to_value(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v)
        .unwrap_or_else(|e| serde_json::Value::String(format!("serialization failed: {e}")))
}

/// Runs one job.
pub fn run_job(
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
    };
    let host = match HostSources::default().with_explicit(host_values, catalog) {
        Ok(h) => h,
        Err(e) => return fail(e.to_string()),
    };
    let limits = Limits {
        deadline: Duration::from_secs(if matches!(job.kind.as_str(), "verify" | "catalog") {
            120
        } else {
            20
        }),
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
                    }
                }
                Err(e) => fail(format!("{}: {e}", path.display())),
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
                &paths.kvm,
                catalog,
                limits,
            ) {
                Ok(r) => JobResult {
                    job: job.name(),
                    pass: r.pass,
                    snapshot: to_value(&r.snapshot_view()),
                    report: to_value(&r),
                },
                Err(e) => fail(e.to_string()),
            }
        }
        kind => {
            let spec = match FeatureSpec::find(&job.subject, catalog) {
                Ok(s) => s,
                Err(e) => return fail(e.to_string()),
            };
            let result = if kind == "probe" {
                probe_bare(
                    &ProbeRequest {
                        kvm_path: paths.kvm.clone(),
                        feature: Some(&spec),
                        backend: job.backend,
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
                        vcpus: job.vcpus,
                        msrs: (kind == "verify").then(|| spec.msrs()),
                        host: &host,
                        limits,
                        mem_mib: 128,
                        console_limit: 1 << 20,
                        echo_console: false,
                        cmdline: String::new(),
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
                },
                Err(e) => fail(e),
            }
        }
    }
}
