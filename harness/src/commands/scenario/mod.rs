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
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::features::{Announce, FeatureError, FeatureSpec};
use crate::fixtures::{self, Kind, Missing};
use crate::vmm::error::VmmError;
use msr_probe::{Catalog, MsrIndex};

/// Why a scenario cannot be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// no scenario of that name
    #[error("unknown scenario `{name}` (known: {known}; or a path to a .toml file; `kvmcap list scenarios`)")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names known (built in and the user's).
        known: String,
    },
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
        match fixtures::text(Kind::Scenario, name_or_path) {
            Ok((text, origin)) => Self::parse(&text, &origin, catalog),
            Err(Missing::Unknown { known }) => Err(ScenarioError::Unknown {
                name: name_or_path.to_owned(),
                known,
            }),
            Err(Missing::Read { path, source }) => Err(ScenarioError::Read { path, source }),
        }
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

mod report;
mod run;

pub use report::{CaseResult, RunReport, ScenarioReport, SkippedBackend, StepResult};
pub use run::{guest_vendor, run_scenario};
