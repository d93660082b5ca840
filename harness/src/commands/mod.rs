//! What `kvmcap` does on request: probe, verify, scenarios and explore.

pub mod explore;
pub mod probe;
pub mod scenario;
pub mod verify;
