//! x86 facts the VMM and guests build on: CPUID tables, long-mode entry state, the MP table
//! and the guest-physical layout.

pub mod cpuid;
pub mod layout;
pub mod long_mode;
pub mod mptable;
