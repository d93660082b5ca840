//! The VMM: VM construction, vCPU threads and exit dispatch, and the serial console, on top
//! of the KVM layer. It knows no guest: guests (`crate::guests`) bring their memory image and
//! their exit handler.

pub mod console;
pub mod error;
pub mod machine;
pub mod stats;
pub mod vcpu;
