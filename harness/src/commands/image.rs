//! `kvmcap image --dump`: what another VMM's run of the bare probe image reported, as a
//! document (`kvmcap.image-dump/1`). Nothing is judged: each reading is shown as the guest saw
//! it, so the dump compares with `probe`'s `readings` field by field.

use serde::Serialize;

use crate::guests::bare::image::parse_dump;
use crate::guests::bare::{MsrOp, ResultsError};
use crate::report::document::{Document, ImageDumpV1};
use crate::report::results::{Case, Status, Suite};
use msr_probe::{Catalog, MsrIndex, Reading};

/// One reading of the dump.
#[derive(Clone, Debug, Serialize)]
pub struct DumpRow {
    /// The vCPU.
    pub cpu: u32,
    /// The MSR.
    #[serde(serialize_with = "crate::json::msr_index")]
    pub index: MsrIndex,
    /// Its catalog name.
    pub name: String,
    /// What the guest saw.
    #[serde(serialize_with = "crate::json::reading")]
    pub guest: Reading,
    /// TSC ticks the access took (timed images only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u32>,
}

/// A parsed dump (`kvmcap.image-dump/1`); it passes when it holds at least one reading.
#[derive(Clone, Debug, Serialize)]
pub struct ImageDump {
    /// The schema name.
    pub schema: ImageDumpV1,
    /// Whether the dump held a reading.
    pub pass: bool,
    /// Every reading, vCPU by vCPU, in operation order.
    pub readings: Vec<DumpRow>,
}

impl ImageDump {
    /// Parses `dump` as the results of `per_cpu` (the image's operations per vCPU).
    pub fn parse(
        per_cpu: &[Vec<MsrOp>],
        dump: &[u8],
        timed: bool,
        catalog: &Catalog,
    ) -> Result<Self, ResultsError> {
        let results = parse_dump(per_cpu, dump)?;
        let mut readings = Vec::new();
        for (cpu, (ops, list)) in per_cpu.iter().zip(&results).enumerate() {
            for (op, (r, cycles)) in ops.iter().zip(list) {
                let Some(index) = op.index() else { continue };
                readings.push(DumpRow {
                    cpu: cpu as u32,
                    index,
                    name: catalog.name_of(index).to_owned(),
                    guest: r.reading(op),
                    cycles: timed.then_some(*cycles),
                });
            }
        }
        Ok(Self {
            schema: ImageDumpV1,
            pass: !readings.is_empty(),
            readings,
        })
    }

    /// The table people read.
    pub fn table(&self) -> String {
        self.readings
            .iter()
            .map(|r| format!("cpu{} {:<12} {:<32} {}\n", r.cpu, r.index, r.name, r.guest))
            .collect()
    }
}

impl Document for ImageDump {
    fn pass(&self) -> bool {
        self.pass
    }

    fn suites(&self) -> Vec<Suite> {
        vec![Suite {
            name: "image dump".into(),
            time_ms: 0.0,
            cases: self
                .readings
                .iter()
                .map(|r| {
                    Case::new(
                        format!("cpu{} {} ({})", r.cpu, r.name, r.index),
                        match &r.guest {
                            Reading::Unavailable(u) => Status::Skip(u.to_string()),
                            _ => Status::Pass,
                        },
                    )
                })
                .collect(),
            error: None,
        }]
    }
}
