//! The VMM: VM construction, vCPU threads and exit dispatch, on top of the KVM layer.

pub mod boot;
pub mod console;
pub mod cpuid;
pub mod linux;
pub mod machine;
pub mod mptable;
pub mod vcpu;
