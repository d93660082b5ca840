//! The MSR catalog: every MSR kvmcap knows, described as data in `fixtures/msr/catalog.toml`.
//!
//! Loading validates the whole file and names the entry and line of the first problem, so a bad
//! edit to the catalog is one readable message, never a panic or a silently wrong comparison.

mod entry;

use std::collections::HashMap;
use std::path::Path;

pub use entry::{BitRange, DecodedField, Field, MsrEntry, Rule, Scope, Vendor};

use crate::index::MsrIndex;

/// The catalog compiled into every binary, so a guest's `/init` needs no file.
pub const BUILTIN_CATALOG: &str = include_str!("../../../fixtures/msr/catalog.toml");

/// What is wrong with a catalog file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// catalog {origin}: cannot read: {message}
    #[error("catalog {origin}: cannot read: {message}")]
    Read {
        /// The file.
        origin: String,
        /// The OS error.
        message: String,
    },
    /// catalog {origin}: {message}
    #[error("catalog {origin}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// catalog {origin}, line {line}: entry `{name}`: {problem}
    #[error("catalog {origin}, line {line}: entry `{name}`: {problem}")]
    Entry {
        /// The file.
        origin: String,
        /// The line where the entry starts.
        line: usize,
        /// The entry's name (or its index when the name is the problem).
        name: String,
        /// What is wrong.
        problem: String,
    },
}

use crate::catalog_raw::{parse_entries, RawEntry};

mod builtin {
    use crate::catalog_raw::{RawEntry, RawField};
    include!(concat!(env!("OUT_DIR"), "/builtin_catalog.rs"));
}

/// The validated catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    entries: Vec<MsrEntry>,
    by_index: HashMap<MsrIndex, usize>,
    origin: String,
}

impl Catalog {
    /// The catalog compiled into the binary (`fixtures/msr/catalog.toml`, turned into Rust
    /// data by the build script and validated here like any catalog file).
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::validate(builtin::entries(), "fixtures/msr/catalog.toml (built in)")
    }

    /// Loads and validates a catalog file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Read {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and validates catalog text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let raw = parse_entries(text).map_err(|e| CatalogError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Self::validate(raw, origin)
    }

    /// Validates raw entries, each with the line it starts on.
    fn validate(raw: Vec<(usize, RawEntry)>, origin: &str) -> Result<Self, CatalogError> {
        let mut entries = Vec::with_capacity(raw.len());
        let mut by_index = HashMap::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (line, r) in raw {
            let err = |name: &str, problem: String| CatalogError::Entry {
                origin: origin.to_owned(),
                line,
                name: name.to_owned(),
                problem,
            };
            let name = r.name.trim().to_owned();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(err(
                    &format!("{:#x}", r.index),
                    format!("name `{}` must be non-empty [A-Za-z0-9_]", r.name),
                ));
            }
            let index = u32::try_from(r.index)
                .map(MsrIndex::new)
                .map_err(|_| err(&name, format!("index {:#x} is above 0xffffffff", r.index)))?;
            let vendor = match r.vendor.as_str() {
                "any" => Vendor::Any,
                "intel" => Vendor::Intel,
                "amd" => Vendor::Amd,
                v => {
                    return Err(err(
                        &name,
                        format!("unknown vendor `{v}` (expected any, intel or amd)"),
                    ))
                }
            };
            let scope = match r.scope.as_str() {
                "thread" => Scope::Thread,
                "core" => Scope::Core,
                "package" => Scope::Package,
                s => {
                    return Err(err(
                        &name,
                        format!("unknown scope `{s}` (expected thread, core or package)"),
                    ))
                }
            };
            let rule_name = r.rule.as_deref().unwrap_or("equal");
            if r.mask.is_some() && rule_name != "mask" {
                return Err(err(
                    &name,
                    format!("`mask` is only allowed with rule \"mask\", not \"{rule_name}\""),
                ));
            }
            if r.reason.is_some() && rule_name != "ignore" {
                return Err(err(
                    &name,
                    format!("`reason` is only allowed with rule \"ignore\", not \"{rule_name}\""),
                ));
            }
            let rule = match rule_name {
                "equal" => Rule::Equal,
                "monotonic" => Rule::Monotonic,
                "per-cpu" => Rule::PerCpu,
                "mask" => Rule::Mask {
                    mask: r
                        .mask
                        .ok_or_else(|| err(&name, "rule \"mask\" needs `mask = 0x...`".into()))?,
                },
                "ignore" => Rule::Ignore {
                    reason: r
                        .reason
                        .filter(|s| !s.trim().is_empty())
                        .ok_or_else(|| err(&name, "rule \"ignore\" needs a `reason`".into()))?,
                },
                other => {
                    return Err(err(
                        &name,
                        format!("unknown rule `{other}` (expected equal, mask, monotonic, per-cpu or ignore)"),
                    ))
                }
            };
            let mut fields: Vec<Field> = Vec::with_capacity(r.field.len());
            for f in r.field {
                let bits = BitRange::parse(&f.bits).ok_or_else(|| {
                    err(
                        &name,
                        format!(
                            "field `{}`: bits \"{}\" must be \"N\" or \"HIGH:LOW\" with bits 0..=63 and LOW <= HIGH",
                            f.name, f.bits
                        ),
                    )
                })?;
                if let Some(other) = fields.iter().find(|o| o.bits.mask() & bits.mask() != 0) {
                    return Err(err(
                        &name,
                        format!(
                            "field `{}` (bits {}) overlaps field `{}` (bits {})",
                            f.name, bits, other.name, other.bits
                        ),
                    ));
                }
                if fields.iter().any(|o| o.name.eq_ignore_ascii_case(&f.name)) {
                    return Err(err(&name, format!("field `{}` is named twice", f.name)));
                }
                fields.push(Field {
                    name: f.name,
                    bits,
                    description: f.description,
                });
            }
            if let Some(&prev) = by_index.get(&index) {
                let p: &MsrEntry = &entries[prev];
                return Err(err(
                    &name,
                    format!(
                        "duplicate index {index}: already used by `{}` at line {}",
                        p.name, p.line
                    ),
                ));
            }
            if let Some(&prev) = by_name.get(&name.to_ascii_uppercase()) {
                let p: &MsrEntry = &entries[prev];
                return Err(err(
                    &name,
                    format!(
                        "duplicate name: already used at line {} for {}",
                        p.line, p.index
                    ),
                ));
            }
            by_index.insert(index, entries.len());
            by_name.insert(name.to_ascii_uppercase(), entries.len());
            entries.push(MsrEntry {
                index,
                name,
                vendor,
                scope,
                rule,
                description: r.description,
                fields,
                line,
            });
        }
        Ok(Self {
            entries,
            by_index,
            origin: origin.to_owned(),
        })
    }

    /// Where the catalog came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[MsrEntry] {
        &self.entries
    }

    /// Every index, in file order.
    pub fn indices(&self) -> Vec<MsrIndex> {
        self.entries.iter().map(|e| e.index).collect()
    }

    /// The entry for `index`, if the catalog has one.
    pub fn get(&self, index: MsrIndex) -> Option<&MsrEntry> {
        self.by_index.get(&index).map(|&i| &self.entries[i])
    }

    /// The entry named `name`: exact (case-insensitive), or with an `MSR_`/`IA32_` prefix added,
    /// so `PPIN`, `ppin` and `MSR_PPIN` all find `MSR_PPIN`.
    pub fn by_name(&self, name: &str) -> Option<&MsrEntry> {
        let up = name.trim().to_ascii_uppercase();
        ["", "MSR_", "IA32_"].iter().find_map(|prefix| {
            let want = format!("{prefix}{up}");
            self.entries
                .iter()
                .find(|e| e.name.eq_ignore_ascii_case(&want))
        })
    }

    /// Resolves a user's MSR argument: a number (`0x4f`, `79`) or a catalog name (`PPIN`).
    pub fn resolve(&self, spec: &str) -> Result<MsrIndex, UnknownMsr> {
        if let Ok(i) = spec.parse::<MsrIndex>() {
            return Ok(i);
        }
        self.by_name(spec)
            .map(|e| e.index)
            .ok_or_else(|| UnknownMsr {
                spec: spec.to_owned(),
            })
    }

    /// The catalog name of `index`, or `"?"`.
    pub fn name_of(&self, index: MsrIndex) -> &str {
        self.get(index).map_or("?", |e| e.name.as_str())
    }
}

/// A user named an MSR that is neither a number nor in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_unknown(.spec))]
pub struct UnknownMsr {
    /// What the user typed.
    pub spec: String,
}

fn describe_unknown(spec: &str) -> String {
    let t = spec.trim();
    if t.is_empty() {
        "an empty MSR: give a number such as 0x4f or a name such as PPIN".into()
    } else if t.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
        format!(
            "`{spec}` is not an MSR index: expected a 32-bit number such as 0x4f, 79 or 0xc00102f1"
        )
    } else {
        format!("unknown MSR `{spec}`: not a number and not a name in the catalog (see `msr-probe list`)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[msr]]
index = 0x4e
name = "MSR_PPIN_CTL"
vendor = "intel"
scope = "package"
description = "PPIN control"

[[msr.field]]
name = "LockOut"
bits = "0"

[[msr.field]]
name = "Enable"
bits = "1"

[[msr]]
index = 0x10
name = "IA32_TIME_STAMP_COUNTER"
vendor = "any"
scope = "thread"
rule = "monotonic"
"#;

    fn entry(body: &str) -> String {
        format!("{GOOD}\n[[msr]]\n{body}\n")
    }

    fn problem(text: &str) -> (usize, String, String) {
        match Catalog::parse(text, "t.toml").unwrap_err() {
            CatalogError::Entry {
                line,
                name,
                problem,
                ..
            } => (line, name, problem),
            other => panic!("expected an entry error, got {other}"),
        }
    }

    /// The build script's Rust data and the TOML text give the same catalog, lines included.
    #[test]
    fn builtin_data_matches_the_catalog_file() {
        let built = Catalog::builtin().unwrap();
        let parsed = Catalog::parse(BUILTIN_CATALOG, "text").unwrap();
        assert_eq!(built.entries().len(), parsed.entries().len());
        for (b, p) in built.entries().iter().zip(parsed.entries()) {
            assert_eq!(format!("{b:?}"), format!("{p:?}"));
        }
    }

    #[test]
    fn good_catalog_loads_and_decodes() {
        let c = Catalog::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.entries().len(), 2);
        let ctl = c.get(MsrIndex::new(0x4e)).unwrap();
        assert_eq!(ctl.line, 2);
        assert_eq!(ctl.rule, Rule::Equal);
        let d = ctl.decode(0b10);
        assert_eq!((d[0].name.as_str(), d[0].value), ("LockOut", 0));
        assert_eq!((d[1].name.as_str(), d[1].value), ("Enable", 1));
        assert_eq!(c.resolve("ppin_ctl").unwrap(), MsrIndex::new(0x4e));
        assert_eq!(c.resolve("0x10").unwrap(), MsrIndex::new(0x10));
        assert_eq!(
            c.resolve("TIME_STAMP_COUNTER").unwrap(),
            MsrIndex::new(0x10)
        );
        assert!(c.resolve("NOPE").is_err());
    }

    #[test]
    fn duplicate_index_names_both_lines() {
        let (line, name, p) = problem(&entry(
            "index = 0x4e\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"",
        ));
        assert_eq!(line, 24);
        assert_eq!(name, "X");
        assert!(
            p.contains("duplicate index 0x4e")
                && p.contains("MSR_PPIN_CTL")
                && p.contains("line 2"),
            "{p}"
        );
    }

    #[test]
    fn duplicate_name_is_rejected() {
        let (_, name, p) = problem(&entry(
            "index = 0x99\nname = \"msr_ppin_ctl\"\nvendor = \"any\"\nscope = \"thread\"",
        ));
        assert_eq!(name, "msr_ppin_ctl");
        assert!(p.contains("duplicate name"), "{p}");
    }

    #[test]
    fn overlapping_fields_are_rejected() {
        let (_, name, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"\n[[msr.field]]\nname = \"A\"\nbits = \"7:0\"\n[[msr.field]]\nname = \"B\"\nbits = \"8:7\"",
        ));
        assert_eq!(name, "X");
        assert!(
            p.contains("`B` (bits 8:7) overlaps field `A` (bits 7:0)"),
            "{p}"
        );
    }

    #[test]
    fn bit_above_63_is_rejected() {
        let (_, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"\n[[msr.field]]\nname = \"A\"\nbits = \"64\"",
        ));
        assert!(p.contains("bits \"64\""), "{p}");
        let (_, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"\n[[msr.field]]\nname = \"A\"\nbits = \"3:5\"",
        ));
        assert!(p.contains("LOW <= HIGH"), "{p}");
    }

    #[test]
    fn unknown_rule_vendor_scope_are_rejected() {
        let (line, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"\nrule = \"fuzzy\"",
        ));
        assert_eq!(line, 24);
        assert!(p.contains("unknown rule `fuzzy`"), "{p}");
        let (_, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"via\"\nscope = \"thread\"",
        ));
        assert!(p.contains("unknown vendor `via`"), "{p}");
        let (_, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"amd\"\nscope = \"die\"",
        ));
        assert!(p.contains("unknown scope `die`"), "{p}");
    }

    #[test]
    fn rule_arguments_are_checked() {
        let (_, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"\nrule = \"mask\"",
        ));
        assert!(p.contains("needs `mask"), "{p}");
        let (_, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"\nrule = \"ignore\"",
        ));
        assert!(p.contains("needs a `reason`"), "{p}");
        let (_, _, p) = problem(&entry(
            "index = 0x99\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"\nmask = 3",
        ));
        assert!(p.contains("only allowed with rule \"mask\""), "{p}");
        let (_, _, p) = problem(&entry(
            "index = 0x1_0000_0000\nname = \"X\"\nvendor = \"any\"\nscope = \"thread\"",
        ));
        assert!(p.contains("above 0xffffffff"), "{p}");
    }

    #[test]
    fn syntax_and_unknown_keys_are_errors_with_a_line() {
        let e = Catalog::parse("[[msr]]\nindex = 1\nnam = \"x\"\n", "t.toml").unwrap_err();
        let CatalogError::Syntax { message, .. } = e else {
            panic!("want syntax error")
        };
        assert!(message.contains("line"), "{message}");
        assert!(Catalog::load(Path::new("/nonexistent/catalog.toml")).is_err());
    }

    #[test]
    fn bit_range_math() {
        let r = BitRange::parse("63:0").unwrap();
        assert_eq!(r.mask(), u64::MAX);
        assert_eq!(BitRange::parse("11:8").unwrap().extract(0xabc), 0xa);
        assert_eq!(BitRange::parse(" 5 ").unwrap().to_string(), "5");
    }
}
