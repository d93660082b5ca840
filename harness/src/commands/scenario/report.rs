//! What a scenario run found: each step's and case's outcome, and the report's table.

use serde::Serialize;

use crate::report::document::{Document, RunV1, ScenarioV1};
use crate::report::results::{Case, Status, Suite};
use crate::report::style::{self, paint, pass_fail, Tone};

use crate::backend::Backend;
use crate::features::Announce;
use crate::vmm::stats::{accumulate, ExitStats};
use crate::vmm::vcpu::VcpuEnd;
use crate::x86::cpuid::CpuVendor;
use msr_probe::Reading;

/// One step's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    /// The vCPU.
    pub cpu: u32,
    /// The step as the scenario says it (roles, not indices: the same on every host).
    pub what: String,
    /// The step with the concrete MSR.
    pub step: String,
    /// What the scenario expects.
    #[serde(serialize_with = "crate::json::reading")]
    pub expected: Reading,
    /// What the feature model predicts.
    #[serde(serialize_with = "crate::json::reading")]
    pub model: Reading,
    /// What the guest saw.
    #[serde(serialize_with = "crate::json::reading")]
    pub seen: Reading,
    /// Whether seen == expected == model.
    pub pass: bool,
}

/// One case's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The case.
    pub name: String,
    /// The feature rules it checks.
    pub rules: Vec<String>,
    /// The pairs the guest's CPUID announced (`intel`, `amd`, `both`).
    pub pair: String,
    /// Why the case did not run (it needs more vCPUs than the run has).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Negotiation outcome per capability.
    pub negotiation: Vec<String>,
    /// How each vCPU ended.
    pub ends: Vec<VcpuEnd>,
    /// Per vCPU: exits by reason, time in `KVM_RUN` and in the VMM (empty when no VM ran).
    pub stats: Vec<ExitStats>,
    /// The expected end.
    pub expect_end: String,
    /// Per step and vCPU.
    pub steps: Vec<StepResult>,
    /// Wall time of the case (its VM's creation, run and verdicts), milliseconds.
    pub elapsed_ms: f64,
    /// Whether the case passed.
    pub pass: bool,
}

/// A scenario run (`kvmcap.scenario/1`).
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// The schema name.
    pub schema: ScenarioV1,
    /// The scenario.
    pub scenario: String,
    /// The backend.
    pub backend: Backend,
    /// The pairs the guest's CPUID announced by default (`intel`, `amd`, `both`).
    pub pair: String,
    /// The pair as asked for (`vendor` unless the run named one): what snapshots show, so
    /// they are the same on every host.
    pub announce: Announce,
    /// The guest's CPU vendor.
    pub guest_vendor: CpuVendor,
    /// vCPU count.
    pub vcpus: u8,
    /// Per case.
    pub cases: Vec<CaseResult>,
    /// Whether every case passed.
    pub pass: bool,
}

impl ScenarioReport {
    /// The machine-independent view for snapshots: steps by role, readings literal (every
    /// value in a scenario is one the scenario or the VMM supplies).
    pub fn snapshot_view(&self) -> Vec<String> {
        let mut out = vec![format!(
            "scenario {} backend {} pair {} vcpus {}",
            self.scenario, self.backend, self.announce, self.vcpus
        )];
        for c in &self.cases {
            let state = match (&c.skipped, c.pass) {
                (Some(why), _) => format!("skipped ({why})"),
                (None, true) => "pass".into(),
                (None, false) => "FAIL".into(),
            };
            out.push(format!("case {} [{}]: {state}", c.name, c.rules.join(", ")));
            if c.expect_end == "refused" {
                out.extend(c.negotiation.iter().map(|n| format!("  {n}")));
                continue;
            }
            for s in &c.steps {
                out.push(format!(
                    "  cpu{} {}: expected {} model {} seen {} {}",
                    s.cpu,
                    s.what,
                    s.expected,
                    s.model,
                    s.seen,
                    if s.pass { "ok" } else { "FAIL" }
                ));
            }
            let ends: Vec<String> = c
                .ends
                .iter()
                .map(|e| match e {
                    // An idle vCPU (no steps) may finish before another ends the VM, or be
                    // stopped by it: both are the same outcome.
                    VcpuEnd::Done { ops: 0 } | VcpuEnd::Stopped => "idle".to_owned(),
                    VcpuEnd::Done { ops } => format!("done({ops})"),
                    other => format!("{other:?}"),
                })
                .collect();
            out.push(format!("  end: {}", ends.join(", ")));
        }
        out
    }

    /// The table people read.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {} (backend {}, pair {}, {} vCPU(s), guest CPU {})\n",
            self.scenario, self.backend, self.pair, self.vcpus, self.guest_vendor
        );
        for c in &self.cases {
            if let Some(why) = &c.skipped {
                out.push_str(&format!("case {} [skipped: {why}]\n", c.name));
                continue;
            }
            out.push_str(&format!(
                "case {} [{}]  rules {}  ({})\n",
                c.name,
                if c.pass {
                    paint("pass", Tone::Good)
                } else {
                    paint("FAIL", Tone::Bad)
                },
                c.rules.join(", "),
                c.negotiation.join("; ")
            ));
            // Without -v a passing case is its line; a failing one shows every step.
            if c.pass && !style::get().verbose {
                continue;
            }
            for s in &c.steps {
                out.push_str(&format!(
                    "  cpu{} {:<36} expected {:<20} model {:<20} seen {:<20} {}\n",
                    s.cpu,
                    s.step,
                    s.expected.to_string(),
                    s.model.to_string(),
                    s.seen.to_string(),
                    if s.pass {
                        paint("ok", Tone::Good)
                    } else {
                        paint("FAIL", Tone::Bad)
                    }
                ));
            }
            let ends: Vec<String> = c.ends.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "  end: {} (expected {})\n",
                ends.join(", "),
                c.expect_end
            ));
        }
        out.push_str(&pass_fail(self.pass));
        out.push('\n');
        out
    }
}

impl ScenarioReport {
    fn suite(&self) -> Suite {
        let cases = self
            .cases
            .iter()
            .map(|c| {
                let status = match (&c.skipped, c.pass) {
                    (Some(why), _) => Status::Skip(why.clone()),
                    (None, true) => Status::Pass,
                    (None, false) => Status::Fail(match c.steps.iter().find(|s| !s.pass) {
                        Some(s) => format!(
                            "cpu{} {}: expected {} model {} seen {}",
                            s.cpu, s.step, s.expected, s.model, s.seen
                        ),
                        None => format!(
                            "ended {}, expected {} ({})",
                            c.ends
                                .iter()
                                .map(|e| format!("{e:?}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            c.expect_end,
                            c.negotiation.join("; ")
                        ),
                    }),
                };
                Case {
                    name: c.name.clone(),
                    status,
                    time_ms: Some(c.elapsed_ms),
                }
            })
            .collect();
        Suite {
            name: format!("run {} {} {}vcpu", self.scenario, self.backend, self.vcpus),
            time_ms: self.cases.iter().map(|c| c.elapsed_ms).sum(),
            cases,
            error: None,
        }
    }
}

impl Document for ScenarioReport {
    fn pass(&self) -> bool {
        self.pass
    }

    /// Summed over the cases (each ran its own VM).
    fn exit_stats(&self) -> Vec<ExitStats> {
        let mut all = Vec::new();
        for c in &self.cases {
            accumulate(&mut all, &c.stats);
        }
        all
    }

    fn suites(&self) -> Vec<Suite> {
        vec![self.suite()]
    }
}

/// A backend `run` did not try, and why (the kernel lacks a capability it needs).
#[derive(Clone, Debug, Serialize)]
pub struct SkippedBackend {
    /// The backend.
    pub backend: Backend,
    /// Why.
    pub reason: String,
}

/// What `kvmcap run` prints (`kvmcap.run/1`): the scenario on each backend it ran, and each
/// backend it skipped. It passes when every run passed and at least one ran.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The schema name.
    pub schema: RunV1,
    /// Whether it passed.
    pub pass: bool,
    /// The scenario.
    pub scenario: String,
    /// One report per backend run.
    pub reports: Vec<ScenarioReport>,
    /// The backends skipped.
    pub skipped: Vec<SkippedBackend>,
}

impl RunReport {
    /// The run of `scenario`: its reports and skipped backends.
    pub fn new(
        scenario: impl Into<String>,
        reports: Vec<ScenarioReport>,
        skipped: Vec<SkippedBackend>,
    ) -> Self {
        Self {
            schema: RunV1,
            pass: !reports.is_empty() && reports.iter().all(|r| r.pass),
            scenario: scenario.into(),
            reports,
            skipped,
        }
    }

    /// The table people read: each report's, and a line per skipped backend.
    pub fn table(&self) -> String {
        let mut out: String = self.reports.iter().map(ScenarioReport::table).collect();
        for s in &self.skipped {
            out.push_str(&format!(
                "scenario {} (backend {}): skipped: {}\n",
                self.scenario, s.backend, s.reason
            ));
        }
        out
    }
}

impl Document for RunReport {
    fn pass(&self) -> bool {
        self.pass
    }

    /// Summed over every backend's cases.
    fn exit_stats(&self) -> Vec<ExitStats> {
        let mut all = Vec::new();
        for r in &self.reports {
            accumulate(&mut all, &r.exit_stats());
        }
        all
    }

    fn suites(&self) -> Vec<Suite> {
        let mut v: Vec<Suite> = self.reports.iter().map(ScenarioReport::suite).collect();
        v.extend(self.skipped.iter().map(|s| Suite {
            name: format!("run {} {}", self.scenario, s.backend),
            time_ms: 0.0,
            cases: vec![Case::new(
                s.backend.to_string(),
                Status::Skip(s.reason.clone()),
            )],
            error: None,
        }));
        v
    }
}
