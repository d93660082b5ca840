//! Why a VM could not be built or run, and the limits every run has.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::backend::WiringError;
use crate::features::model::InitialRefused;
use crate::kvm::KvmError;
use crate::negotiate::{NegotiationError, NegotiationStep};

/// The most vCPUs a run gets unless `--max-vcpus` says otherwise (each guest's layout may
/// allow fewer: it passes its own maximum to [`check_vcpus`]).
pub const DEFAULT_MAX_VCPUS: u8 = 64;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM itself failed
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// negotiation failed
    #[error("{error}")]
    Negotiation {
        /// The steps up to the failure.
        steps: Vec<NegotiationStep>,
        /// The failure.
        error: NegotiationError,
    },
    /// the feature's starting state cannot be established
    #[error(transparent)]
    Wiring(#[from] WiringError),
    /// the request is impossible
    #[error("{0}")]
    Request(String),
    /// a host-initiated write of the initial MSR state was refused (the same for every
    /// backend: KVM refused it, or the `user` model did as KVM would)
    #[error(transparent)]
    Initial(#[from] InitialRefused),
    /// the VMM itself failed (a thread, an OS resource, guest memory it laid out)
    #[error("internal: {0}")]
    Internal(String),
    /// a kernel or initramfs image is unusable
    #[error("{path}: {problem}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// a vCPU could not be set up
    #[error("vCPU {cpu}: {what}: {error}")]
    Vcpu {
        /// The vCPU.
        cpu: u8,
        /// Which step.
        what: String,
        /// The error.
        error: String,
    },
}

/// Resource limits of a run (each has a default and a command-line flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// The most vCPUs.
    pub max_vcpus: u8,
    /// The deadline for the guest.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_vcpus: DEFAULT_MAX_VCPUS,
            deadline: Duration::from_secs(10),
        }
    }
}

/// Checks a vCPU count against the limits and KVM.
pub fn check_vcpus(count: usize, limits: &Limits, layout_max: u8) -> Result<u8, VmmError> {
    let max = limits.max_vcpus.min(layout_max);
    if count == 0 || count > usize::from(max) {
        return Err(VmmError::Request(format!(
            "{count} vCPUs: expected 1..={max}"
        )));
    }
    Ok(count as u8)
}
