//! [`MsrIndex`]: the address of a model-specific register.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The index (address) of a model-specific register, as used by `rdmsr`/`wrmsr` in ECX.
///
/// Every API in kvmcap takes an `MsrIndex`, never a bare `u32`, so an MSR number cannot be
/// confused with a CPU number, a capability or a value.
///
/// In JSON it is a hex string (`"0x4f"`); a number is accepted when reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsrIndex(u32);

impl Serialize for MsrIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MsrIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = crate::hex::u64_hex::deserialize(d)?;
        u32::try_from(v)
            .map(Self)
            .map_err(|_| serde::de::Error::custom(format!("{v:#x} is not a 32-bit MSR index")))
    }
}

impl MsrIndex {
    /// Wraps a raw index.
    pub const fn new(raw: u32) -> Self {
        Self(raw)
    }

    /// The raw index, for ioctl structures and the `rdmsr` instruction.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// The byte offset at which `/dev/cpu/N/msr` serves this MSR.
    pub const fn devmsr_offset(self) -> u64 {
        self.0 as u64
    }
}

impl fmt::Display for MsrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Why a string is not an MSR index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an MSR index (expected a number such as 0x4f, 79 or 0xc00102f1)")]
pub struct ParseIndexError {
    /// The text that did not parse.
    pub text: String,
}

impl FromStr for MsrIndex {
    type Err = ParseIndexError;

    /// Parses `0x4f`, `0X4F` or decimal `79`, as `rdmsr` does (it uses `strtoul(.., 0)`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_u64(s)
            .and_then(|v| u32::try_from(v).ok())
            .map(MsrIndex)
            .ok_or_else(|| ParseIndexError { text: s.to_owned() })
    }
}

/// Parses an unsigned number the way C's `strtoull(s, 0)` does: `0x` hex, leading-`0` octal,
/// otherwise decimal. `_` separators are allowed for readability.
pub fn parse_u64(s: &str) -> Option<u64> {
    let t = s.trim().replace('_', "");
    if t.is_empty() {
        return None;
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_strtoul() {
        assert_eq!("0x4f".parse::<MsrIndex>().unwrap(), MsrIndex::new(0x4f));
        assert_eq!("79".parse::<MsrIndex>().unwrap(), MsrIndex::new(79));
        assert_eq!("0117".parse::<MsrIndex>().unwrap(), MsrIndex::new(0o117));
        assert_eq!(
            "0xC001_02F1".parse::<MsrIndex>().unwrap(),
            MsrIndex::new(0xc00102f1)
        );
        assert!("0x1_0000_0000".parse::<MsrIndex>().is_err());
        assert!("PPIN".parse::<MsrIndex>().is_err());
        assert!("".parse::<MsrIndex>().is_err());
        assert_eq!(MsrIndex::new(0x4f).to_string(), "0x4f");
    }
}
