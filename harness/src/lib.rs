//! kvmcap: negotiate KVM capabilities from data, boot a guest, and show exactly what it sees.
//!
//! The modules are layered; each imports only from those listed before it:
//! - [`json`], the JSON conventions every report shares (64-bit values as hex strings);
//! - [`x86`], architectural facts (CPUID, long mode, the MP table, guest-physical layout);
//! - [`kvm`], the KVM layer, the only place with `unsafe`;
//! - [`host`], where host MSR values come from;
//! - [`fixtures`], the feature and scenario files built in and the user's own;
//! - [`features`], feature files, the rule engine and the models it builds;
//! - [`negotiate`], capability negotiation;
//! - [`backend`], what each backend negotiates and serves for a feature;
//! - [`compare`], verdicts;
//! - [`vmm`], VM construction, vCPU threads, exit dispatch and devices, for any guest;
//! - [`guests`], the bare probe guest and the Linux guest;
//! - [`report`], reports as documents (JSON with a schema name, tables, KTAP, JUnit) and
//!   where they are written;
//! - [`commands`], probe, verify, scenarios and explore;
//! - [`lab`], the jobs kvmcap runs inside the lab;
//! - [`cli`], the command line.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backend;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod features;
pub mod fixtures;
pub mod guests;
pub mod host;
pub mod json;
pub mod kvm;
pub mod lab;
pub mod negotiate;
pub mod report;
pub mod vmm;
pub mod x86;
