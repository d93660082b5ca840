//! Running a scenario: each case's steps placed on vCPUs, run on the bare guest, and judged
//! against the feature model fed the same steps in the same order.

use std::path::Path;

use super::*;
use crate::backend::wiring::model_inputs;
use crate::backend::Backend;
use crate::commands::probe::guest_reading;
use crate::features::model::build_model;
use crate::features::{Announce, Scope};
use crate::guests::bare::run::{run_bare, BareRequest};
use crate::guests::bare::MsrOp;
use crate::host::HostSources;
use crate::kvm::KvmSystem;
use crate::vmm::error::{Limits, VmmError};
use crate::vmm::vcpu::VcpuEnd;
use crate::x86::cpuid::{self, CpuVendor};
use msr_probe::{Catalog, Fault, MsrIndex, Reading};

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
        let start = std::time::Instant::now();
        let mut result = run_case(
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
        )?;
        result.elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
        cases.push(result);
    }
    // A run whose every case was skipped checked nothing: not a pass.
    let pass = cases.iter().all(|c| c.pass) && cases.iter().any(|c| c.skipped.is_none());
    Ok(ScenarioReport {
        schema: crate::report::document::ScenarioV1,
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
            stats: Vec::new(),
            expect_end: case.expect_end.clone(),
            steps: Vec::new(),
            elapsed_ms: 0.0,
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
                "feature {} has no MSR pair for an {vendor} guest: choose one with --pair intel|amd",
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
            stats: Vec::new(),
            expect_end: case.expect_end.clone(),
            steps: Vec::new(),
            elapsed_ms: 0.0,
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
    let base = match &outcome.oracle {
        Some(o) => Some(o.fresh()),
        None => build_model(f, &inputs).ok(),
    };
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
        stats: outcome.stats,
        expect_end: case.expect_end.clone(),
        steps,
        elapsed_ms: 0.0,
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
