//! Backends: how the VMM makes a feature visible to the guest (design.md), and what each one
//! negotiates and establishes ([`wiring`]).

pub mod wiring;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use wiring::WiringError;

/// How a feature reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Stock KVM, nothing done.
    None,
    /// `KVM_CAP_X86_USER_SPACE_MSR` + an MSR filter; the VMM's model answers.
    User,
    /// The feature's own KVM capability.
    Kernel,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::User => "user",
            Self::Kernel => "kernel",
        })
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "user" => Ok(Self::User),
            "kernel" => Ok(Self::Kernel),
            _ => Err(format!(
                "unknown backend `{s}` (expected none, user or kernel)"
            )),
        }
    }
}
