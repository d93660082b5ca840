//! rdmsr-compatible rendering of values: `-x -X -d -u -0 -c` and `-f HIGH:LOW`.

use crate::catalog::BitRange;

/// The number base `rdmsr` prints in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Radix {
    /// Lowercase hexadecimal (`-x`, the default).
    #[default]
    Hex,
    /// Uppercase hexadecimal (`-X`).
    HexUpper,
    /// Signed decimal (`-d`), sign-extended from the field's top bit.
    Signed,
    /// Unsigned decimal (`-u`).
    Unsigned,
}

/// How to print one value, as `rdmsr` would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ValueFormat {
    /// The base.
    pub radix: Radix,
    /// `-0`: pad with zeros to the field's full width.
    pub zero_pad: bool,
    /// `-c`: C-language notation (`0x` prefix for hex).
    pub c_style: bool,
    /// `-f HIGH:LOW`: print only these bits, shifted down.
    pub field: Option<BitRange>,
}

impl ValueFormat {
    /// Renders `raw` (the full 64-bit MSR value).
    pub fn render(&self, raw: u64) -> String {
        let bits = self.field.unwrap_or(BitRange { high: 63, low: 0 });
        let v = bits.extract(raw);
        let width_bits = bits.width();
        match self.radix {
            Radix::Hex | Radix::HexUpper => {
                let digits = width_bits.div_ceil(4) as usize;
                let mut s = if self.zero_pad {
                    format!("{v:0digits$x}")
                } else {
                    format!("{v:x}")
                };
                if self.radix == Radix::HexUpper {
                    s = s.to_ascii_uppercase();
                }
                if self.c_style {
                    s.insert_str(0, "0x");
                }
                s
            }
            Radix::Unsigned => {
                if self.zero_pad {
                    let digits = decimal_digits(bits.mask() >> bits.low);
                    format!("{v:0digits$}")
                } else {
                    v.to_string()
                }
            }
            Radix::Signed => {
                let signed = if width_bits < 64 && v >> (width_bits - 1) & 1 == 1 {
                    (v | !((1u64 << width_bits) - 1)) as i64
                } else {
                    v as i64
                };
                signed.to_string()
            }
        }
    }
}

fn decimal_digits(max: u64) -> usize {
    max.to_string().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(radix: Radix, zero_pad: bool, c_style: bool, field: Option<&str>) -> ValueFormat {
        ValueFormat {
            radix,
            zero_pad,
            c_style,
            field: field.map(|t| BitRange::parse(t).unwrap()),
        }
    }

    #[test]
    fn matches_rdmsr_output() {
        let v = 0x0000_00ab_cdef_0123u64;
        assert_eq!(f(Radix::Hex, false, false, None).render(v), "abcdef0123");
        assert_eq!(
            f(Radix::HexUpper, false, false, None).render(v),
            "ABCDEF0123"
        );
        assert_eq!(
            f(Radix::Hex, true, false, None).render(v),
            "000000abcdef0123"
        );
        assert_eq!(f(Radix::Hex, false, true, None).render(v), "0xabcdef0123");
        assert_eq!(f(Radix::Unsigned, false, false, None).render(255), "255");
        assert_eq!(
            f(Radix::Unsigned, true, false, Some("7:0")).render(5),
            "005"
        );
        assert_eq!(f(Radix::Signed, false, false, None).render(u64::MAX), "-1");
        assert_eq!(
            f(Radix::Signed, false, false, Some("7:0")).render(0xff),
            "-1"
        );
        assert_eq!(
            f(Radix::Signed, false, false, Some("7:0")).render(0x7f),
            "127"
        );
        assert_eq!(f(Radix::Hex, true, false, Some("11:8")).render(0xabc), "a");
        assert_eq!(
            f(Radix::Hex, true, false, Some("15:8")).render(0x0abc),
            "0a"
        );
        assert_eq!(f(Radix::Hex, false, false, Some("1")).render(0b10), "1");
    }
}
