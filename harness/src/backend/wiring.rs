//! What each backend negotiates and serves for a feature: the capability requests, and the
//! starting state every backend establishes the same way (design.md: `user` and `kernel`
//! agree by construction).

use crate::backend::Backend;
use crate::features::model::ModelInputs;
use crate::features::{Announce, CapSpec, FeatureSpec, SetupError};
use crate::host::HostSources;
use crate::negotiate::CapRequest;
use crate::x86::cpuid::{CpuVendor, CpuidBit};
use msr_probe::MsrIndex;

/// `KVM_CAP_X86_USER_SPACE_MSR`.
pub const CAP_USER_SPACE_MSR: u32 = kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR;
/// `KVM_CAP_X86_MSR_FILTER`.
pub const CAP_MSR_FILTER: u32 = kvm_bindings::KVM_CAP_X86_MSR_FILTER;

/// The capabilities a backend negotiates for `feature`.
pub fn cap_requests(
    feature: Option<&FeatureSpec>,
    backend: Backend,
    args: Option<[u64; 4]>,
) -> Vec<CapRequest> {
    match (backend, feature) {
        (Backend::None, _) | (_, None) => Vec::new(),
        (Backend::User, Some(_)) => vec![
            CapRequest {
                cap: CAP_USER_SPACE_MSR,
                enable: Some([u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0]),
                required: true,
            },
            CapRequest {
                cap: CAP_MSR_FILTER,
                enable: None,
                required: true,
            },
        ],
        (Backend::Kernel, Some(f)) if f.capability.is_none() => Vec::new(),
        (Backend::Kernel, Some(f)) => vec![CapRequest {
            cap: f.capability.number,
            enable: Some(args.unwrap_or(f.capability.args)),
            required: f.capability.required,
        }],
    }
}

/// A feature's starting state that a backend cannot establish.
#[derive(Debug, thiserror::Error)]
#[error("backend {backend}: {error}")]
pub struct WiringError {
    /// The backend.
    pub backend: Backend,
    /// What the feature lacks.
    pub error: SetupError,
}

/// What the VMM establishes for `feature` before the guest runs, the same for every backend
/// (design.md: `user` and `kernel` agree by construction): whether the feature is on, which
/// pairs the guest's CPUID announces, and the host-initiated writes in order: the feature's
/// own (the supplied PPIN, then the firmware PPIN_CTL; or KVM-served MSR values), then the
/// case's `initial` entries. `kernel` and `none` make the writes with `KVM_SET_MSRS`, `user`
/// feeds the ones its model serves to the model.
pub fn model_inputs(
    feature: &FeatureSpec,
    backend: Backend,
    vendor: CpuVendor,
    announce: Announce,
    host: &HostSources,
    args: [u64; 4],
    initial: &[(MsrIndex, u64)],
) -> Result<ModelInputs, WiringError> {
    // A feature with no capability is stock KVM's: on for every backend.
    let enabled =
        (backend != Backend::None || feature.capability.is_none()) && CapSpec::enables(&args);
    let announced = if enabled {
        announce.vendors(vendor)
    } else {
        Vec::new()
    };
    let mut writes = if enabled {
        feature
            .vmm_writes(&announced, vendor, host, initial)
            .map_err(|error| WiringError { backend, error })?
    } else {
        Vec::new()
    };
    writes.extend_from_slice(initial);
    Ok(ModelInputs {
        announced,
        enabled,
        writes,
    })
}

/// The CPUID bits of the feature's pairs: those the guest is told of (`on`) and the rest
/// (`off`).
pub fn cpuid_bits(
    feature: Option<&FeatureSpec>,
    announced: &[CpuVendor],
) -> (Vec<CpuidBit>, Vec<CpuidBit>) {
    let Some(f) = feature else {
        return (Vec::new(), Vec::new());
    };
    let mut on = Vec::new();
    let mut off = Vec::new();
    for p in &f.pairs {
        if announced.contains(&p.vendor) {
            on.push(p.cpuid);
        } else {
            off.push(p.cpuid);
        }
    }
    (on, off)
}
