//! Every report kind is a JSON document with a versioned `schema` name as its first field and a
//! top-level `pass`; `docs/schema/kvmcap.schema.json` describes them all. The names:
//!
//! | schema | what | from |
//! | --- | --- | --- |
//! | `kvmcap.report/1` | readings and verdicts of one guest run | `probe`, `verify`, lab `probe`/`verify`/`catalog`/`qemu` |
//! | `kvmcap.scenario/1` | one scenario on one backend | lab `run` jobs, inside `kvmcap.run/1` |
//! | `kvmcap.run/1` | a scenario on each backend, with the skipped ones | `run` |
//! | `kvmcap.explore/1` | an exploration | `explore`, lab `explore` |
//! | `kvmcap.caps/1` | the capabilities KVM reports | `caps` |
//! | `kvmcap.cost/1` | a lab `cost` job's timed reads | lab `cost` |
//! | `kvmcap.selftest/1` | a lab `selftest` job's exit and output | lab `selftest` |
//! | `kvmcap.lab-job/1` | one lab job's result, its report inside | `lab-init` frames |
//! | `kvmcap.image-dump/1` | another VMM's run of the bare probe image | `image --dump` |
//!
//! A change that removes or retypes a field bumps the version; adding a field does not.

use serde::Serialize;

use super::results::{junit, ktap, Suite};
use crate::vmm::stats::ExitStats;

macro_rules! schema_names {
    ($($(#[$doc:meta])* $ty:ident = $id:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $ty;

        impl $ty {
            /// The schema name this marker serializes as.
            pub const ID: &'static str = $id;
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($id)
            }
        }
    )*};
}

schema_names! {
    /// `kvmcap.report/1`.
    ReportV1 = "kvmcap.report/1";
    /// `kvmcap.scenario/1`.
    ScenarioV1 = "kvmcap.scenario/1";
    /// `kvmcap.run/1`.
    RunV1 = "kvmcap.run/1";
    /// `kvmcap.explore/1`.
    ExploreV1 = "kvmcap.explore/1";
    /// `kvmcap.caps/1`.
    CapsV1 = "kvmcap.caps/1";
    /// `kvmcap.cost/1`.
    CostV1 = "kvmcap.cost/1";
    /// `kvmcap.selftest/1`.
    SelftestV1 = "kvmcap.selftest/1";
    /// `kvmcap.lab-job/1`.
    LabJobV1 = "kvmcap.lab-job/1";
    /// `kvmcap.image-dump/1`.
    ImageDumpV1 = "kvmcap.image-dump/1";
}

/// A report kind: JSON (its `Serialize`, with `schema` and `pass`), and its cases for KTAP and
/// JUnit.
pub trait Document: Serialize {
    /// Whether it passed (its JSON's `pass`).
    fn pass(&self) -> bool;
    /// Its cases, one suite per run it holds.
    fn suites(&self) -> Vec<Suite>;
    /// Its exit accounting per vCPU (summed over its VMs), for `--stats`; empty when it ran
    /// no VM of kvmcap's.
    fn exit_stats(&self) -> Vec<ExitStats> {
        Vec::new()
    }
}

/// The output formats of every command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The table people read.
    #[default]
    Text,
    /// The JSON document.
    Json,
    /// KTAP v1.
    Ktap,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "ktap" => Ok(Self::Ktap),
            other => Err(format!("unknown format `{other}`: text, json or ktap")),
        }
    }
}

/// `doc` as pretty JSON with a final newline (what `--json` and `--report` write).
pub fn json<D: Document + ?Sized>(doc: &D) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(doc).map(|s| s + "\n")
}

/// `doc` in `format`; `table` gives the text (only called for [`Format::Text`]).
pub fn render<D: Document + ?Sized>(
    doc: &D,
    format: Format,
    table: impl FnOnce() -> String,
) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Text => table(),
        Format::Json => json(doc)?,
        Format::Ktap => ktap(&doc.suites()),
    })
}

/// `doc` as JUnit XML (what `--junit FILE` writes).
pub fn junit_of<D: Document + ?Sized>(doc: &D) -> String {
    junit(&doc.suites())
}
