//! msr-probe: read model-specific registers by number or name, on the host or as a guest's
//! `/init`, with the catalog that says what each MSR is and how guest and host compare.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod catalog;
mod catalog_raw;
pub mod cli;
pub mod format;
pub mod frame;
pub mod hex;
pub mod index;
pub mod init;
pub mod reader;
pub mod report;

pub use catalog::{Catalog, MsrEntry, Rule};
pub use index::MsrIndex;
pub use reader::{DevMsr, Fault, MsrReader, Reading, Unavailable};
pub use report::{Fingerprint, ProbeReport};
