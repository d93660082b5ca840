//! Per-vCPU CPUID: KVM's supported table with the vCPU's APIC ID and the feature's bits.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use serde::{Deserialize, Serialize};

/// A CPUID register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One CPUID bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidBit {
    /// The leaf (EAX input).
    pub leaf: u32,
    /// The subleaf (ECX input).
    #[serde(default)]
    pub subleaf: u32,
    /// The output register.
    pub register: Reg,
    /// The bit, 0..=31.
    pub bit: u8,
}

/// The CPU vendor as CPUID leaf 0 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuVendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD (or HygonGenuine).
    Amd,
    /// Anything else.
    Other,
}

impl std::fmt::Display for CpuVendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Intel => "Intel",
            Self::Amd => "AMD",
            Self::Other => "other",
        })
    }
}

/// The vendor of a CPUID table.
pub fn vendor(cpuid: &CpuId) -> CpuVendor {
    let Some(e) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return CpuVendor::Other;
    };
    let mut s = Vec::with_capacity(12);
    for r in [e.ebx, e.edx, e.ecx] {
        s.extend_from_slice(&r.to_le_bytes());
    }
    match &s[..] {
        b"GenuineIntel" => CpuVendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    }
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Raises the maximum leaf (leaf 0 or 0x80000000 EAX) and, for leaf 7, the maximum subleaf
/// (7.0 EAX) so that a guest that walks CPUID finds `b`'s leaf (KVM's table may stop short
/// of it: KVM emits 7.1 only where the host's 7.0 EAX is at least 1).
fn announce_leaf(entries: &mut [kvm_cpuid_entry2], b: CpuidBit) {
    let base = b.leaf & 0x8000_0000;
    for e in entries.iter_mut() {
        if e.function == base && e.eax < b.leaf {
            e.eax = b.leaf;
        }
        if b.leaf == 7 && e.function == 7 && e.index == 0 && e.eax < b.subleaf {
            e.eax = b.subleaf;
        }
    }
}

/// Sets or clears `bit` in `entries`, adding the leaf if KVM's table lacks it.
pub fn set_bit(entries: &mut Vec<kvm_cpuid_entry2>, b: CpuidBit, on: bool) {
    let pos = entries.iter().position(|e| {
        e.function == b.leaf
            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == b.subleaf)
    });
    let idx = match pos {
        Some(i) => i,
        None if on => {
            entries.push(kvm_cpuid_entry2 {
                function: b.leaf,
                index: b.subleaf,
                flags: if b.subleaf != 0 || b.leaf == 7 {
                    KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                } else {
                    0
                },
                ..Default::default()
            });
            entries.len() - 1
        }
        None => return,
    };
    let r = reg_mut(&mut entries[idx], b.register);
    let mask = 1u32 << (b.bit & 31);
    if on {
        *r |= mask;
        announce_leaf(entries, b);
    } else {
        *r &= !mask;
    }
}

/// KVM's supported CPUID adjusted for vCPU `id` of `count`: APIC IDs in leaves 1, 0xB, 0x1F
/// and 0x8000001E, the logical processor count and the hypervisor bit in leaf 1, and the
/// feature bits `on`/`off`.
pub fn for_vcpu(
    supported: &CpuId,
    id: u8,
    count: u8,
    on: &[CpuidBit],
    off: &[CpuidBit],
) -> Result<CpuId, String> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx =
                    (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count.max(1)) << 16);
                e.edx |= 1 << 28; // HTT: the count in EBX[23:16] is valid
                                  // The hypervisor bit, as every VMM sets it (KVM's supported CPUID leaves it
                                  // clear): without it a Linux guest never looks at KVM's leaves 0x40000000+,
                                  // which KVM_GET_SUPPORTED_CPUID lists, so it runs without kvmclock and
                                  // calibrates its TSC against the PIT ("Booting paravirtualized kernel on bare
                                  // hardware").
                e.ecx |= 1 << 31;
            }
            0xb | 0x1f => e.edx = u32::from(id),
            0x8000_001e => e.eax = u32::from(id),
            _ => {}
        }
    }
    for b in off {
        set_bit(&mut entries, *b, false);
    }
    for b in on {
        set_bit(&mut entries, *b, true);
    }
    CpuId::from_entries(&entries).map_err(|e| format!("CPUID table: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_set_added_and_cleared() {
        let mut v = vec![
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            },
        ];
        let amd = CpuidBit {
            leaf: 0x8000_0008,
            subleaf: 0,
            register: Reg::Ebx,
            bit: 23,
        };
        set_bit(&mut v, amd, true);
        assert_eq!(v[0].ebx, 1 << 23);
        set_bit(&mut v, amd, false);
        assert_eq!(v[0].ebx, 0);
        let intel = CpuidBit {
            leaf: 7,
            subleaf: 1,
            register: Reg::Ebx,
            bit: 0,
        };
        set_bit(&mut v, intel, true);
        assert_eq!((v[3].function, v[3].index, v[3].ebx), (7, 1, 1));
        assert_ne!(v[3].flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
        assert_eq!(v[2].eax, 1, "7.0 EAX announces subleaf 1");
        assert_eq!(v[1].eax, 0xd, "leaf 0 already covers leaf 7");
        let absent = CpuidBit {
            leaf: 0x4000_0000,
            subleaf: 0,
            register: Reg::Eax,
            bit: 1,
        };
        set_bit(&mut v, absent, false);
        assert_eq!(v.len(), 4);
    }
}
