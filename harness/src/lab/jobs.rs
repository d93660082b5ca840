//! Lab jobs: their grammar (`KIND:SUBJECT:BACKEND:VCPUS[:PAIR]`) and the check that every
//! job can run, made on the host before any kernel is built or booted.

use crate::backend::Backend;
use crate::commands::scenario::Scenario;
use crate::features::Announce;
use crate::features::FeatureSpec;
use msr_probe::Catalog;

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

/// Checks `jobs` on the host before any kernel is built or booted: each job's feature or
/// scenario resolves (built in, `--fixtures DIR`, or a path) and loads, a scenario supports the
/// job's backend, and the vCPU count fits the job's guest. The first bad job, in one line.
pub fn check_jobs(jobs: &[Job], catalog: &Catalog) -> Result<(), String> {
    for job in jobs {
        let bad = |why: String| format!("lab job `{}`: {why}", job.name());
        match job.kind.as_str() {
            "selftest" if job.subject.is_empty() || job.subject.contains('/') => {
                return Err(bad("a selftest is named by its binary".into()))
            }
            "selftest" => {}
            "run" => {
                let s = Scenario::find(&job.subject, catalog).map_err(|e| bad(e.to_string()))?;
                if !s.backends.contains(&job.backend) {
                    return Err(bad(format!(
                        "scenario {} does not list backend {}",
                        s.name, job.backend
                    )));
                }
            }
            kind => {
                FeatureSpec::find(&job.subject, catalog).map_err(|e| bad(e.to_string()))?;
                let max = match kind {
                    "explore" => 2,
                    "verify" | "catalog" | "qemu" => crate::guests::linux::MAX_VCPUS,
                    _ => crate::vmm::error::DEFAULT_MAX_VCPUS,
                };
                if job.vcpus > max {
                    return Err(bad(format!("{kind} runs on at most {max} vCPUs")));
                }
            }
        }
    }
    Ok(())
}
