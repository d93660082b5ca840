//! kvmcap: negotiate KVM capabilities from data, boot a guest, and show exactly what it sees.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backend;
pub mod bare;
pub mod cli;
pub mod compare;
pub mod explore;
pub mod feature;
pub mod host;
pub mod kvm;
pub mod lab;
pub mod negotiate;
pub mod probe;
pub mod report;
pub mod rules;
pub mod scenario;
pub mod verify;
pub mod vmm;
