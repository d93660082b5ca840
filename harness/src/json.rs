//! JSON conventions every report shares (`docs/schema/kvmcap.schema.json`): 64-bit values
//! (MSR values, register values, capability arguments) and MSR indices are hex strings
//! (`"0x1122334455667788"`, `"0x4f"`), because a JSON number loses precision past 2^53 in
//! `jq` 1.6 and JavaScript. Use these modules with `#[serde(serialize_with = "...")]`.

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use msr_probe::{Fault, MsrIndex, Reading, Unavailable};

/// A 64-bit value as the reports write it.
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// `u64` as a hex string.
pub fn u64_hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(*v))
}

/// `Option<u64>` as a hex string or `null`.
pub fn opt_u64_hex<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&hex(*v)),
        None => s.serialize_none(),
    }
}

/// `Option<[u64; 4]>` (capability arguments) as hex strings or `null`.
pub fn opt_args_hex<S: Serializer>(v: &Option<[u64; 4]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(a) => {
            let mut seq = s.serialize_seq(Some(a.len()))?;
            for x in a {
                seq.serialize_element(&hex(*x))?;
            }
            seq.end()
        }
        None => s.serialize_none(),
    }
}

/// Rows of `u64` (register states) as rows of hex strings.
pub fn rows_u64_hex<S: Serializer>(v: &[Vec<u64>], s: S) -> Result<S::Ok, S::Error> {
    let rows: Vec<Vec<String>> = v
        .iter()
        .map(|r| r.iter().map(|x| hex(*x)).collect())
        .collect();
    rows.serialize(s)
}

/// An MSR index as a hex string.
pub fn msr_index<S: Serializer>(v: &MsrIndex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(u64::from(v.raw())))
}

/// A [`Reading`] as msr-probe's shape (`{"value": …}`, `{"fault": "GP"}`,
/// `{"unavailable": …}`) with the value as a hex string.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum HexReading<'a> {
    Value(String),
    Fault(&'a Fault),
    Unavailable(&'a Unavailable),
}

impl<'a> From<&'a Reading> for HexReading<'a> {
    fn from(r: &'a Reading) -> Self {
        match r {
            Reading::Value(v) => Self::Value(hex(*v)),
            Reading::Fault(f) => Self::Fault(f),
            Reading::Unavailable(u) => Self::Unavailable(u),
        }
    }
}

/// A [`Reading`] with its value as a hex string.
pub fn reading<S: Serializer>(v: &Reading, s: S) -> Result<S::Ok, S::Error> {
    HexReading::from(v).serialize(s)
}

/// An `Option<Reading>` with its value as a hex string, or `null`.
pub fn opt_reading<S: Serializer>(v: &Option<Reading>, s: S) -> Result<S::Ok, S::Error> {
    v.as_ref().map(HexReading::from).serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct T {
        #[serde(serialize_with = "u64_hex")]
        v: u64,
        #[serde(serialize_with = "opt_u64_hex")]
        o: Option<u64>,
        #[serde(serialize_with = "msr_index")]
        i: MsrIndex,
        #[serde(serialize_with = "reading")]
        r: Reading,
        #[serde(serialize_with = "opt_reading")]
        f: Option<Reading>,
        #[serde(serialize_with = "rows_u64_hex")]
        rows: Vec<Vec<u64>>,
    }

    #[test]
    fn sixty_four_bit_values_survive_as_hex_strings() {
        let t = T {
            v: 0x1122_3344_5566_7788,
            o: None,
            i: MsrIndex::new(0x4f),
            r: Reading::Value(u64::MAX),
            f: Some(Reading::Fault(Fault::Gp)),
            rows: vec![vec![0, 1]],
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"v":"0x1122334455667788","o":null,"i":"0x4f","r":{"value":"0xffffffffffffffff"},"f":{"fault":"GP"},"rows":[["0x0","0x1"]]}"#
        );
    }
}
