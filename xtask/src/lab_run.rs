//! What a lab run produced: each job's outcome (verdict, views, cases, exit accounting) and
//! the run's table.

use std::path::PathBuf;
use std::time::Duration;

use kvmcap::report::results::Suite;

/// One job's result as the lab reported it.
#[derive(Clone, Debug)]
pub struct JobOutcome {
    /// The job.
    pub job: String,
    /// Whether it passed.
    pub pass: bool,
    /// The machine-independent view.
    pub snapshot: serde_json::Value,
    /// The full report.
    pub report: serde_json::Value,
    /// Wall time in the lab from the job's start to its verdict.
    pub job_ms: Option<f64>,
    /// The job's cases (for KTAP and JUnit).
    pub suite: Option<Suite>,
    /// Exit accounting per vCPU, as the lab reported it (JSON: `exits`, `exit_total`,
    /// `kvm_run_ms`, `vmm_ms`).
    pub stats: serde_json::Value,
    /// How the job's first attempt ended when the lab ran it twice (it hung: the lab's /init
    /// killed it at its budget and ran it again; `kvmcap::lab::isolate`).
    pub first_attempt: Option<String>,
    /// Reused from an earlier lab with the same inputs ([`crate::lab_cache`]), not run.
    pub cached: bool,
}

impl JobOutcome {
    /// The outcome of `job` from the report the lab printed for it (a `kvmcap.lab-job/1`
    /// document).
    pub fn from_report(job: &str, v: &serde_json::Value) -> Result<Self, String> {
        if !v.is_object() {
            return Err(format!("{job}: the report is not a JSON object"));
        }
        Ok(JobOutcome {
            job: job.to_owned(),
            pass: v["pass"].as_bool().unwrap_or(false),
            snapshot: v["snapshot"].clone(),
            report: v["report"].clone(),
            job_ms: v["job_ms"].as_f64(),
            suite: serde_json::from_value(v["suite"].clone()).ok(),
            stats: v["stats"].clone(),
            first_attempt: v["first_attempt"].as_str().map(str::to_owned),
            cached: false,
        })
    }

    /// The outcome as a lab report again (what [`JobOutcome::from_report`] reads).
    pub fn to_report(&self) -> serde_json::Value {
        serde_json::json!({
            "job": self.job,
            "pass": self.pass,
            "snapshot": self.snapshot,
            "report": self.report,
            "job_ms": self.job_ms,
            "suite": self.suite,
            "stats": self.stats,
        })
    }

    /// Exits, MSR exits, I/O exits, ms in KVM_RUN and ms in the VMM, summed over vCPUs.
    pub fn exit_totals(&self) -> (u64, u64, u64, f64, f64) {
        let cpus = self.stats.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let n = |v: &serde_json::Value, k: &str| v["exits"][k].as_u64().unwrap_or(0);
        cpus.iter().fold((0, 0, 0, 0.0, 0.0), |t, v| {
            (
                t.0 + v["exit_total"].as_u64().unwrap_or(0),
                t.1 + n(v, "msr_read") + n(v, "msr_write"),
                t.2 + n(v, "io_in") + n(v, "io_out"),
                t.3 + v["kvm_run_ms"].as_f64().unwrap_or(0.0),
                t.4 + v["vmm_ms"].as_f64().unwrap_or(0.0),
            )
        })
    }
}

/// What the lab produced.
#[derive(Clone, Debug)]
pub struct LabRun {
    /// Per job, in order; a job with no report is an error naming it.
    pub jobs: Vec<Result<JobOutcome, String>>,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
    /// The console log (of the first lab, with shards).
    pub console_log: PathBuf,
    /// How many labs ran the jobs in parallel.
    pub shards: usize,
}

impl LabRun {
    /// How many jobs were reused from the cache, not run.
    pub fn cached(&self) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.as_ref().is_ok_and(|o| o.cached))
            .count()
    }

    /// Whether every job reported and passed.
    pub fn pass(&self) -> bool {
        self.jobs.iter().all(|j| j.as_ref().is_ok_and(|j| j.pass))
    }

    /// Every job's cases, in the jobs' order; a job that gave no report is a suite with its
    /// error (a failure).
    pub fn suites(&self, jobs: &[String]) -> Vec<Suite> {
        jobs.iter()
            .zip(&self.jobs)
            .map(|(name, j)| match j {
                Ok(JobOutcome { suite: Some(s), .. }) => s.clone(),
                Ok(o) => Suite {
                    name: o.job.clone(),
                    time_ms: o.job_ms.unwrap_or(0.0),
                    cases: Vec::new(),
                    error: Some("the job's report has no cases".into()),
                },
                Err(e) => Suite {
                    name: name.clone(),
                    time_ms: 0.0,
                    cases: Vec::new(),
                    error: Some(e.clone()),
                },
            })
            .collect()
    }

    /// The summary table: each job's verdict, time and exit accounting (exits in all, MSR and
    /// I/O exits, ms inside KVM_RUN against ms in kvmcap's VMM, summed over vCPUs).
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<38} {:<7} {:>9} {:>8} {:>6} {:>6} {:>10} {:>8}\n",
            "LAB JOB", "VERDICT", "JOB ms", "EXITS", "MSR", "IO", "KVM_RUN ms", "VMM ms"
        );
        for j in &self.jobs {
            match j {
                Ok(o) => {
                    let (exits, msr, io, run, vmm) = o.exit_totals();
                    out.push_str(&format!(
                        "{:<38} {:<7} {:>9} {:>8} {:>6} {:>6} {:>10.1} {:>8.1}\n",
                        o.job,
                        if o.pass { "PASS" } else { "FAIL" },
                        if o.cached {
                            "cached".into()
                        } else {
                            o.job_ms.map_or("-".into(), |t| format!("{t:.0}"))
                        },
                        exits,
                        msr,
                        io,
                        run,
                        vmm
                    ));
                    if let Some(why) = &o.first_attempt {
                        let mut why = why.clone();
                        why.truncate(300);
                        out.push_str(&format!("    {} ran twice; first attempt {why}\n", o.job));
                    }
                }
                Err(e) => out.push_str(&format!("{:<38} ERROR {e}\n", "?")),
            }
        }
        let cached = self.cached();
        out.push_str(&format!(
            "{} in {:.1} s{}{} (console: {})\n",
            if self.pass() { "PASS" } else { "FAIL" },
            self.elapsed.as_secs_f64(),
            if self.shards > 1 {
                format!(", {} labs in parallel", self.shards)
            } else {
                String::new()
            },
            if cached > 0 {
                format!(
                    ", {cached} of {} jobs cached (passed with this kernel, initramfs and QEMU; --no-cache runs them)",
                    self.jobs.len()
                )
            } else {
                String::new()
            },
            self.console_log.display()
        ));
        out
    }
}
