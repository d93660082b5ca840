//! The guest-side tools (initramfs builder); filled by the Linux-guest issue.
#![forbid(unsafe_code)]
