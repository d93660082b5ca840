//! What one catalog entry is: its vendor, scope, comparison rule, bit ranges and fields.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::index::MsrIndex;

/// Which CPU vendors implement an MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Architectural, or implemented by both vendors at the same index.
    Any,
    /// Intel only.
    Intel,
    /// AMD only.
    Amd,
}

/// How widely one instance of an MSR is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One per logical processor.
    Thread,
    /// Shared by the threads of a core.
    Core,
    /// Shared by the whole package (socket).
    Package,
}

/// How a guest's reading of an MSR is compared with the host's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Rule {
    /// The values must be identical.
    Equal,
    /// Only the bits set in `mask` are compared.
    Mask {
        /// The compared bits.
        mask: u64,
    },
    /// A counter: the guest value must not be below the host value taken before the guest ran.
    Monotonic,
    /// Expected to differ between CPUs (APIC base, TSC_AUX): compared only for being readable.
    PerCpu,
    /// Not compared at all.
    Ignore {
        /// Why a comparison would be meaningless.
        reason: String,
    },
}

/// An inclusive range of bits, `high:low`, inside a 64-bit MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BitRange {
    /// The highest bit, at most 63.
    pub high: u8,
    /// The lowest bit.
    pub low: u8,
}

impl BitRange {
    /// Parses `"N"` or `"HIGH:LOW"`; `None` for anything else, a bit above 63, or `LOW > HIGH`.
    pub fn parse(text: &str) -> Option<Self> {
        let (high, low) = match text.split_once(':') {
            Some((h, l)) => (h.trim().parse::<u8>().ok()?, l.trim().parse::<u8>().ok()?),
            None => {
                let b = text.trim().parse::<u8>().ok()?;
                (b, b)
            }
        };
        (high <= 63 && low <= high).then_some(Self { high, low })
    }

    /// The number of bits in the range.
    pub fn width(self) -> u32 {
        u32::from(self.high - self.low) + 1
    }

    /// The mask of the range's bits in place.
    pub fn mask(self) -> u64 {
        let w = self.width();
        let ones = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
        ones << self.low
    }

    /// The range's bits of `value`, shifted down to bit 0.
    pub fn extract(self, value: u64) -> u64 {
        (value & self.mask()) >> self.low
    }
}

impl fmt::Display for BitRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.high == self.low {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}:{}", self.high, self.low)
        }
    }
}

/// A named bit field of an MSR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Field {
    /// The field's name as the manuals give it.
    pub name: String,
    /// Where it lives.
    pub bits: BitRange,
    /// What it means.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One MSR of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MsrEntry {
    /// Its index.
    pub index: MsrIndex,
    /// Its unique name (the `x86` crate's constant name where it has one).
    pub name: String,
    /// Who implements it.
    pub vendor: Vendor,
    /// How widely it is shared.
    pub scope: Scope,
    /// How guest and host readings compare.
    pub rule: Rule,
    /// One line on what it is.
    pub description: String,
    /// Its documented bit fields.
    pub fields: Vec<Field>,
    /// The line of the catalog file where the entry starts.
    #[serde(skip)]
    pub line: usize,
}

/// A field's value decoded from a reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecodedField {
    /// The field's name.
    pub name: String,
    /// Its bits.
    pub bits: String,
    /// Its value, shifted down.
    pub value: u64,
}

impl MsrEntry {
    /// Decodes `value` into the entry's named fields.
    pub fn decode(&self, value: u64) -> Vec<DecodedField> {
        self.fields
            .iter()
            .map(|f| DecodedField {
                name: f.name.clone(),
                bits: f.bits.to_string(),
                value: f.bits.extract(value),
            })
            .collect()
    }

    /// The field called `name` (case-insensitive).
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}
