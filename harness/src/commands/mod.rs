//! What `kvmcap` does on request: caps, probe, verify, scenarios and explore.

pub mod caps;
pub mod explore;
pub mod image;
pub mod probe;
pub mod scenario;
pub mod verify;
