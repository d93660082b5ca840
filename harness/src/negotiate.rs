//! Capability negotiation from data: check (system and VM), then enable with arguments, on a
//! VM that has no vCPU yet, recording every step for the report.

use serde::Serialize;

use crate::kvm::{cap_name, KvmSystem, VmSetup};

/// One capability to negotiate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapRequest {
    /// The number.
    pub cap: u32,
    /// `KVM_ENABLE_CAP` arguments, or `None` to only check it.
    pub enable: Option<[u64; 4]>,
    /// Whether its absence or refusal is fatal.
    pub required: bool,
}

/// What negotiation did for one capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NegotiationStep {
    /// The capability's name.
    pub cap: String,
    /// Its number.
    pub number: u32,
    /// `KVM_CHECK_EXTENSION` on /dev/kvm.
    pub system: i32,
    /// `KVM_CHECK_EXTENSION` on the VM.
    pub vm: i32,
    /// The enable arguments, if it was enabled.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::json::opt_args_hex"
    )]
    pub args: Option<[u64; 4]>,
    /// `ok`, the errno with its meaning, or `skipped: not supported`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<String>,
}

/// Why negotiation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NegotiationError {
    /// the kernel lacks a required capability
    #[error(
        "the running kernel ({kernel}) lacks {cap} ({number}): KVM_CHECK_EXTENSION returned 0"
    )]
    Missing {
        /// The capability.
        cap: String,
        /// Its number.
        number: u32,
        /// `uname -r`.
        kernel: String,
    },
    /// KVM refused to enable a required capability
    #[error("KVM_ENABLE_CAP({cap} = {number}, args {args:?}) failed: {reason}")]
    Refused {
        /// The capability.
        cap: String,
        /// Its number.
        number: u32,
        /// The arguments.
        args: [u64; 4],
        /// The errno and its meaning.
        reason: String,
    },
}

/// The meaning of an errno from `KVM_ENABLE_CAP` on a VM.
pub fn enable_errno_meaning(errno: i32) -> &'static str {
    match errno {
        libc::EINVAL => "EINVAL: unknown capability, flags or arguments the kernel does not accept",
        libc::EBUSY => "EBUSY: too late: vCPUs already exist",
        libc::EEXIST => "EEXIST: already enabled",
        libc::EOPNOTSUPP => "EOPNOTSUPP: the host cannot provide this mode",
        libc::ENOTTY => "ENOTTY: KVM_ENABLE_CAP is not supported on this fd",
        libc::EPERM | libc::EACCES => "EPERM: not permitted",
        libc::ENOMEM => "ENOMEM: out of memory",
        _ => "unexpected errno",
    }
}

/// The running kernel's release, for messages.
pub fn running_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Checks and enables `requests` in order on `vm`, which has no vCPU (the type guarantees it).
pub fn negotiate(
    kvm: &KvmSystem,
    vm: &VmSetup,
    requests: &[CapRequest],
) -> Result<Vec<NegotiationStep>, (Vec<NegotiationStep>, NegotiationError)> {
    let mut steps = Vec::with_capacity(requests.len());
    for r in requests {
        let system = kvm.check_extension_raw(r.cap);
        let vm_level = vm.check_extension_raw(r.cap);
        let mut step = NegotiationStep {
            cap: cap_name(r.cap),
            number: r.cap,
            system,
            vm: vm_level,
            args: r.enable,
            enabled: None,
        };
        if system == 0 && vm_level == 0 {
            if r.required {
                let e = NegotiationError::Missing {
                    cap: step.cap.clone(),
                    number: r.cap,
                    kernel: running_kernel(),
                };
                steps.push(step);
                return Err((steps, e));
            }
            if r.enable.is_some() {
                step.enabled = Some("skipped: not supported".into());
            }
            steps.push(step);
            continue;
        }
        if let Some(args) = r.enable {
            match vm.enable_cap_raw(r.cap, args) {
                Ok(()) => step.enabled = Some("ok".into()),
                Err(e) => {
                    let reason = enable_errno_meaning(e.errno()).to_owned();
                    step.enabled = Some(reason.clone());
                    if r.required {
                        let err = NegotiationError::Refused {
                            cap: step.cap.clone(),
                            number: r.cap,
                            args,
                            reason,
                        };
                        steps.push(step);
                        return Err((steps, err));
                    }
                }
            }
        }
        steps.push(step);
    }
    Ok(steps)
}
