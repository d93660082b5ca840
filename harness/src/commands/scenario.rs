//! Scenarios as data (`fixtures/scenarios/*.toml`): cases of MSR steps with expectations,
//! each case run in its own bare VM, each step also predicted by the feature model.
//!
//! ```toml
//! name = "ppin-ctl-states"
//! feature = "ppin"
//! backends = ["user", "kernel"]
//! [host]
//! MSR_PPIN = 0x1122334455667788
//! [[case]]
//! name = "enabled-unlocked"
//! initial = { ctl = 0x2 }
//! steps = [
//!   { read = "value", expect = "host" },
//!   { write = "ctl", value = 0x3, expect = "ok" },
//! ]
//! ```
//!
//! MSRs are catalog names or numbers, or the roles `ctl` and `value`: the PPIN pair the
//! guest's CPUID announces, so one scenario holds on Intel and AMD hosts. `expect` is a number,
//! `"gp"`, `"ok"` (a write that completes) or `"host"` (the host source's value; for `value`,
//! the PPIN the VMM supplies). A case whose steps are all reads runs them on every vCPU; a case
//! with writes runs them on vCPU 0 (the others run nothing), so shared MSR state never races.
//! `crash = "triple-fault"` or `crash = "spin"` steps exercise the VMM's SHUTDOWN and deadline
//! paths, with `expect_end = "shutdown"` or `"timeout"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::wiring::model_inputs;
use crate::backend::Backend;
use crate::commands::probe::guest_reading;
use crate::features::model::build_model;
use crate::features::{Announce, FeatureError, FeatureSpec, Scope};
use crate::guests::bare::run::{run_bare, BareRequest};
use crate::guests::bare::MsrOp;
use crate::host::HostSources;
use crate::kvm::KvmSystem;
use crate::vmm::error::{Limits, VmmError};
use crate::vmm::vcpu::VcpuEnd;
use crate::x86::cpuid::{self, CpuVendor};
use msr_probe::{Catalog, Fault, MsrIndex, Reading};

/// Why a scenario cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// the file cannot be read
    #[error("scenario {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// the file does not parse
    #[error("scenario {origin}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// a case or step is invalid
    #[error("scenario {origin}, case `{case}`: {problem}")]
    Invalid {
        /// The file.
        origin: String,
        /// The case.
        case: String,
        /// What is wrong.
        problem: String,
    },
    /// the feature spec is bad
    #[error(transparent)]
    Feature(#[from] FeatureError),
    /// the backend is not one the scenario supports
    #[error("scenario `{scenario}` does not support backend {backend} (it supports {supported})")]
    Backend {
        /// The scenario.
        scenario: String,
        /// The backend asked for.
        backend: Backend,
        /// The ones it supports.
        supported: String,
    },
    /// the VMM failed
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    feature: String,
    backends: Vec<String>,
    #[serde(default)]
    host: BTreeMap<String, u64>,
    case: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    pair: Option<String>,
    #[serde(default)]
    initial: BTreeMap<String, u64>,
    #[serde(default)]
    args: Option<Vec<u64>>,
    #[serde(default)]
    expect_end: Option<String>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(default)]
    read: Option<String>,
    #[serde(default)]
    write: Option<String>,
    #[serde(default)]
    value: Option<u64>,
    #[serde(default)]
    expect: Option<toml::Value>,
    #[serde(default)]
    crash: Option<String>,
    #[serde(default)]
    cpu: Option<u8>,
}

/// What a step must give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// This value.
    Value(u64),
    /// #GP.
    Gp,
    /// A write that completes.
    Ok,
    /// The host source's value (for the PPIN value: the PPIN the VMM supplies).
    Host,
}

/// An MSR named in a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The announced pair's control MSR.
    Ctl,
    /// The announced pair's value MSR.
    Value,
    /// A fixed MSR.
    Msr(MsrIndex),
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// `rdmsr`.
    Read {
        /// Which MSR.
        target: Target,
        /// What it must give.
        expect: Expect,
    },
    /// `wrmsr`.
    Write {
        /// Which MSR.
        target: Target,
        /// The value.
        value: u64,
        /// What it must give.
        expect: Expect,
    },
    /// Triple fault.
    TripleFault,
    /// Spin forever.
    Spin,
}

/// One step and the vCPU that runs it (`None`: every vCPU, in a case of reads only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlacedStep {
    /// The vCPU, if the scenario names one.
    pub cpu: Option<u8>,
    /// The step.
    pub step: Step,
}

/// One case.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// The feature rules it checks (ids from the feature file).
    pub rules: Vec<String>,
    /// Which pairs the guest's CPUID announces in this case, overriding the run's.
    pub announce: Option<Announce>,
    /// MSR state before the guest runs.
    pub initial: Vec<(Target, u64)>,
    /// Enable arguments overriding the feature's.
    pub args: Option<[u64; 4]>,
    /// How the vCPUs must end (`done`, `shutdown`, `timeout`).
    pub expect_end: String,
    /// The deadline.
    pub deadline: Option<Duration>,
    /// The steps, in the order they run (across vCPUs too).
    pub steps: Vec<PlacedStep>,
}

impl Case {
    /// Whether the steps run on every vCPU (no step names one, all are reads).
    pub fn on_every_vcpu(&self) -> bool {
        self.steps
            .iter()
            .all(|s| s.cpu.is_none() && matches!(s.step, Step::Read { .. }))
    }

    /// The vCPUs the case needs.
    pub fn vcpus_needed(&self) -> u8 {
        self.steps
            .iter()
            .filter_map(|s| s.cpu)
            .max()
            .map_or(1, |c| c.saturating_add(1))
    }
}

/// A validated scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// One line.
    pub description: String,
    /// The feature it exercises.
    pub feature: FeatureSpec,
    /// The backends it supports.
    pub backends: Vec<Backend>,
    /// Explicit host values.
    pub host: Vec<String>,
    /// The cases.
    pub cases: Vec<Case>,
}

fn target(name: &str, catalog: &Catalog) -> Result<Target, String> {
    match name {
        "ctl" => Ok(Target::Ctl),
        "value" => Ok(Target::Value),
        other => catalog
            .resolve(other)
            .map(Target::Msr)
            .map_err(|e| e.to_string()),
    }
}

fn expect(v: &Option<toml::Value>) -> Result<Expect, String> {
    match v {
        None => Err("step needs `expect`".into()),
        Some(toml::Value::Integer(i)) => u64::try_from(*i)
            .map(Expect::Value)
            .map_err(|_| "negative expect".into()),
        Some(toml::Value::String(s)) => match s.as_str() {
            "gp" => Ok(Expect::Gp),
            "ok" => Ok(Expect::Ok),
            "host" => Ok(Expect::Host),
            other => msr_probe::index::parse_u64(other)
                .map(Expect::Value)
                .ok_or_else(|| format!("expect `{other}`: a number, \"gp\", \"ok\" or \"host\"")),
        },
        Some(other) => Err(format!(
            "expect {other}: a number, \"gp\", \"ok\" or \"host\""
        )),
    }
}

impl Scenario {
    /// Loads a scenario by path, or by name from `fixtures/scenarios/`.
    pub fn find(name_or_path: &str, catalog: &Catalog) -> Result<Self, ScenarioError> {
        let path = if name_or_path.ends_with(".toml") {
            PathBuf::from(name_or_path)
        } else {
            scenario_dir().join(format!("{name_or_path}.toml"))
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ScenarioError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), catalog)
    }

    /// Parses and validates a scenario.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog) -> Result<Self, ScenarioError> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let feature = FeatureSpec::find(&raw.feature, catalog)?;
        let invalid = |case: &str, problem: String| ScenarioError::Invalid {
            origin: origin.to_owned(),
            case: case.to_owned(),
            problem,
        };
        let mut backends = Vec::new();
        for b in &raw.backends {
            backends.push(b.parse::<Backend>().map_err(|e| invalid("-", e))?);
        }
        let mut host = Vec::new();
        for (k, v) in &raw.host {
            catalog
                .resolve(k)
                .map_err(|e| invalid("-", e.to_string()))?;
            host.push(format!("{k}={v:#x}"));
        }
        if raw.case.is_empty() {
            return Err(invalid("-", "no [[case]]".into()));
        }
        let mut cases = Vec::new();
        for c in raw.case {
            let mut steps = Vec::new();
            for s in &c.steps {
                let step = match (&s.read, &s.write, &s.crash) {
                    (Some(r), None, None) => {
                        if s.value.is_some() {
                            return Err(invalid(
                                &c.name,
                                format!("read {r}: `value` is for writes"),
                            ));
                        }
                        Step::Read {
                            target: target(r, catalog).map_err(|e| invalid(&c.name, e))?,
                            expect: expect(&s.expect).map_err(|e| invalid(&c.name, e))?,
                        }
                    }
                    (None, Some(w), None) => Step::Write {
                        target: target(w, catalog).map_err(|e| invalid(&c.name, e))?,
                        value: s
                            .value
                            .ok_or_else(|| invalid(&c.name, format!("write {w} needs `value`")))?,
                        expect: expect(&s.expect).map_err(|e| invalid(&c.name, e))?,
                    },
                    (None, None, Some(k)) if k == "triple-fault" => Step::TripleFault,
                    (None, None, Some(k)) if k == "spin" => Step::Spin,
                    (None, None, Some(k)) => {
                        return Err(invalid(
                            &c.name,
                            format!("crash `{k}`: expected triple-fault or spin"),
                        ))
                    }
                    _ => {
                        return Err(invalid(
                            &c.name,
                            "a step is exactly one of read, write or crash".into(),
                        ))
                    }
                };
                steps.push(PlacedStep { cpu: s.cpu, step });
            }
            let feature_msrs = feature.msrs();
            let touches_feature = steps.iter().any(|s| match &s.step {
                Step::Read { target, .. } | Step::Write { target, .. } => match target {
                    Target::Ctl | Target::Value => true,
                    Target::Msr(m) => feature_msrs.contains(m),
                },
                Step::TripleFault | Step::Spin => false,
            });
            if !feature.rules.is_empty() && touches_feature && c.rules.is_empty() {
                return Err(invalid(
                    &c.name,
                    format!(
                        "name the rules it checks: `rules = [...]` from feature {} ({})",
                        feature.name,
                        feature
                            .rules
                            .iter()
                            .map(|r| r.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            for r in &c.rules {
                if feature.rule(r).is_none() {
                    return Err(invalid(
                        &c.name,
                        format!("rule `{r}` is not one of feature {}'s", feature.name),
                    ));
                }
            }
            let announce = match &c.pair {
                None => None,
                Some(p) => Some(p.parse::<Announce>().map_err(|e| invalid(&c.name, e))?),
            };
            let mut initial = Vec::new();
            for (k, v) in &c.initial {
                initial.push((target(k, catalog).map_err(|e| invalid(&c.name, e))?, *v));
            }
            let args = match &c.args {
                None => None,
                Some(a) if a.len() <= 4 => {
                    let mut out = [0u64; 4];
                    out[..a.len()].copy_from_slice(a);
                    Some(out)
                }
                Some(_) => return Err(invalid(&c.name, "args: at most 4".into())),
            };
            let expect_end = c.expect_end.clone().unwrap_or_else(|| "done".into());
            if !matches!(
                expect_end.as_str(),
                "done" | "shutdown" | "timeout" | "refused"
            ) {
                return Err(invalid(
                    &c.name,
                    format!("expect_end `{expect_end}`: done, shutdown, timeout or refused"),
                ));
            }
            cases.push(Case {
                name: c.name,
                rules: c.rules,
                announce,
                initial,
                args,
                expect_end,
                deadline: c.deadline_ms.map(Duration::from_millis),
                steps,
            });
        }
        Ok(Self {
            name: raw.name,
            description: raw.description,
            feature,
            backends,
            host,
            cases,
        })
    }
}

/// Where the built-in scenarios live.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios")
}

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
    pub expected: Reading,
    /// What the feature model predicts.
    pub model: Reading,
    /// What the guest saw.
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
    /// The expected end.
    pub expect_end: String,
    /// Per step and vCPU.
    pub steps: Vec<StepResult>,
    /// Whether the case passed.
    pub pass: bool,
}

/// A scenario run.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
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
            "scenario {} (backend {}, pair {}, {} vCPU(s), guest CPU {:?})\n",
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
                if c.pass { "pass" } else { "FAIL" },
                c.rules.join(", "),
                c.negotiation.join("; ")
            ));
            for s in &c.steps {
                out.push_str(&format!(
                    "  cpu{} {:<36} expected {:<20} model {:<20} seen {:<20} {}\n",
                    s.cpu,
                    s.step,
                    s.expected.to_string(),
                    s.model.to_string(),
                    s.seen.to_string(),
                    if s.pass { "ok" } else { "FAIL" }
                ));
            }
            let ends: Vec<String> = c.ends.iter().map(|e| format!("{e:?}")).collect();
            out.push_str(&format!(
                "  end: {} (expected {})\n",
                ends.join(", "),
                c.expect_end
            ));
        }
        out.push_str(if self.pass { "PASS\n" } else { "FAIL\n" });
        out
    }
}

/// The guest CPU vendor KVM reports (from `KVM_GET_SUPPORTED_CPUID`).
pub fn guest_vendor(kvm_path: &Path) -> Result<CpuVendor, VmmError> {
    let kvm = KvmSystem::open(kvm_path)?;
    Ok(cpuid::vendor(&kvm.supported_cpuid()?))
}

fn end_matches(end: &VcpuEnd, want: &str) -> bool {
    match want {
        "done" => matches!(end, VcpuEnd::Done { .. }),
        "shutdown" => matches!(end, VcpuEnd::Shutdown | VcpuEnd::Stopped),
        "timeout" => matches!(end, VcpuEnd::Timeout),
        _ => false,
    }
}

/// Runs `scenario` with `backend` on `vcpus` vCPUs, the guest's CPUID announcing `announce`
/// (a case may override it).
pub fn run_scenario(
    scenario: &Scenario,
    backend: Backend,
    vcpus: u8,
    announce: Announce,
    kvm_path: &Path,
    catalog: &Catalog,
    limits: Limits,
) -> Result<ScenarioReport, ScenarioError> {
    if !scenario.backends.contains(&backend) {
        return Err(ScenarioError::Backend {
            scenario: scenario.name.clone(),
            backend,
            supported: scenario
                .backends
                .iter()
                .map(Backend::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let vendor = guest_vendor(kvm_path)?;
    let host = HostSources::default()
        .with_explicit(&scenario.host, catalog)
        .map_err(|e| VmmError::Request(e.to_string()))?;
    let mut cases = Vec::new();
    for case in &scenario.cases {
        cases.push(run_case(
            scenario,
            case,
            backend,
            vcpus,
            case.announce.unwrap_or(announce),
            vendor,
            &host,
            kvm_path,
            catalog,
            limits,
        )?);
    }
    let pass = cases.iter().all(|c| c.pass);
    Ok(ScenarioReport {
        scenario: scenario.name.clone(),
        backend,
        pair: announce.label(vendor).to_owned(),
        announce,
        guest_vendor: vendor,
        vcpus,
        cases,
        pass,
    })
}

/// Where each step runs: `(vCPU, step)` in execution order, and each vCPU's operations with
/// the turn hand-overs that keep that order across vCPUs.
struct Placement {
    order: Vec<(u8, usize)>,
    /// For each entry of `order`: its operation's index in that vCPU's list.
    op_at: Vec<usize>,
    per_cpu: Vec<Vec<MsrOp>>,
}

fn place(case: &Case, ops: &[MsrOp], vcpus: u8) -> Placement {
    let order: Vec<(u8, usize)> = if case.on_every_vcpu() {
        (0..vcpus)
            .flat_map(|c| (0..ops.len()).map(move |i| (c, i)))
            .collect()
    } else {
        case.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.cpu.unwrap_or(0), i))
            .collect()
    };
    let sequenced = !case.on_every_vcpu() && order.iter().any(|(c, _)| *c != order[0].0);
    let mut per_cpu: Vec<Vec<MsrOp>> = vec![Vec::new(); usize::from(vcpus)];
    let mut op_at = Vec::with_capacity(order.len());
    let mut turn = 0u32;
    let mut current: Option<u8> = None;
    for &(cpu, i) in &order {
        if sequenced && current != Some(cpu) {
            if let Some(prev) = current {
                turn += 1;
                per_cpu[usize::from(prev)].push(MsrOp::Pass(turn));
            }
            per_cpu[usize::from(cpu)].push(MsrOp::Wait(turn));
            current = Some(cpu);
        }
        op_at.push(per_cpu[usize::from(cpu)].len());
        per_cpu[usize::from(cpu)].push(ops[i]);
    }
    Placement {
        order,
        op_at,
        per_cpu,
    }
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    scenario: &Scenario,
    case: &Case,
    backend: Backend,
    vcpus: u8,
    announce: Announce,
    vendor: CpuVendor,
    host: &HostSources,
    kvm_path: &Path,
    catalog: &Catalog,
    limits: Limits,
) -> Result<CaseResult, ScenarioError> {
    let f = &scenario.feature;
    if case.vcpus_needed() > vcpus {
        return Ok(CaseResult {
            name: case.name.clone(),
            rules: case.rules.clone(),
            pair: announce.label(vendor).to_owned(),
            skipped: Some(format!("needs {} vCPUs", case.vcpus_needed())),
            negotiation: Vec::new(),
            ends: Vec::new(),
            expect_end: case.expect_end.clone(),
            steps: Vec::new(),
            pass: true,
        });
    }
    // The roles `ctl` and `value` name the first announced pair.
    let role_pair = announce
        .vendors(vendor)
        .into_iter()
        .find_map(|v| f.pair_for(v));
    let resolve = |t: &Target| -> Result<MsrIndex, ScenarioError> {
        match (t, role_pair) {
            (Target::Msr(i), _) => Ok(*i),
            (Target::Ctl, Some(p)) => Ok(p.ctl),
            (Target::Value, Some(p)) => Ok(p.value),
            (_, None) => Err(VmmError::Request(format!(
                "feature {} has no MSR pair for a {vendor:?} guest: choose one with --pair intel|amd",
                f.name
            ))
            .into()),
        }
    };
    let mut initial = Vec::new();
    for (t, v) in &case.initial {
        initial.push((resolve(t)?, *v));
    }
    let mut ops = Vec::new();
    for s in &case.steps {
        ops.push(match &s.step {
            Step::Read { target, .. } => MsrOp::Read {
                index: resolve(target)?,
            },
            Step::Write { target, value, .. } => MsrOp::Write {
                index: resolve(target)?,
                value: *value,
            },
            Step::TripleFault => MsrOp::TripleFault,
            Step::Spin => MsrOp::Spin,
        });
    }
    let placement = place(case, &ops, vcpus);
    let args = case.args.unwrap_or(f.capability.args);
    let mut case_limits = limits;
    if let Some(d) = case.deadline {
        case_limits.deadline = d;
    }
    let run = run_bare(&BareRequest {
        kvm_path: kvm_path.to_owned(),
        feature: Some(f),
        backend,
        ops: placement.per_cpu.clone(),
        host,
        cap_args: case.args,
        initial: initial.clone(),
        announce,
        limits: case_limits,
        irqchip: false,
        timed: false,
    });
    // `expect_end = "refused"`: the capability's enable must be refused (for `user` by the
    // feature's `accepts`, for `kernel` by KVM), and the message is the case's result.
    let refusal = match &run {
        Err(VmmError::Negotiation {
            error: e @ crate::negotiate::NegotiationError::Refused { .. },
            ..
        }) => Some(e.to_string()),
        _ => None,
    };
    if case.expect_end == "refused" {
        let pass = refusal.is_some();
        return Ok(CaseResult {
            name: case.name.clone(),
            rules: case.rules.clone(),
            pair: announce.label(vendor).to_owned(),
            skipped: None,
            negotiation: vec![refusal.map_or_else(
                || "KVM_ENABLE_CAP was not refused".to_owned(),
                |m| format!("refused: {m}"),
            )],
            ends: Vec::new(),
            expect_end: case.expect_end.clone(),
            steps: Vec::new(),
            pass,
        });
    }
    let outcome = run?;
    // The oracle: the feature model in the same starting state, fed the same steps in the
    // same order; one model for a VM-scoped feature, one per vCPU otherwise.
    let inputs = match &outcome.model_inputs {
        Some(i) => i.clone(),
        None => model_inputs(f, backend, vendor, announce, host, args, &initial)
            .map_err(VmmError::from)?,
    };
    let ppin_value = inputs
        .writes
        .iter()
        .rev()
        .find(|(i, _)| f.pairs.iter().any(|p| p.value == *i))
        .map(|(_, v)| *v);
    let base = build_model(f, &inputs).ok();
    let mut models: Vec<_> = (0..vcpus)
        .map(|_| base.as_ref().map(|m| m.boxed_clone()))
        .collect();
    let mut steps = Vec::new();
    for (k, &(cpu, i)) in placement.order.iter().enumerate() {
        let slot = if f.scope == Scope::Vm {
            0
        } else {
            usize::from(cpu)
        };
        let model = &mut models[slot];
        let op = &ops[i];
        let placed = &case.steps[i];
        let handled = |m: &Option<Box<dyn crate::features::model::MsrModel>>, idx: MsrIndex| {
            m.as_ref().is_some_and(|m| m.handles(idx))
        };
        let (words, expect, predicted) = match (op, &placed.step) {
            (MsrOp::Read { index }, Step::Read { expect, .. }) => (
                format!("rdmsr {} ({})", index, catalog.name_of(*index)),
                expect,
                predict(
                    handled(model, *index),
                    || model_op(model, |m| m.read(*index).map(Reading::Value)),
                    host.get(0, *index),
                ),
            ),
            (MsrOp::Write { index, value }, Step::Write { expect, .. }) => (
                format!("wrmsr {} ({}) {value:#x}", index, catalog.name_of(*index)),
                expect,
                predict(
                    handled(model, *index),
                    || {
                        model_op(model, |m| {
                            m.write(*index, *value).map(|()| Reading::Value(*value))
                        })
                    },
                    None,
                ),
            ),
            _ => continue,
        };
        let index = op.index().unwrap_or(MsrIndex::new(0));
        let expected = match expect {
            Expect::Value(v) => Reading::Value(*v),
            Expect::Gp => Reading::Fault(Fault::Gp),
            Expect::Ok => match op {
                MsrOp::Write { value, .. } => Reading::Value(*value),
                _ => Reading::Unavailable(msr_probe::Unavailable::Io("`ok` is for writes".into())),
            },
            Expect::Host => {
                let is_ppin_value = f.pairs.iter().any(|p| p.value == index);
                match (is_ppin_value, ppin_value, host.get(0, index)) {
                    (true, Some(v), _) => Reading::Value(v),
                    (_, _, Some(h)) => h.reading,
                    _ => Reading::Unavailable(msr_probe::Unavailable::Io("no host value".into())),
                }
            }
        };
        let role = |t: &Target| match t {
            Target::Ctl => "ctl".to_owned(),
            Target::Value => "value".to_owned(),
            Target::Msr(m) => catalog.name_of(*m).to_owned(),
        };
        let what = match &placed.step {
            Step::Read { target, .. } => format!("rdmsr {}", role(target)),
            Step::Write { target, value, .. } => format!("wrmsr {} {value:#x}", role(target)),
            Step::TripleFault | Step::Spin => continue,
        };
        let seen = guest_reading(&outcome, usize::from(cpu), placement.op_at[k], op);
        let pass = seen == expected && predicted.as_ref().is_none_or(|m| *m == expected);
        steps.push(StepResult {
            cpu: u32::from(cpu),
            what,
            step: words,
            expected,
            model: predicted.unwrap_or(Reading::Unavailable(msr_probe::Unavailable::Io(
                "not modelled".into(),
            ))),
            seen,
            pass,
        });
    }
    // A vCPU that runs steps must end as the case says; an idle one may finish or be stopped.
    let ends_ok = outcome.ends.iter().enumerate().all(|(cpu, e)| {
        let busy = placement.per_cpu[cpu]
            .iter()
            .any(|op| !matches!(op, MsrOp::Wait(_) | MsrOp::Pass(_)));
        if busy {
            end_matches(e, &case.expect_end)
        } else {
            end_matches(e, "done") || end_matches(e, &case.expect_end)
        }
    });
    let pass = ends_ok && steps.iter().all(|s| s.pass);
    Ok(CaseResult {
        name: case.name.clone(),
        rules: case.rules.clone(),
        pair: announce.label(vendor).to_owned(),
        skipped: None,
        negotiation: outcome
            .negotiation
            .iter()
            .map(|s| format!("{}: {}", s.cap, s.enabled.as_deref().unwrap_or("checked")))
            .collect(),
        ends: outcome.ends,
        expect_end: case.expect_end.clone(),
        steps,
        pass,
    })
}

fn model_op(
    model: &mut Option<Box<dyn crate::features::model::MsrModel>>,
    f: impl FnOnce(&mut dyn crate::features::model::MsrModel) -> Result<Reading, Fault>,
) -> Result<Reading, Fault> {
    match model {
        Some(m) => f(m.as_mut()),
        None => Err(Fault::Gp),
    }
}

/// The model's prediction for a step on one of its MSRs; other MSRs are predicted by the host
/// source where it has a value, and not at all otherwise.
fn predict(
    handled: bool,
    model: impl FnOnce() -> Result<Reading, Fault>,
    host: Option<crate::host::HostValue>,
) -> Option<Reading> {
    if handled {
        Some(model().unwrap_or_else(Reading::Fault))
    } else {
        host.map(|h| h.reading)
    }
}
