//! 64-bit values in JSON as hex strings (`"0x1122334455667788"`): a JSON number loses
//! precision past 2^53 in `jq` and JavaScript. Reading accepts a number too, so documents
//! written before this convention still load.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Parses `0x...` hex or decimal.
fn parse(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

struct U64Visitor;

impl Visitor<'_> for U64Visitor {
    type Value = u64;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a 64-bit value: a \"0x...\" string or a number")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse(v).ok_or_else(|| E::custom(format!("`{v}` is not a 64-bit value")))
    }
}

/// `u64` as a hex string.
pub mod u64_hex {
    use super::*;

    /// Serializes as `"0x..."`.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    /// Accepts `"0x..."`, a decimal string or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(U64Visitor)
    }
}

/// `Option<u64>` as a hex string or `null`.
pub mod opt_u64_hex {
    use super::*;

    /// Serializes as `"0x..."` or `null`.
    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&format!("{v:#x}")),
            None => s.serialize_none(),
        }
    }

    /// Accepts what [`super::u64_hex::deserialize`] does, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct OptVisitor;
        impl<'de> Visitor<'de> for OptVisitor {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a 64-bit value or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                d.deserialize_any(U64Visitor).map(Some)
            }
        }
        d.deserialize_option(OptVisitor)
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super::u64_hex")]
        v: u64,
        #[serde(with = "super::opt_u64_hex", default)]
        o: Option<u64>,
    }

    #[test]
    fn hex_out_hex_or_number_in() {
        let t = T {
            v: 0x1122_3344_5566_7788,
            o: Some(0x4f),
        };
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, r#"{"v":"0x1122334455667788","o":"0x4f"}"#);
        assert_eq!(serde_json::from_str::<T>(&j).unwrap(), t);
        let old: T = serde_json::from_str(r#"{"v":1234605616436508552,"o":null}"#).unwrap();
        assert_eq!((old.v, old.o), (0x1122_3344_5566_7788, None));
        assert!(serde_json::from_str::<T>(r#"{"v":"0xzz","o":null}"#).is_err());
    }
}
