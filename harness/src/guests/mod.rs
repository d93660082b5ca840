//! The guests kvmcap runs: the bare probe guest and a Linux kernel with msr-probe as `/init`.

pub mod bare;
pub mod linux;
