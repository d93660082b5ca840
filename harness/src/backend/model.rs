//! Feature models: the semantics of a feature's MSRs, run in userspace.
//!
//! The `user` backend serves guest MSR exits from these models, and the same models predict
//! what the guest must see with every backend: the userspace model is the oracle for the kernel
//! patch (design.md).

use crate::feature::{FeatureSpec, ModelKind, PpinPair};
use crate::vmm::cpuid::CpuVendor;
use msr_probe::{Fault, MsrIndex};

/// A feature's MSR semantics for one vCPU. Like KVM, kvmcap keeps MSR state per vCPU; the VMM
/// starts every vCPU in the same state, so a guest sees one PPIN on all of them.
pub trait MsrModel: Send {
    /// A copy in the same state (one per vCPU).
    fn boxed_clone(&self) -> Box<dyn MsrModel>;
    /// Whether the model serves `index` (it is one of the feature's MSRs).
    fn handles(&self, index: MsrIndex) -> bool;
    /// A guest `rdmsr`.
    fn read(&mut self, index: MsrIndex) -> Result<u64, Fault>;
    /// A guest `wrmsr`.
    fn write(&mut self, index: MsrIndex, value: u64) -> Result<(), Fault>;
    /// A host-initiated write (KVM_SET_MSRS-style restore): no guest rules, only validation.
    fn restore(&mut self, index: MsrIndex, value: u64) -> Result<(), String>;
}

/// PPIN per design.md: a PPIN_CTL and a value, seen through the pair the guest's CPUID
/// announces; pairs not announced raise #GP.
#[derive(Clone, Debug)]
pub struct PpinModel {
    pairs: Vec<(PpinPair, bool)>,
    ctl: u64,
    value: u64,
}

impl PpinModel {
    /// A model in which `announced` says, per pair, whether its CPUID bit is set.
    pub fn new(pairs: Vec<(PpinPair, bool)>, ctl: u64, value: u64) -> Self {
        Self { pairs, ctl, value }
    }

    fn pair(&self, index: MsrIndex) -> Option<&(PpinPair, bool)> {
        self.pairs
            .iter()
            .find(|(p, _)| p.ctl == index || p.value == index)
    }
}

impl MsrModel for PpinModel {
    fn boxed_clone(&self) -> Box<dyn MsrModel> {
        Box::new(self.clone())
    }

    fn handles(&self, index: MsrIndex) -> bool {
        self.pair(index).is_some()
    }

    fn read(&mut self, index: MsrIndex) -> Result<u64, Fault> {
        match self.pair(index) {
            Some((p, true)) if p.ctl == index => Ok(self.ctl),
            Some((p, true)) if self.ctl & p.enable != 0 => Ok(self.value),
            _ => Err(Fault::Gp),
        }
    }

    fn write(&mut self, index: MsrIndex, value: u64) -> Result<(), Fault> {
        match self.pair(index) {
            Some((p, true)) if p.ctl == index => {
                let reserved = !(p.lockout | p.enable);
                if value & reserved != 0 || self.ctl & p.lockout != 0 {
                    return Err(Fault::Gp);
                }
                self.ctl = value;
                Ok(())
            }
            // PPIN is read-only; unannounced pairs do not exist.
            _ => Err(Fault::Gp),
        }
    }

    fn restore(&mut self, index: MsrIndex, value: u64) -> Result<(), String> {
        match self.pair(index) {
            Some((p, _)) if p.ctl == index => {
                if value & !(p.lockout | p.enable) != 0 {
                    return Err(format!("PPIN_CTL {index}: reserved bits in {value:#x}"));
                }
                self.ctl = value;
                Ok(())
            }
            Some(_) => {
                self.value = value;
                Ok(())
            }
            None => Err(format!("{index} is not a PPIN MSR")),
        }
    }
}

/// MSRs KVM serves once a capability is enabled (e.g. MSR_PLATFORM_INFO): readable with the
/// value the VMM set while enabled, #GP while disabled; guest writes #GP.
#[derive(Clone, Debug)]
pub struct KvmMsrModel {
    values: Vec<(MsrIndex, u64)>,
    enabled: bool,
}

impl KvmMsrModel {
    /// A model serving `values`, readable iff `enabled`.
    pub fn new(values: Vec<(MsrIndex, u64)>, enabled: bool) -> Self {
        Self { values, enabled }
    }
}

impl MsrModel for KvmMsrModel {
    fn boxed_clone(&self) -> Box<dyn MsrModel> {
        Box::new(self.clone())
    }

    fn handles(&self, index: MsrIndex) -> bool {
        self.values.iter().any(|(i, _)| *i == index)
    }
    fn read(&mut self, index: MsrIndex) -> Result<u64, Fault> {
        match self.values.iter().find(|(i, _)| *i == index) {
            Some((_, v)) if self.enabled => Ok(*v),
            _ => Err(Fault::Gp),
        }
    }
    fn write(&mut self, _index: MsrIndex, _value: u64) -> Result<(), Fault> {
        Err(Fault::Gp)
    }
    fn restore(&mut self, index: MsrIndex, value: u64) -> Result<(), String> {
        match self.values.iter_mut().find(|(i, _)| *i == index) {
            Some((_, v)) => {
                *v = value;
                Ok(())
            }
            None => Err(format!("{index} is not served by this model")),
        }
    }
}

/// The inputs a model needs besides the spec.
#[derive(Clone, Debug)]
pub struct ModelInputs {
    /// The guest's CPU vendor (which PPIN pair its CPUID announces).
    pub vendor: CpuVendor,
    /// Whether the feature is on (backend user/kernel) at all.
    pub enabled: bool,
    /// The enable arguments in force (kvm-msr: args[0] = 0 disables).
    pub args: [u64; 4],
    /// The PPIN value (model ppin) or per-MSR values (model kvm-msr).
    pub values: Vec<(MsrIndex, u64)>,
    /// The initial PPIN_CTL (model ppin).
    pub initial_ctl: u64,
}

/// Builds the feature's model in the state the VMM establishes before the guest runs.
pub fn build_model(spec: &FeatureSpec, inputs: &ModelInputs) -> Box<dyn MsrModel> {
    match spec.model {
        ModelKind::Ppin => {
            let value = spec
                .pairs
                .iter()
                .find_map(|p| inputs.values.iter().find(|(i, _)| *i == p.value))
                .map_or(0, |(_, v)| *v);
            let pairs = spec
                .pairs
                .iter()
                .map(|p| (p.clone(), inputs.enabled && p.vendor == inputs.vendor))
                .collect();
            Box::new(PpinModel::new(pairs, inputs.initial_ctl, value))
        }
        ModelKind::KvmMsr => {
            let values = spec
                .kvm_msrs
                .iter()
                .map(|k| {
                    let v = inputs
                        .values
                        .iter()
                        .find(|(i, _)| *i == k.msr)
                        .map_or(k.default, |(_, v)| *v);
                    (k.msr, v)
                })
                .collect();
            Box::new(KvmMsrModel::new(
                values,
                inputs.enabled && inputs.args[0] & 1 != 0,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::Catalog;

    const CTL: MsrIndex = MsrIndex::new(0xc00102f0);
    const PPIN: MsrIndex = MsrIndex::new(0xc00102f1);
    const ICTL: MsrIndex = MsrIndex::new(0x4e);
    const IPPIN: MsrIndex = MsrIndex::new(0x4f);

    fn model(ctl: u64) -> Box<dyn MsrModel> {
        let spec = FeatureSpec::find("ppin", &Catalog::builtin().unwrap()).unwrap();
        build_model(
            &spec,
            &ModelInputs {
                vendor: CpuVendor::Amd,
                enabled: true,
                args: [1, 0, 0, 0],
                values: vec![(IPPIN, 0xabcd)],
                initial_ctl: ctl,
            },
        )
    }

    #[test]
    fn ppin_ctl_states() {
        // Disabled, unlocked: PPIN #GP; enabling works, then PPIN reads.
        let mut m = model(0b00);
        assert_eq!(m.read(PPIN), Err(Fault::Gp));
        assert_eq!(m.write(CTL, 0b10), Ok(()));
        assert_eq!(m.read(PPIN), Ok(0xabcd));
        // Reserved bits #GP.
        assert_eq!(m.write(CTL, 0b110), Err(Fault::Gp));
        // Locked: every write #GP, state kept.
        assert_eq!(m.write(CTL, 0b11), Ok(()));
        assert_eq!(m.write(CTL, 0b10), Err(Fault::Gp));
        assert_eq!(m.read(CTL), Ok(0b11));
        assert_eq!(m.read(PPIN), Ok(0xabcd));
        // Locked and disabled: PPIN stays unreadable.
        let mut m = model(0b01);
        assert_eq!(m.read(PPIN), Err(Fault::Gp));
        assert_eq!(m.write(CTL, 0b10), Err(Fault::Gp));
        // PPIN is read-only in every state.
        for ctl in 0..4 {
            assert_eq!(model(ctl).write(PPIN, 1), Err(Fault::Gp));
        }
        // The other vendor's pair is not announced on an AMD guest.
        let mut m = model(0b10);
        assert_eq!(m.read(ICTL), Err(Fault::Gp));
        assert_eq!(m.read(IPPIN), Err(Fault::Gp));
        assert!(m.restore(CTL, 0x8).is_err());
        assert_eq!(m.restore(PPIN, 7), Ok(()));
        assert_eq!(m.read(PPIN), Ok(7));
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
mod ppin_init_tests {
    use super::*;
    use msr_probe::Catalog;

    #[test]
    fn ppin_init_enables_a_disabled_unlocked_ppin_and_respects_lockout() {
        let spec = FeatureSpec::find("ppin", &Catalog::builtin().unwrap()).unwrap();
        let pair = spec.pair_for(CpuVendor::Amd).unwrap().clone();
        let run = |ctl: u64, enabled: bool| {
            let mut m = build_model(
                &spec,
                &ModelInputs {
                    vendor: CpuVendor::Amd,
                    enabled,
                    args: [1, 0, 0, 0],
                    values: vec![(pair.value, 0x77)],
                    initial_ctl: ctl,
                },
            );
            let seen = simulate_ppin_init(m.as_mut(), &pair);
            (seen, m.read(pair.ctl).ok())
        };
        assert_eq!(run(0b00, true), (Some(0x77), Some(0b10)));
        assert_eq!(run(0b10, true), (Some(0x77), Some(0b10)));
        assert_eq!(run(0b01, true), (None, Some(0b01)));
        assert_eq!(run(0b11, true), (Some(0x77), Some(0b11)));
        assert_eq!(run(0b10, false), (None, None));
    }
}
