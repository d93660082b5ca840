//! Guest-side tools: the newc initramfs builder (and reader, for checks), and the initramfs
//! layouts kvmcap boots: the guest's (msr-probe as `/init`) and the lab's (kvmcap as `/init`).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cpio;
