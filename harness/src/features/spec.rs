//! Feature specs: a virtualized CPU feature described as data (`fixtures/features/*.toml`):
//! the KVM capability and its enable arguments, the MSRs involved, the CPUID bits that announce
//! it, and which semantic model serves it.

use std::path::PathBuf;

use serde::Deserialize;

use crate::host::HostSources;
use crate::x86::cpuid::{CpuVendor, CpuidBit};
use msr_probe::MsrIndex;

/// What is wrong with a feature spec.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// no such feature
    #[error("unknown feature `{name}` (known: {known}; or a path to a .toml file; `kvmcap list features`)")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names known (built in and the user's).
        known: String,
    },
    /// the file cannot be read
    #[error("feature spec {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// the file does not parse
    #[error("feature spec {origin}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// The parser's message with line and column.
        message: String,
    },
    /// the file parses but says something impossible
    #[error("feature spec {origin}:{line}: {key}: {problem}")]
    Invalid {
        /// The file.
        origin: String,
        /// The line of the key.
        line: usize,
        /// The key (`rule "ctl-locked-gp".when`).
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// What a feature's starting state lacks in a particular VM.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// the guest's CPUID announces none of the feature's pairs
    #[error(
        "feature {feature} has no MSR pair for an {vendor} guest: choose one with --pair intel|amd"
    )]
    NoPair {
        /// The feature.
        feature: String,
        /// The guest's CPU vendor.
        vendor: CpuVendor,
    },
    /// nobody supplied the value the VMM must write
    #[error("feature {feature} needs a value for {msr} in the guest: give --host-value {msr}=0x..., --host-ppin (root: this host's own, from sysfs) or a host profile")]
    NoValue {
        /// The feature.
        feature: String,
        /// The MSR whose value is missing.
        msr: MsrIndex,
    },
}

/// Which semantic model serves the feature's MSRs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// PPIN_CTL/PPIN pairs (design.md's PPIN semantics).
    Ppin,
    /// MSRs KVM itself serves once the capability is enabled; the VMM sets their values.
    KvmMsr,
    /// MSRs stock KVM emulates with no capability (conformance): the VMM writes only the
    /// registers' `initial` values.
    Stock,
}

/// Which of a feature's vendor pairs the guest's CPUID announces (`--pair`). KVM gates the
/// pairs on the guest's CPUID, not the host's vendor, so one host exercises both vendors'
/// code paths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Announce {
    /// The pair of the guest's CPU vendor (Hygon takes AMD's).
    #[default]
    Vendor,
    /// Intel's pair.
    Intel,
    /// AMD's pair.
    Amd,
    /// Both pairs (they alias one state).
    Both,
}

impl Announce {
    /// The vendors whose pairs are announced on a guest of `vendor`.
    pub fn vendors(self, vendor: CpuVendor) -> Vec<CpuVendor> {
        match self {
            Self::Vendor => vec![vendor],
            Self::Intel => vec![CpuVendor::Intel],
            Self::Amd => vec![CpuVendor::Amd],
            Self::Both => vec![CpuVendor::Intel, CpuVendor::Amd],
        }
    }

    /// The name used on command lines and in reports (`vendor` shows as the vendor's pair).
    pub fn label(self, vendor: CpuVendor) -> &'static str {
        match (self, vendor) {
            (Self::Intel, _) | (Self::Vendor, CpuVendor::Intel) => "intel",
            (Self::Amd, _) | (Self::Vendor, CpuVendor::Amd) => "amd",
            (Self::Both, _) => "both",
            (Self::Vendor, CpuVendor::Other) => "none",
        }
    }
}

impl std::fmt::Display for Announce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vendor => "vendor",
            Self::Intel => "intel",
            Self::Amd => "amd",
            Self::Both => "both",
        })
    }
}

impl std::str::FromStr for Announce {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vendor" => Ok(Self::Vendor),
            "intel" => Ok(Self::Intel),
            "amd" => Ok(Self::Amd),
            "both" => Ok(Self::Both),
            _ => Err(format!(
                "unknown pair `{s}` (expected vendor, intel, amd or both)"
            )),
        }
    }
}

/// Where a feature's state lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Each vCPU has its own (KVM's per-vCPU MSRs).
    #[default]
    Vcpu,
    /// One state for the whole VM (a package-scoped MSR; a VM is one package).
    Vm,
}

/// The capability that turns the feature on in KVM.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CapSpec {
    /// Its name.
    pub name: String,
    /// Its number.
    pub number: u32,
    /// `KVM_ENABLE_CAP` arguments.
    pub args: [u64; 4],
    /// Per argument, the values `KVM_ENABLE_CAP` accepts (`None`: any). The `user` backend
    /// refuses the others as the kernel does (EINVAL), so both backends refuse alike.
    pub accepts: [Option<Vec<u64>>; 4],
    /// Whether a kernel without it is an error (otherwise: recorded and skipped).
    pub required: bool,
}

impl CapSpec {
    /// Whether the feature has no capability (stock KVM's own MSRs).
    pub fn is_none(&self) -> bool {
        self.number == 0
    }

    /// Whether `args` turn the feature on (`args[0]` non-zero, as KVM reads its boolean
    /// enable arguments).
    pub fn enables(args: &[u64; 4]) -> bool {
        args[0] != 0
    }

    /// The first argument outside what the capability accepts, as `(position, value)`.
    pub fn refused_arg(&self, args: &[u64; 4]) -> Option<(usize, u64)> {
        args.iter()
            .zip(&self.accepts)
            .enumerate()
            .find(|(_, (a, ok))| ok.as_ref().is_some_and(|ok| !ok.contains(a)))
            .map(|(i, (a, _))| (i, *a))
    }
}

/// Where a rule comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSource {
    /// The vendor pair it is the source for (absent: every pair).
    #[serde(default)]
    pub pair: Option<CpuVendor>,
    /// The document (`Intel SDM vol. 4`, `AMD PPR 55803`, a Linux file...).
    pub manual: String,
    /// The section or table.
    pub section: String,
    /// The sentence the rule rests on, quoted.
    pub sentence: String,
}

/// What a rule does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// A guest write to the register #GPs when the condition holds.
    WriteGp,
    /// A guest read of the register #GPs when the condition holds.
    ReadGp,
    /// A host-initiated write (`KVM_SET_MSRS`) is refused when the condition holds.
    HostRefuse,
    /// What the feature's structure implies (scope, pairs, reset values, CPUID gates): the
    /// engine does it without a condition; the rule names it and its source.
    #[default]
    Note,
}

/// One rule of the feature's semantics, with where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Short name, used by scenarios (`rules = ["ctl-locked-gp"]`).
    pub id: String,
    /// What the rule does.
    #[serde(default)]
    pub kind: RuleKind,
    /// The register it is about (every kind but `note`).
    #[serde(default)]
    pub register: Option<String>,
    /// The condition (absent: always); see [`crate::features::rules`].
    #[serde(default)]
    pub when: Option<String>,
    /// The parsed condition.
    #[serde(skip)]
    pub condition: Option<crate::features::rules::Expr>,
    /// What the rule says, in one line.
    pub says: String,
    /// Where the source is ambiguous: which reading was taken and why.
    #[serde(default)]
    pub reading: Option<String>,
    /// Its sources.
    pub source: Vec<RuleSource>,
}

/// A known difference between the rules and a KVM, with its explanation: what KVM does and
/// the KVM code that does it. `kvmcap explore` counts a difference with an explanation as
/// documented, not as a failure.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Conformance {
    /// The difference: a rule id (the rules say #GP, KVM completes), `completes:REGISTER`
    /// (the rules say the write completes, KVM #GPs), `value:REGISTER` (a read differs),
    /// `absent:REGISTER` (the rules say the MSR does not exist).
    pub difference: String,
    /// Which KVM: `lab` (the lab's upstream KVM), `host` (this machine's), or `any`.
    #[serde(default = "any")]
    pub kvm: String,
    /// What KVM does, citing its code.
    pub explains: String,
}

fn any() -> String {
    "any".into()
}

/// One piece of the feature's state: an MSR of its own (`msr`) or a role of its vendor pairs
/// (`ctl`, `value`: the MSR the guest's announced pair gives that role).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Register {
    /// Its name in rules.
    pub name: String,
    /// Its MSR, when it is not a pair role.
    pub msr: Option<MsrIndex>,
    /// Its value at RESET.
    pub reset: u64,
    /// What the VMM writes before the guest runs (model `stock`), if anything.
    pub initial: Option<u64>,
    /// Its fields (name, bits), from the file or the catalog.
    pub fields: Vec<(String, msr_probe::catalog::BitRange)>,
    /// The bits a write may set; the rest are reserved.
    pub writable: u64,
}

impl Register {
    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<msr_probe::catalog::BitRange> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, b)| *b)
    }
}

/// One vendor's PPIN MSR pair.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PpinPair {
    /// The vendor whose guests use this pair.
    pub vendor: CpuVendor,
    /// The control MSR.
    pub ctl: MsrIndex,
    /// The value MSR.
    pub value: MsrIndex,
    /// The CPUID bit that announces it.
    pub cpuid: CpuidBit,
    /// PPIN_CTL's LockOut bit mask (from the catalog's `LockOut` field).
    pub lockout: u64,
    /// PPIN_CTL's Enable bit mask (from the catalog's `Enable` field).
    pub enable: u64,
}

/// An MSR that KVM serves and the VMM sets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KvmMsr {
    /// The MSR.
    pub msr: MsrIndex,
    /// Its value when the host source has none.
    pub default: u64,
}

/// A validated feature spec.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FeatureSpec {
    /// Short name (`ppin`).
    pub name: String,
    /// One line.
    pub description: String,
    /// The semantic model.
    pub model: ModelKind,
    /// Where its state lives.
    pub scope: Scope,
    /// Its rules, each with its source.
    pub rules: Vec<Rule>,
    /// Its state, as the rules name it.
    pub registers: Vec<Register>,
    /// Known differences of KVMs from the rules, explained.
    pub conformance: Vec<Conformance>,
    /// The capability.
    pub capability: CapSpec,
    /// PPIN pairs (model `ppin`).
    pub pairs: Vec<PpinPair>,
    /// Initial PPIN_CTL (model `ppin`).
    pub initial_ctl: u64,
    /// KVM-served MSRs (model `kvm-msr`).
    pub kvm_msrs: Vec<KvmMsr>,
}

impl FeatureSpec {
    /// Every MSR the feature involves, in spec order.
    pub fn msrs(&self) -> Vec<MsrIndex> {
        let mut v: Vec<MsrIndex> = self.pairs.iter().flat_map(|p| [p.ctl, p.value]).collect();
        v.extend(self.kvm_msrs.iter().map(|k| k.msr));
        for m in self.registers.iter().filter_map(|r| r.msr) {
            if !v.contains(&m) {
                v.push(m);
            }
        }
        v
    }

    /// The register named `name`.
    pub fn register(&self, name: &str) -> Option<&Register> {
        self.registers.iter().find(|r| r.name == name)
    }

    /// The rule named `id`.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The host-initiated writes that establish this feature's own starting state in a VM
    /// whose guest is told of the pairs of `announced` (`vendor` is the guest's CPU's), before
    /// the case's `initial` writes: model `ppin` writes the supplied PPIN value (the user's,
    /// never this machine's MSRs unasked) then the firmware PPIN_CTL; `stock` each register's
    /// `initial`; `kvm-msr` each MSR's host value or default.
    pub fn vmm_writes(
        &self,
        announced: &[CpuVendor],
        vendor: CpuVendor,
        host: &HostSources,
        initial: &[(MsrIndex, u64)],
    ) -> Result<Vec<(MsrIndex, u64)>, SetupError> {
        let mut writes = Vec::new();
        match self.model {
            ModelKind::Ppin => {
                let pair = announced
                    .iter()
                    .find_map(|v| self.pair_for(*v))
                    .ok_or_else(|| SetupError::NoPair {
                        feature: self.name.clone(),
                        vendor,
                    })?;
                let mut order = vec![pair.value];
                order.extend(self.pairs.iter().map(|p| p.value));
                let case_sets_value = initial.iter().any(|(i, _)| order.contains(i));
                match host.supplied_value(&order) {
                    Some((_, v, _)) => writes.push((pair.value, v)),
                    None if case_sets_value => {}
                    None => {
                        return Err(SetupError::NoValue {
                            feature: self.name.clone(),
                            msr: pair.value,
                        })
                    }
                }
                writes.push((pair.ctl, self.initial_ctl));
            }
            ModelKind::Stock => {
                for r in &self.registers {
                    if let (Some(msr), Some(v)) = (r.msr, r.initial) {
                        writes.push((msr, v));
                    }
                }
            }
            ModelKind::KvmMsr => {
                for k in &self.kvm_msrs {
                    let v = host.first_value(&[k.msr]).map_or(k.default, |(_, v, _)| v);
                    writes.push((k.msr, v));
                }
            }
        }
        Ok(writes)
    }

    /// The pair a guest of `vendor` uses.
    pub fn pair_for(&self, vendor: CpuVendor) -> Option<&PpinPair> {
        self.pairs.iter().find(|p| p.vendor == vendor)
    }
}

/// Whether a condition's `name` means something for a rule about `reg`.
pub(super) fn name_resolves(name: &str, reg: &Register, all: &[Register]) -> bool {
    match name.split_once('.') {
        None => matches!(name, "new" | "old" | "enabled") || all.iter().any(|r| r.name == name),
        Some(("new" | "old", field)) => reg.field(field).is_some(),
        Some((r, "writable")) => all.iter().any(|g| g.name == r),
        Some((r, field)) => all.iter().any(|g| g.name == r && g.field(field).is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::Catalog;

    fn catalog() -> Catalog {
        Catalog::builtin().unwrap()
    }

    #[test]
    fn builtin_specs_load() {
        let c = catalog();
        let p = FeatureSpec::find("ppin", &c).unwrap();
        assert_eq!(p.capability.number, crate::kvm::KVM_CAP_PPIN);
        assert_eq!(p.pairs.len(), 2);
        assert_eq!(p.pairs[1].value, MsrIndex::new(0xc00102f1));
        assert_eq!((p.pairs[0].lockout, p.pairs[0].enable), (1, 2));
        let pi = FeatureSpec::find("platform-info", &c).unwrap();
        assert_eq!(pi.capability.number, 159);
        assert_eq!(pi.msrs(), vec![MsrIndex::new(0xce)]);
    }

    #[test]
    fn bad_specs_are_named() {
        let c = catalog();
        assert!(matches!(
            FeatureSpec::find("nope", &c),
            Err(FeatureError::Unknown { .. })
        ));
        let bad = |t: &str| FeatureSpec::parse(t, "t.toml", &c).unwrap_err().to_string();
        let e = bad("name='x'\nmodel='kvm-msr'\n[capability]\nname='KVM_CAP_NOPE'\n");
        assert!(e.contains("not a known name"), "{e}");
        let e = bad(
            "name='x'\nmodel='kvm-msr'\n[capability]\nname='KVM_CAP_MSR_PLATFORM_INFO'\nnumber=3\n",
        );
        assert!(e.contains("is number 159"), "{e}");
        let e = bad("name='x'\nmodel='kvm-msr'\n[capability]\nname='KVM_CAP_MSR_PLATFORM_INFO'\n[[kvm_msr]]\nmsr='NOPE'\ndefault=0\n");
        assert!(e.contains("unknown MSR `NOPE`"), "{e}");
        let e = bad("name='x'\nmodel='ppin'\n[capability]\nname='KVM_CAP_PPIN'\n");
        assert!(e.contains("needs at least one [[pair]]"), "{e}");
        let e = bad("name='x'\nmodel='magic'\n");
        assert!(e.contains("t.toml"), "{e}");
    }
}
