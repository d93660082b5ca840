//! Feature models: the semantics of a feature's MSRs, run in userspace.
//!
//! The `user` backend serves guest MSR exits from these models, and the same models predict
//! what the guest must see with every backend. The rules each model implements are the
//! feature file's `[[rule]]`s, each tied to the manual sentence it rests on; the scenarios
//! name the rule every case checks.

use std::sync::{Arc, Mutex};

use crate::features::{FeatureSpec, PpinPair, RuleKind, Scope};
use crate::x86::cpuid::CpuVendor;
use msr_probe::{Fault, MsrIndex};

/// A feature's MSR semantics. A model holds the state of one scope: a vCPU's (each vCPU gets
/// its own copy) or the VM's (every vCPU shares one, as [`SharedModel`]).
pub trait MsrModel: Send {
    /// A copy in the same state.
    fn boxed_clone(&self) -> Box<dyn MsrModel>;
    /// Whether the model serves `index` (it is one of the feature's MSRs).
    fn handles(&self, index: MsrIndex) -> bool;
    /// A guest `rdmsr`.
    fn read(&mut self, index: MsrIndex) -> Result<u64, Fault>;
    /// A guest `wrmsr`.
    fn write(&mut self, index: MsrIndex, value: u64) -> Result<(), Fault>;
    /// A host-initiated write (`KVM_SET_MSRS`): no guest rules, only what KVM refuses from
    /// the host too. `Err` says why it is refused.
    fn restore(&mut self, index: MsrIndex, value: u64) -> Result<(), String>;
}

/// A model as the vCPUs use it: one per vCPU for vCPU-scoped features, one shared by every
/// vCPU for VM-scoped ones (PPIN: one PPIN_CTL per package, and a VM is one package).
pub type SharedModel = Arc<Mutex<Box<dyn MsrModel>>>;

/// Runs `f` on the model behind `shared` (a poisoned lock still holds a usable model: the
/// models never panic mid-update).
pub fn with_model<T>(shared: &SharedModel, f: impl FnOnce(&mut dyn MsrModel) -> T) -> T {
    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.as_mut())
}

/// The handle vCPU `_cpu` uses: the same model for a VM-scoped feature, a copy otherwise.
pub fn model_for_vcpu(shared: &SharedModel, scope: Scope) -> SharedModel {
    match scope {
        Scope::Vm => Arc::clone(shared),
        Scope::Vcpu => Arc::new(Mutex::new(with_model(shared, |m| m.boxed_clone()))),
    }
}

/// Any feature, as its file states it: its registers and its rules, interpreted (see
/// [`crate::features::rules`]). Registers that are pair roles (`ctl`, `value`) are seen through every
/// pair the guest's CPUID announces (the pairs alias one state); a pair not announced, or any
/// pair while the feature is off, #GPs. Registers with an MSR of their own are always there;
/// their rules say when they fault.
#[derive(Clone, Debug)]
pub struct RuleModel {
    spec: std::sync::Arc<FeatureSpec>,
    announced: Vec<bool>,
    enabled: bool,
    values: Vec<u64>,
}

impl RuleModel {
    /// The model at RESET: every register at its reset value.
    pub fn new(spec: FeatureSpec, announced: &[CpuVendor], enabled: bool) -> Self {
        let announced = spec
            .pairs
            .iter()
            .map(|p| enabled && announced.contains(&p.vendor))
            .collect();
        let values = spec.registers.iter().map(|r| r.reset).collect();
        Self {
            spec: std::sync::Arc::new(spec),
            announced,
            enabled,
            values,
        }
    }

    /// The register `index` reaches, and whether the guest can reach it.
    fn locate(&self, index: MsrIndex) -> Option<(usize, bool)> {
        let regs = &self.spec.registers;
        if let Some(i) = regs.iter().position(|r| r.msr == Some(index)) {
            return Some((i, true));
        }
        let (p, pair) = self
            .spec
            .pairs
            .iter()
            .enumerate()
            .find(|(_, p)| p.ctl == index || p.value == index)?;
        let role = if pair.ctl == index { "ctl" } else { "value" };
        let i = regs.iter().position(|r| r.name == role)?;
        Some((i, self.announced[p]))
    }

    fn lookup(&self, reg: usize, new: u64, name: &str) -> Option<u64> {
        let regs = &self.spec.registers;
        let field_of = |r: usize, field: &str, v: u64| regs[r].field(field).map(|b| b.extract(v));
        match name.split_once('.') {
            None => match name {
                "new" => Some(new),
                "old" => Some(self.values[reg]),
                "enabled" => Some(u64::from(self.enabled)),
                other => regs
                    .iter()
                    .position(|r| r.name == other)
                    .map(|r| self.values[r]),
            },
            Some(("new", f)) => field_of(reg, f, new),
            Some(("old", f)) => field_of(reg, f, self.values[reg]),
            Some((r, "writable")) => regs.iter().find(|g| g.name == r).map(|g| g.writable),
            Some((r, f)) => {
                let i = regs.iter().position(|g| g.name == r)?;
                field_of(i, f, self.values[i])
            }
        }
    }

    /// The first rule of `kind` about register `reg` whose condition holds.
    fn fired(&self, kind: RuleKind, reg: usize, new: u64) -> Option<&str> {
        let name = &self.spec.registers[reg].name;
        self.spec
            .rules
            .iter()
            .filter(|r| r.kind == kind && r.register.as_deref() == Some(name.as_str()))
            .find(|r| {
                r.condition
                    .as_ref()
                    .is_none_or(|c| c.eval(&|n| self.lookup(reg, new, n)) != 0)
            })
            .map(|r| r.id.as_str())
    }

    /// The rule that makes a guest access fault now: `Err(None)` when the MSR does not exist
    /// for the guest, `Err(Some(rule))` when a rule fires, else the register.
    fn guest(&self, index: MsrIndex, kind: RuleKind, new: u64) -> Result<usize, Option<&str>> {
        match self.locate(index) {
            Some((reg, true)) => match self.fired(kind, reg, new) {
                Some(rule) => Err(Some(rule)),
                None => Ok(reg),
            },
            _ => Err(None),
        }
    }

    /// Which rule a guest access would fault on now (`"absent"`: the MSR does not exist for
    /// this guest), or `None` if it completes: for reports that name the rule.
    pub fn fault_rule(&self, index: MsrIndex, write: Option<u64>) -> Option<String> {
        let kind = if write.is_some() {
            RuleKind::WriteGp
        } else {
            RuleKind::ReadGp
        };
        match self.guest(index, kind, write.unwrap_or(0)) {
            Ok(_) => None,
            Err(None) => Some("absent".into()),
            Err(Some(r)) => Some(r.to_owned()),
        }
    }

    /// Every register's value, in file order.
    pub fn values(&self) -> &[u64] {
        &self.values
    }
}

impl MsrModel for RuleModel {
    fn boxed_clone(&self) -> Box<dyn MsrModel> {
        Box::new(self.clone())
    }

    fn handles(&self, index: MsrIndex) -> bool {
        self.locate(index).is_some()
    }

    fn read(&mut self, index: MsrIndex) -> Result<u64, Fault> {
        let reg = self
            .guest(index, RuleKind::ReadGp, 0)
            .map_err(|_| Fault::Gp)?;
        Ok(self.values[reg])
    }

    fn write(&mut self, index: MsrIndex, value: u64) -> Result<(), Fault> {
        let reg = self
            .guest(index, RuleKind::WriteGp, value)
            .map_err(|_| Fault::Gp)?;
        self.values[reg] = value;
        Ok(())
    }

    fn restore(&mut self, index: MsrIndex, value: u64) -> Result<(), String> {
        let Some((reg, _)) = self.locate(index) else {
            return Err(format!("{index} is not one of the feature's MSRs"));
        };
        let pair_role = self.spec.registers[reg].msr.is_none();
        if pair_role && !self.enabled {
            // KVM's generic path for an MSR the VM does not have: only 0 from the host.
            return if value == 0 {
                Ok(())
            } else {
                Err(format!(
                    "the feature is off: {index} accepts only 0 from the host"
                ))
            };
        }
        if let Some(rule) = self.fired(RuleKind::HostRefuse, reg, value) {
            return Err(format!("{value:#x} refused (rule {rule})"));
        }
        self.values[reg] = value;
        Ok(())
    }
}

/// What the VMM establishes before the guest runs, the same for every backend: which pairs
/// the guest's CPUID announces, whether the feature is on, and the host-initiated MSR writes
/// in the order they are made (`KVM_SET_MSRS` for `kernel` and `none`, the model for `user`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInputs {
    /// The vendors whose PPIN pair the guest's CPUID announces (model ppin).
    pub announced: Vec<CpuVendor>,
    /// Whether the feature is on (backend user/kernel with enabling arguments).
    pub enabled: bool,
    /// Host-initiated writes, in order.
    pub writes: Vec<(MsrIndex, u64)>,
}

/// A host-initiated write of the initial state was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the initial state cannot be set: KVM_SET_MSRS {msr} = {value:#x} refused")]
pub struct InitialRefused {
    /// The MSR.
    pub msr: MsrIndex,
    /// The value.
    pub value: u64,
    /// Why, where the refusing side says (the model does, KVM does not).
    pub reason: Option<String>,
}

/// Builds the feature's model at RESET and applies the host-initiated writes it serves, in
/// order: the state the VMM establishes before the guest runs.
pub fn build_model(
    spec: &FeatureSpec,
    inputs: &ModelInputs,
) -> Result<Box<dyn MsrModel>, InitialRefused> {
    let mut model: Box<dyn MsrModel> = Box::new(RuleModel::new(
        spec.clone(),
        &inputs.announced,
        inputs.enabled,
    ));
    for (msr, value) in &inputs.writes {
        if model.handles(*msr) {
            model
                .restore(*msr, *value)
                .map_err(|reason| InitialRefused {
                    msr: *msr,
                    value: *value,
                    reason: Some(reason),
                })?;
        }
    }
    Ok(model)
}

/// [`build_model`] as the vCPUs share it.
pub fn build_shared(
    spec: &FeatureSpec,
    inputs: &ModelInputs,
) -> Result<SharedModel, InitialRefused> {
    Ok(Arc::new(Mutex::new(build_model(spec, inputs)?)))
}

/// A run's feature model in its starting state, built once (by the VMM, when it sets the VM
/// up): the `user` backend serves a copy, and every oracle that judges the run is a copy.
pub struct Oracle(Box<dyn MsrModel>);

impl Oracle {
    /// Builds the model for `spec` in the state `inputs` establish.
    pub fn build(spec: &FeatureSpec, inputs: &ModelInputs) -> Result<Self, InitialRefused> {
        build_model(spec, inputs).map(Self)
    }

    /// A fresh copy in the starting state.
    pub fn fresh(&self) -> Box<dyn MsrModel> {
        self.0.boxed_clone()
    }

    /// A fresh copy for the vCPUs to share.
    pub fn shared(&self) -> SharedModel {
        Arc::new(Mutex::new(self.fresh()))
    }
}

impl std::fmt::Debug for Oracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Oracle")
    }
}

/// What the guest kernel's `ppin_init()` (arch/x86/kernel/cpu/common.c) does on a CPU whose
/// CPUID announces `pair`: read PPIN_CTL; give up if it faults or is locked and disabled;
/// set Enable if clear and re-read; if enabled, read PPIN. Returns the PPIN the kernel then
/// shows in `topology/ppin` (the kernel hides a zero PPIN), leaving the model in the state the
/// kernel left it.
pub fn simulate_ppin_init(model: &mut dyn MsrModel, pair: &PpinPair) -> Option<u64> {
    let mut ctl = model.read(pair.ctl).ok()?;
    if ctl & (pair.lockout | pair.enable) == pair.lockout {
        return None;
    }
    if ctl & pair.enable == 0 {
        let _ = model.write(pair.ctl, ctl | pair.enable);
        ctl = model.read(pair.ctl).ok()?;
    }
    if ctl & pair.enable == 0 {
        return None;
    }
    model.read(pair.value).ok().filter(|v| *v != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::Catalog;

    const CTL: MsrIndex = MsrIndex::new(0xc00102f0);
    const PPIN: MsrIndex = MsrIndex::new(0xc00102f1);
    const ICTL: MsrIndex = MsrIndex::new(0x4e);
    const IPPIN: MsrIndex = MsrIndex::new(0x4f);

    fn spec() -> FeatureSpec {
        FeatureSpec::find("ppin", &Catalog::builtin().unwrap()).unwrap()
    }

    fn model_with(announced: &[CpuVendor], ctl: u64) -> Box<dyn MsrModel> {
        build_model(
            &spec(),
            &ModelInputs {
                announced: announced.to_vec(),
                enabled: true,
                writes: vec![(PPIN, 0xabcd), (CTL, ctl)],
            },
        )
        .unwrap()
    }

    fn model(ctl: u64) -> Box<dyn MsrModel> {
        model_with(&[CpuVendor::Amd], ctl)
    }

    #[test]
    fn lockout_only_with_enable_clear_and_final() {
        // 00 -> 01 and 10 -> 01 lock PPIN off; 11b #GPs from every unlocked state.
        for start in [0b00, 0b10] {
            let mut m = model(start);
            assert_eq!(m.write(CTL, 0b11), Err(Fault::Gp), "11b from {start:#b}");
            assert_eq!(m.read(CTL), Ok(start));
            assert_eq!(m.write(CTL, 0b01), Ok(()), "01b from {start:#b}");
            assert_eq!(m.read(PPIN), Err(Fault::Gp));
            // Every write after LockOut #GPs, the same value included.
            for v in [0b00, 0b01, 0b10, 0b11, 0b100] {
                assert_eq!(m.write(CTL, v), Err(Fault::Gp), "{v:#b} after LockOut");
            }
            assert_eq!(m.read(CTL), Ok(0b01));
        }
    }

    #[test]
    fn enable_gates_ppin_and_ppin_is_read_only() {
        let mut m = model(0b00);
        assert_eq!(m.read(PPIN), Err(Fault::Gp));
        assert_eq!(m.write(CTL, 0b10), Ok(()));
        assert_eq!(m.read(PPIN), Ok(0xabcd));
        assert_eq!(m.write(CTL, 0b00), Ok(()));
        assert_eq!(m.read(PPIN), Err(Fault::Gp));
        for v in [0b100, 1 << 63, u64::MAX] {
            assert_eq!(m.write(CTL, v), Err(Fault::Gp), "reserved {v:#x}");
        }
        for ctl in [0b00, 0b01, 0b10] {
            assert_eq!(model(ctl).write(PPIN, 1), Err(Fault::Gp));
        }
    }

    #[test]
    fn pairs_alias_one_state_and_unannounced_pairs_fault() {
        let mut m = model(0b10);
        assert_eq!(m.read(ICTL), Err(Fault::Gp));
        assert_eq!(m.read(IPPIN), Err(Fault::Gp));
        let mut both = model_with(&[CpuVendor::Intel, CpuVendor::Amd], 0b10);
        assert_eq!(both.write(ICTL, 0b01), Ok(()));
        assert_eq!(both.read(CTL), Ok(0b01));
        assert_eq!(both.write(CTL, 0b00), Err(Fault::Gp));
        assert_eq!(both.restore(IPPIN, 7), Ok(()));
        assert_eq!(both.read(PPIN), Err(Fault::Gp));
    }

    #[test]
    fn host_writes_refuse_what_hardware_cannot_reach() {
        let mut m = model(0b01);
        assert!(m.restore(CTL, 0b100).is_err());
        assert!(m.restore(CTL, 0b11).is_err());
        assert_eq!(m.restore(CTL, 0b10), Ok(()), "host writes ignore LockOut");
        assert_eq!(m.restore(PPIN, 7), Ok(()));
        assert_eq!(m.read(PPIN), Ok(7));
        let err = build_model(
            &spec(),
            &ModelInputs {
                announced: vec![CpuVendor::Amd],
                enabled: true,
                writes: vec![(CTL, 0b11)],
            },
        )
        .err()
        .unwrap();
        assert_eq!((err.msr, err.value), (CTL, 0b11));
        // Off: the host may write only 0, as KVM's generic path allows.
        let off = ModelInputs {
            announced: vec![],
            enabled: false,
            writes: vec![(CTL, 0b10)],
        };
        assert!(build_model(&spec(), &off).is_err());
    }

    #[test]
    fn vm_scope_shares_one_state() {
        let shared = build_shared(
            &spec(),
            &ModelInputs {
                announced: vec![CpuVendor::Amd],
                enabled: true,
                writes: vec![(CTL, 0b10)],
            },
        )
        .unwrap();
        let a = model_for_vcpu(&shared, Scope::Vm);
        let b = model_for_vcpu(&shared, Scope::Vm);
        assert_eq!(with_model(&a, |m| m.write(CTL, 0b01)), Ok(()));
        assert_eq!(with_model(&b, |m| m.write(CTL, 0b10)), Err(Fault::Gp));
        let c = model_for_vcpu(&shared, Scope::Vcpu);
        assert_eq!(with_model(&c, |m| m.read(CTL)), Ok(0b01));
    }

    #[test]
    fn ppin_init_enables_a_disabled_unlocked_ppin_and_respects_lockout() {
        let spec = spec();
        let pair = spec.pair_for(CpuVendor::Amd).unwrap().clone();
        let run = |ctl: u64, enabled: bool| {
            let mut m = build_model(
                &spec,
                &ModelInputs {
                    announced: vec![CpuVendor::Amd],
                    enabled,
                    writes: if enabled {
                        vec![(pair.value, 0x77), (pair.ctl, ctl)]
                    } else {
                        vec![]
                    },
                },
            )
            .unwrap();
            let seen = simulate_ppin_init(m.as_mut(), &pair);
            (seen, m.read(pair.ctl).ok())
        };
        assert_eq!(run(0b00, true), (Some(0x77), Some(0b10)));
        assert_eq!(run(0b10, true), (Some(0x77), Some(0b10)));
        assert_eq!(run(0b01, true), (None, Some(0b01)));
        assert_eq!(run(0b10, false), (None, None));
    }
}
