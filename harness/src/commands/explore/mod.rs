//! Generated cases: every state the feature's rules let a guest reach by its own writes, and in
//! each state every class of write and every read, run against a backend and compared with
//! the rules. Nobody picks the cases, so they do not share the author's reading of the spec;
//! a difference is printed with the shortest sequence that shows it, as a scenario file.
//!
//! A case is: the guest writes that lead to the state (on vCPU 0), one probing access (a
//! write class to one register, or a read), then a read of every register, on the same vCPU
//! and, with two vCPUs, also with the probe and the reads on vCPU 1 after vCPU 0's writes
//! (the feature's scope is then visible).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use serde::Serialize;

use crate::vmm::stats::{accumulate, ExitStats};

use crate::backend::wiring::model_inputs;
use crate::backend::Backend;
use crate::commands::probe::guest_reading;
use crate::features::model::{MsrModel, RuleModel};
use crate::features::{Announce, FeatureSpec};
use crate::guests::bare::run::{run_bare, BareRequest};
use crate::guests::bare::MsrOp;
use crate::host::HostSources;
use crate::vmm::error::{Limits, VmmError};
use crate::x86::cpuid::CpuVendor;
use msr_probe::{Catalog, Fault, MsrIndex, Reading};

/// The most states a walk visits (a feature with more is explored that far, and says so).
mod output;

use output::scenario_text;

pub const MAX_STATES: usize = 64;

/// One guest access of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    /// The vCPU.
    pub cpu: u8,
    /// The MSR.
    #[serde(serialize_with = "crate::json::msr_index")]
    pub msr: MsrIndex,
    /// The value written, or `None` for a read.
    #[serde(serialize_with = "crate::json::opt_u64_hex")]
    pub write: Option<u64>,
}

impl Access {
    fn op(&self) -> MsrOp {
        match self.write {
            Some(value) => MsrOp::Write {
                index: self.msr,
                value,
            },
            None => MsrOp::Read { index: self.msr },
        }
    }
}

/// A step whose outcome differs from the rules.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    /// What kind of difference, as feature files name it in `[[conformance]]`.
    pub key: String,
    /// The feature file's explanation, if it documents this difference.
    pub explained: Option<String>,
    /// The case, shortest first.
    pub accesses: Vec<Access>,
    /// The step that differs (index in `accesses`).
    pub at: usize,
    /// What the rules say.
    #[serde(serialize_with = "crate::json::reading")]
    pub rules: Reading,
    /// The rule that decides it (`None`: the access completes by the rules).
    pub rule: Option<String>,
    /// What the guest saw.
    #[serde(serialize_with = "crate::json::reading")]
    pub seen: Reading,
    /// The case as a scenario file that expects what the rules say.
    pub scenario: String,
}

/// What an exploration found (`kvmcap.explore/1`).
#[derive(Clone, Debug, Serialize)]
pub struct Exploration {
    /// The schema name.
    pub schema: crate::report::document::ExploreV1,
    /// The feature.
    pub feature: String,
    /// The backend.
    pub backend: Backend,
    /// The pairs the guest's CPUID announced.
    pub pair: String,
    /// vCPUs.
    pub vcpus: u8,
    /// States reached by guest writes (register values, in file order).
    #[serde(serialize_with = "crate::json::rows_u64_hex")]
    pub states: Vec<Vec<u64>>,
    /// Whether the walk stopped at [`MAX_STATES`].
    pub truncated: bool,
    /// Cases run.
    pub cases: usize,
    /// Guest accesses checked.
    pub checked: usize,
    /// Every step that differs, shortest case first, one per (probe, state).
    pub differences: Vec<Difference>,
    /// Per vCPU, over every case's VM: exits by reason, time in `KVM_RUN` and in the VMM.
    pub stats: Vec<ExitStats>,
    /// Wall time of the whole walk, milliseconds.
    pub elapsed_ms: f64,
    /// Whether every difference is explained (and something was checked).
    pub pass: bool,
}

/// The write classes for a register: 0, all-ones, each combination of its writable fields
/// (single-bit fields; a wider field takes 0 and its maximum), each reserved bit group's
/// lowest and highest bit, and the lowest reserved bit with every writable bit (a handler
/// that checks only the valid bits, or only one of them, lets that through).
pub fn write_classes(reg: &crate::features::Register) -> Vec<u64> {
    let mut v = vec![0, u64::MAX];
    let fields: Vec<u64> = reg
        .fields
        .iter()
        .map(|(_, b)| b.mask())
        .filter(|m| m & reg.writable != 0)
        .take(6)
        .collect();
    for combo in 0u64..(1 << fields.len()) {
        let value = fields
            .iter()
            .enumerate()
            .filter(|(i, _)| combo & (1 << i) != 0)
            .fold(0, |acc, (_, m)| acc | m);
        v.push(value);
    }
    if reg.writable == u64::MAX {
        v.push(1);
    } else {
        let reserved = !reg.writable;
        v.push(1 << reserved.trailing_zeros());
        v.push(1 << (63 - reserved.leading_zeros()));
        v.push((1 << reserved.trailing_zeros()) | reg.writable);
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Every MSR of each register, as `(register, MSR)`: its own MSR, or for a pair role the
/// role's MSR in every pair, announced ones first (the others must #GP: the CPUID gate).
fn register_msrs(spec: &FeatureSpec, announced: &[CpuVendor]) -> Vec<(usize, MsrIndex)> {
    let mut pairs: Vec<_> = spec.pairs.iter().collect();
    pairs.sort_by_key(|p| !announced.contains(&p.vendor));
    let mut out = Vec::new();
    for (i, r) in spec.registers.iter().enumerate() {
        match (&r.msr, r.name.as_str()) {
            (Some(m), _) => out.push((i, *m)),
            (None, "ctl") => out.extend(pairs.iter().map(|p| (i, p.ctl))),
            (None, "value") => out.extend(pairs.iter().map(|p| (i, p.value))),
            _ => {}
        }
    }
    out
}

/// The rules' view of a VM: one model for a VM-scoped feature, one per vCPU otherwise.
struct Oracle {
    models: Vec<RuleModel>,
    shared: bool,
}

impl Oracle {
    fn new(fresh: &RuleModel, scope: crate::features::Scope) -> Self {
        Self {
            models: vec![fresh.clone(), fresh.clone()],
            shared: scope == crate::features::Scope::Vm,
        }
    }

    fn of(&mut self, cpu: u8) -> &mut RuleModel {
        let i = if self.shared {
            0
        } else {
            usize::from(cpu.min(1))
        };
        &mut self.models[i]
    }
}

fn model_register(spec: &FeatureSpec, msr: MsrIndex) -> String {
    if let Some(r) = spec.registers.iter().find(|r| r.msr == Some(msr)) {
        return r.name.clone();
    }
    match spec.pairs.iter().find(|p| p.ctl == msr || p.value == msr) {
        Some(p) if p.ctl == msr => "ctl".into(),
        Some(_) => "value".into(),
        None => msr.to_string(),
    }
}

fn outcome_of(model: &mut dyn MsrModel, a: &Access) -> Reading {
    let r = match a.write {
        Some(v) => model.write(a.msr, v).map(|()| v),
        None => model.read(a.msr),
    };
    r.map_or(Reading::Fault(Fault::Gp), Reading::Value)
}

/// A request to explore.
pub struct ExploreRequest<'a> {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// The feature.
    pub feature: &'a FeatureSpec,
    /// The backend.
    pub backend: Backend,
    /// 1, or 2 to run probes on a second vCPU too.
    pub vcpus: u8,
    /// Which pairs the guest's CPUID announces.
    pub announce: Announce,
    /// Host values (the PPIN the VMM supplies).
    pub host: &'a HostSources,
    /// Limits for each case's VM.
    pub limits: Limits,
    /// Which KVM this is, for `[[conformance]]` entries (`lab` or `host`).
    pub kvm_label: String,
}

/// Walks the rules' states and runs every case against the backend.
pub fn explore(req: &ExploreRequest<'_>, catalog: &Catalog) -> Result<Exploration, VmmError> {
    let began = std::time::Instant::now();
    let spec = req.feature;
    let vendor = crate::commands::scenario::guest_vendor(&req.kvm_path)?;
    let args = spec.capability.args;
    let inputs = model_inputs(spec, req.backend, vendor, req.announce, req.host, args, &[])?;
    let visible = register_msrs(spec, &inputs.announced);
    let fresh = || -> Result<RuleModel, VmmError> {
        let mut m = RuleModel::new(spec.clone(), &inputs.announced, inputs.enabled);
        for (msr, value) in &inputs.writes {
            if m.handles(*msr) {
                m.restore(*msr, *value).map_err(|reason| {
                    VmmError::Initial(crate::features::model::InitialRefused {
                        msr: *msr,
                        value: *value,
                        reason: Some(reason),
                    })
                })?;
            }
        }
        Ok(m)
    };
    // Breadth first over the states guest writes reach: the path to each is the shortest.
    let start = fresh()?;
    let mut paths: BTreeMap<Vec<u64>, Vec<Access>> = BTreeMap::new();
    let mut order: Vec<Vec<u64>> = Vec::new();
    let mut queue = VecDeque::from([(start.values().to_vec(), Vec::<Access>::new())]);
    let mut truncated = false;
    while let Some((state, path)) = queue.pop_front() {
        if paths.contains_key(&state) {
            continue;
        }
        if paths.len() == MAX_STATES {
            truncated = true;
            break;
        }
        paths.insert(state.clone(), path.clone());
        order.push(state.clone());
        for &(reg, msr) in &visible {
            for value in write_classes(&spec.registers[reg]) {
                let mut m = fresh()?;
                for a in &path {
                    let _ = outcome_of(&mut m, a);
                }
                if m.write(msr, value).is_ok() && m.values() != state.as_slice() {
                    let mut p = path.clone();
                    p.push(Access {
                        cpu: 0,
                        msr,
                        write: Some(value),
                    });
                    queue.push_back((m.values().to_vec(), p));
                }
            }
        }
    }
    // The probes: every write class to every register, and every read.
    let mut probes: Vec<(MsrIndex, Option<u64>)> = Vec::new();
    for &(reg, msr) in &visible {
        probes.push((msr, None));
        for value in write_classes(&spec.registers[reg]) {
            probes.push((msr, Some(value)));
        }
    }
    let probe_cpus: Vec<u8> = if req.vcpus >= 2 { vec![0, 1] } else { vec![0] };
    let mut cases = 0;
    let mut checked = 0;
    let mut stats = Vec::new();
    let mut differences = Vec::new();
    for state in &order {
        let path = &paths[state];
        for &(msr, write) in &probes {
            for &cpu in &probe_cpus {
                let mut accesses = path.clone();
                accesses.push(Access { cpu, msr, write });
                for &(_, m) in &visible {
                    accesses.push(Access {
                        cpu,
                        msr: m,
                        write: None,
                    });
                    if cpu != 0 {
                        accesses.push(Access {
                            cpu: 0,
                            msr: m,
                            write: None,
                        });
                    }
                }
                let seen = run_case(req, &accesses, &mut stats)?;
                cases += 1;
                let mut oracle = Oracle::new(&fresh()?, spec.scope);
                for (i, a) in accesses.iter().enumerate() {
                    let model = oracle.of(a.cpu);
                    let rule = model.fault_rule(a.msr, a.write);
                    let want = outcome_of(model, a);
                    checked += 1;
                    if seen[i] != want {
                        let reg = model_register(spec, a.msr);
                        let key = match (&rule, &want, a.write) {
                            (Some(r), Reading::Fault(_), _) if r != "absent" => r.clone(),
                            (Some(_), _, _) => format!("absent:{reg}"),
                            (None, _, Some(_)) => format!("completes:{reg}"),
                            (None, _, None) => format!("value:{reg}"),
                        };
                        let explained = spec
                            .conformance
                            .iter()
                            .find(|c| {
                                c.difference == key && (c.kvm == "any" || c.kvm == req.kvm_label)
                            })
                            .map(|c| c.explains.clone());
                        differences.push(Difference {
                            key,
                            explained,
                            scenario: scenario_text(spec, req, &accesses, i, catalog, &fresh()?),
                            accesses: accesses.clone(),
                            at: i,
                            rules: want,
                            rule,
                            seen: seen[i].clone(),
                        });
                        break;
                    }
                }
            }
        }
    }
    differences.sort_by_key(|d| d.accesses.len());
    // A walk that checked nothing proves nothing.
    let pass = differences.iter().all(|d| d.explained.is_some()) && checked > 0;
    Ok(Exploration {
        schema: crate::report::document::ExploreV1,
        elapsed_ms: began.elapsed().as_secs_f64() * 1000.0,
        feature: spec.name.clone(),
        backend: req.backend,
        pair: req.announce.label(vendor).to_owned(),
        vcpus: req.vcpus,
        states: order,
        truncated,
        cases,
        checked,
        differences,
        stats,
        pass,
    })
}

/// Runs one case in its own VM and returns what the guest saw for each access, in order.
/// Adds the VM's exit accounting to `stats`, vCPU by vCPU.
fn run_case(
    req: &ExploreRequest<'_>,
    accesses: &[Access],
    stats: &mut Vec<ExitStats>,
) -> Result<Vec<Reading>, VmmError> {
    let vcpus = accesses.iter().map(|a| a.cpu).max().unwrap_or(0) + 1;
    let mut per_cpu: Vec<Vec<MsrOp>> = vec![Vec::new(); usize::from(vcpus)];
    let mut at = Vec::with_capacity(accesses.len());
    let sequenced = vcpus > 1;
    let mut turn = 0u32;
    let mut current: Option<u8> = None;
    for a in accesses {
        if sequenced && current != Some(a.cpu) {
            if let Some(prev) = current {
                turn += 1;
                per_cpu[usize::from(prev)].push(MsrOp::Pass(turn));
            }
            per_cpu[usize::from(a.cpu)].push(MsrOp::Wait(turn));
            current = Some(a.cpu);
        }
        at.push((a.cpu, per_cpu[usize::from(a.cpu)].len()));
        per_cpu[usize::from(a.cpu)].push(a.op());
    }
    let outcome = run_bare(&BareRequest {
        kvm_path: req.kvm_path.clone(),
        feature: Some(req.feature),
        backend: req.backend,
        ops: per_cpu,
        host: req.host,
        cap_args: None,
        initial: Vec::new(),
        announce: req.announce,
        limits: req.limits,
        irqchip: false,
        timed: false,
    })?;
    accumulate(stats, &outcome.stats);
    Ok(accesses
        .iter()
        .zip(at)
        .map(|(a, (cpu, i))| guest_reading(&outcome, usize::from(cpu), i, &a.op()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppin_ctl_write_classes_cover_fields_and_reserved_bits() {
        let spec = FeatureSpec::find("ppin", &Catalog::builtin().unwrap()).unwrap();
        let ctl = spec.register("ctl").unwrap();
        assert_eq!(
            write_classes(ctl),
            vec![0, 1, 2, 3, 4, 7, 1 << 63, u64::MAX]
        );
        let value = spec.register("value").unwrap();
        assert_eq!(write_classes(value), vec![0, 1, u64::MAX]);
    }

    #[test]
    fn the_generated_scenario_parses_and_expects_the_rules() {
        let catalog = Catalog::builtin().unwrap();
        let spec = FeatureSpec::find("ppin", &catalog).unwrap();
        let host = HostSources::default()
            .with_explicit(&["MSR_AMD_PPIN=0x1122".into()], &catalog)
            .unwrap();
        let req = ExploreRequest {
            kvm_path: "/dev/kvm".into(),
            feature: &spec,
            backend: Backend::User,
            vcpus: 2,
            announce: Announce::Amd,
            host: &host,
            limits: Limits::default(),
            kvm_label: "host".into(),
        };
        let inputs = model_inputs(
            &spec,
            Backend::User,
            CpuVendor::Amd,
            Announce::Amd,
            &host,
            spec.capability.args,
            &[],
        )
        .unwrap();
        let fresh = RuleModel::new(spec.clone(), &inputs.announced, true);
        let ctl = MsrIndex::new(0xc00102f0);
        let accesses = [
            Access {
                cpu: 0,
                msr: ctl,
                write: Some(0b10),
            },
            Access {
                cpu: 1,
                msr: ctl,
                write: Some(0b11),
            },
        ];
        let text = scenario_text(&spec, &req, &accesses, 1, &catalog, &fresh);
        let s = crate::commands::scenario::Scenario::parse(&text, "generated", &catalog).unwrap();
        assert_eq!(s.cases[0].rules, vec!["ctl-lockout-needs-enable-clear"]);
        assert!(text.contains("value = 0x3, expect = \"gp\""), "{text}");
    }
}
