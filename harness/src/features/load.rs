//! Loading a feature file: TOML into the raw form, then validated against the catalog into a
//! [`FeatureSpec`]. Every semantic error names the file, the line and the key.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::spec::*;
use crate::fixtures::{self, Kind, Missing};
use crate::kvm::cap_by_name;
use crate::x86::cpuid::{CpuVendor, CpuidBit};
use msr_probe::{Catalog, MsrIndex};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: String,
    #[serde(default)]
    description: String,
    model: ModelKind,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    rule: Vec<Spanned<Rule>>,
    #[serde(default)]
    register: Vec<Spanned<RawRegister>>,
    #[serde(default)]
    conformance: Vec<Conformance>,
    #[serde(default)]
    capability: Option<Spanned<RawCap>>,
    #[serde(default)]
    pair: Vec<Spanned<RawPair>>,
    #[serde(default)]
    initial: Option<RawInitial>,
    #[serde(default)]
    kvm_msr: Vec<Spanned<RawKvmMsr>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    name: String,
    #[serde(default)]
    number: Option<u32>,
    #[serde(default)]
    args: Vec<u64>,
    #[serde(default)]
    accepts: Vec<Vec<u64>>,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    vendor: CpuVendor,
    ctl: String,
    value: String,
    cpuid: CpuidBit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    name: String,
    #[serde(default)]
    msr: Option<String>,
    #[serde(default)]
    reset: u64,
    #[serde(default)]
    initial: Option<u64>,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    writable: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    bits: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitial {
    ctl: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKvmMsr {
    msr: String,
    default: u64,
}

/// Where a problem sits in the file's text: lines of keys, found inside a table's span.
struct Site<'t> {
    origin: &'t str,
    text: &'t str,
}

impl Site<'_> {
    /// The line (1-based) of byte `offset`.
    fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// The line of `key = ...` in the table whose header (or start) is at `span`: the keys
    /// between it and the next table header. The line of the header when the key is absent.
    fn key_line(&self, span: Range<usize>, key: &str) -> usize {
        let start = span.start.min(self.text.len());
        let mut offset = start;
        for (n, line) in self.text[start..].split_inclusive('\n').enumerate() {
            let t = line.trim_start();
            if t.starts_with('[') && n > 0 {
                break;
            }
            if t.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
            {
                return self.line_at(offset);
            }
            offset += line.len();
        }
        self.line_at(start)
    }

    /// An error at `key` of the table at `span`; `what` names the table (`rule "x"`).
    fn at(&self, span: Range<usize>, what: &str, key: &str, problem: String) -> FeatureError {
        FeatureError::Invalid {
            origin: self.origin.to_owned(),
            line: self.key_line(span, key),
            key: if what.is_empty() {
                key.to_owned()
            } else {
                format!("{what}.{key}")
            },
            problem,
        }
    }

    /// An error at a top-level key.
    fn top(&self, key: &str, problem: String) -> FeatureError {
        self.at(0..self.text.len(), "", key, problem)
    }
}

impl FeatureSpec {
    /// A feature by name (the user's fixtures directory, then the built-in ones: see
    /// [`crate::fixtures`]), or a feature file by path.
    pub fn find(name_or_path: &str, catalog: &Catalog) -> Result<Self, FeatureError> {
        match fixtures::text(Kind::Feature, name_or_path) {
            Ok((text, origin)) => Self::parse(&text, &origin, catalog),
            Err(Missing::Unknown { known }) => Err(FeatureError::Unknown {
                name: name_or_path.to_owned(),
                known,
            }),
            Err(Missing::Read { path, source }) => Err(FeatureError::Read { path, source }),
        }
    }

    /// Parses and validates a spec against the catalog.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog) -> Result<Self, FeatureError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| FeatureError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let site = Site { origin, text };
        let (raw_cap, cap_span) = match raw.capability {
            Some(c) => {
                let span = c.span();
                (c.into_inner(), span)
            }
            None if raw.model == ModelKind::Stock => (
                RawCap {
                    name: "none".into(),
                    number: Some(0),
                    args: vec![1],
                    accepts: Vec::new(),
                    required: false,
                },
                0..0,
            ),
            None => {
                return Err(site.top(
                    "model",
                    "needs [capability] (only model `stock` has none)".into(),
                ))
            }
        };
        let cap_err =
            |key: &str, problem: String| site.at(cap_span.clone(), "capability", key, problem);
        let number = match (raw_cap.number, cap_by_name(&raw_cap.name)) {
            (Some(0), _) if raw.model == ModelKind::Stock => 0,
            (Some(n), Some(known)) if n != known => {
                return Err(cap_err(
                    "number",
                    format!("capability {} is number {known}, not {n}", raw_cap.name),
                ))
            }
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => {
                return Err(cap_err(
                    "name",
                    format!(
                        "capability `{}` is not a known name: give `number`",
                        raw_cap.name
                    ),
                ))
            }
        };
        if raw_cap.args.len() > 4 {
            return Err(cap_err("args", "at most 4".into()));
        }
        let mut args = [0u64; 4];
        args[..raw_cap.args.len()].copy_from_slice(&raw_cap.args);
        if raw_cap.accepts.len() > 4 {
            return Err(cap_err("accepts", "at most 4 lists".into()));
        }
        let mut accepts: [Option<Vec<u64>>; 4] = Default::default();
        for (slot, list) in accepts.iter_mut().zip(raw_cap.accepts) {
            *slot = Some(list);
        }
        let mut ids = std::collections::BTreeSet::new();
        for r in &raw.rule {
            let what = format!("rule {:?}", r.get_ref().id);
            if !ids.insert(r.get_ref().id.as_str()) {
                return Err(site.at(r.span(), &what, "id", "defined twice".into()));
            }
            if r.get_ref().source.is_empty() {
                return Err(site.at(r.span(), &what, "source", "no [[rule.source]]".into()));
            }
        }
        let resolve = |span: Range<usize>, what: &str, key: &str, name: &str| {
            catalog
                .resolve(name)
                .map_err(|e| site.at(span, what, key, e.to_string()))
        };
        // Registers: a pair role takes its fields from the catalog entry of the first pair's
        // MSR unless the file gives them.
        let mut registers = Vec::new();
        for sr in &raw.register {
            let (r, span) = (sr.get_ref(), sr.span());
            let what = format!("register {:?}", r.name);
            let msr_index = match &r.msr {
                Some(m) => Some(resolve(span.clone(), &what, "msr", m)?),
                None if matches!(r.name.as_str(), "ctl" | "value") => None,
                None => {
                    return Err(site.at(
                        span,
                        &what,
                        "msr",
                        "give `msr`, or name it `ctl` or `value` (a role of the [[pair]]s)".into(),
                    ))
                }
            };
            let mut fields = Vec::new();
            for f in &r.fields {
                let bits = msr_probe::catalog::BitRange::parse(&f.bits).ok_or_else(|| {
                    site.at(
                        span.clone(),
                        &what,
                        "fields",
                        format!("field `{}`: bits `{}`: N or HIGH:LOW", f.name, f.bits),
                    )
                })?;
                fields.push((f.name.clone(), bits));
            }
            if fields.is_empty() {
                let from = msr_index.or_else(|| {
                    raw.pair.first().and_then(|p| {
                        let p = p.get_ref();
                        let name = if r.name == "ctl" { &p.ctl } else { &p.value };
                        catalog.resolve(name).ok()
                    })
                });
                if let Some(entry) = from.and_then(|i| catalog.get(i)) {
                    fields = entry
                        .fields
                        .iter()
                        .map(|f| (f.name.clone(), f.bits))
                        .collect();
                }
            }
            let writable = r.writable.unwrap_or_else(|| {
                if fields.is_empty() {
                    u64::MAX
                } else {
                    fields.iter().fold(0, |m, (_, b)| m | b.mask())
                }
            });
            registers.push(Register {
                name: r.name.clone(),
                msr: msr_index,
                reset: r.reset,
                initial: r.initial,
                fields,
                writable,
            });
        }
        let mut rules = Vec::with_capacity(raw.rule.len());
        for sr in raw.rule {
            let span = sr.span();
            let mut r = sr.into_inner();
            let what = format!("rule {:?}", r.id);
            if r.kind != RuleKind::Note {
                let reg_name = r.register.clone().ok_or_else(|| {
                    site.at(
                        span.clone(),
                        &what,
                        "register",
                        "needed by every kind but `note`".into(),
                    )
                })?;
                let reg = registers
                    .iter()
                    .find(|g| g.name == reg_name)
                    .ok_or_else(|| {
                        site.at(
                            span.clone(),
                            &what,
                            "register",
                            format!("no [[register]] `{reg_name}`"),
                        )
                    })?;
                if let Some(w) = &r.when {
                    let e = crate::features::rules::Expr::parse(w)
                        .map_err(|e| site.at(span.clone(), &what, "when", e.to_string()))?;
                    if let Some(name) = e
                        .names()
                        .into_iter()
                        .find(|n| !name_resolves(n, reg, &registers))
                    {
                        return Err(site.at(
                            span,
                            &what,
                            "when",
                            format!("`{name}` is not new, old, enabled, a register, REGISTER.Field or REGISTER.writable (or new./old. with a field of `{reg_name}`)"),
                        ));
                    }
                    r.condition = Some(e);
                }
            }
            rules.push(r);
        }
        let mut pairs = Vec::new();
        for sp in &raw.pair {
            let (p, span) = (sp.get_ref(), sp.span());
            let what = format!("pair {}", p.vendor);
            if p.cpuid.bit > 31 {
                return Err(site.at(
                    span,
                    &what,
                    "cpuid",
                    format!("CPUID bit {} > 31", p.cpuid.bit),
                ));
            }
            let ctl = resolve(span.clone(), &what, "ctl", &p.ctl)?;
            let entry = catalog.get(ctl).ok_or_else(|| {
                site.at(
                    span.clone(),
                    &what,
                    "ctl",
                    format!("{} is not in the catalog", p.ctl),
                )
            })?;
            let bit = |f: &str| {
                entry.field(f).map(|f| f.bits.mask()).ok_or_else(|| {
                    site.at(
                        span.clone(),
                        &what,
                        "ctl",
                        format!("catalog entry {} has no `{f}` field", entry.name),
                    )
                })
            };
            pairs.push(PpinPair {
                vendor: p.vendor,
                ctl,
                value: resolve(span.clone(), &what, "value", &p.value)?,
                cpuid: p.cpuid,
                lockout: bit("LockOut")?,
                enable: bit("Enable")?,
            });
        }
        let mut kvm_msrs = Vec::new();
        for k in &raw.kvm_msr {
            let msr: MsrIndex = resolve(k.span(), "kvm_msr", "msr", &k.get_ref().msr)?;
            kvm_msrs.push(KvmMsr {
                msr,
                default: k.get_ref().default,
            });
        }
        match raw.model {
            ModelKind::Ppin if pairs.is_empty() => {
                return Err(site.top("model", "model `ppin` needs at least one [[pair]]".into()))
            }
            ModelKind::KvmMsr if kvm_msrs.is_empty() => {
                return Err(site.top(
                    "model",
                    "model `kvm-msr` needs at least one [[kvm_msr]]".into(),
                ))
            }
            _ => {}
        }
        Ok(Self {
            name: raw.name,
            description: raw.description,
            model: raw.model,
            scope: raw.scope,
            rules,
            registers,
            conformance: raw.conformance,
            capability: CapSpec {
                name: raw_cap.name,
                number,
                args,
                accepts,
                required: raw_cap.required,
            },
            pairs,
            initial_ctl: raw.initial.map_or(0, |i| i.ctl),
            kvm_msrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIR: &str = "name = 'x'\nmodel = 'ppin'\n[capability]\nname = 'KVM_CAP_PPIN'\n\n[[pair]]\nvendor = 'intel'\nctl = 'MSR_PPIN_CTL'\nvalue = 'MSR_PPIN'\ncpuid = { leaf = 7, subleaf = 1, register = 'ebx', bit = 0 }\n\n[[register]]\nname = 'ctl'\n\n";

    fn rule(body: &str) -> String {
        format!("{PAIR}[[rule]]\nid = 'a'\nkind = 'write-gp'\n{body}says = 'x'\n[[rule.source]]\nmanual = 'm'\nsection = 's'\nsentence = 't'\n")
    }

    fn invalid(text: &str) -> (usize, String, String) {
        let c = Catalog::builtin().unwrap();
        match FeatureSpec::parse(text, "t.toml", &c).unwrap_err() {
            FeatureError::Invalid {
                origin,
                line,
                key,
                problem,
            } => {
                assert_eq!(origin, "t.toml");
                (line, key, problem)
            }
            e => panic!("not a semantic error: {e}"),
        }
    }

    #[test]
    fn semantic_errors_name_the_line_and_key() {
        // The valid base parses.
        let c = Catalog::builtin().unwrap();
        FeatureSpec::parse(
            &rule("register = 'ctl'\nwhen = 'new.Enable == 1'\n"),
            "t",
            &c,
        )
        .unwrap();
        let (line, key, p) = invalid(&rule("register = 'ctl'\nwhen = 'new.Bogus == 1'\n"));
        assert_eq!((line, key.as_str()), (19, "rule \"a\".when"), "{p}");
        let (line, key, _) = invalid(&rule("register = 'nope'\n"));
        assert_eq!((line, key.as_str()), (18, "rule \"a\".register"));
        // A missing key points at its table's header.
        let (line, key, _) = invalid(&rule(""));
        assert_eq!((line, key.as_str()), (15, "rule \"a\".register"));
        let (line, key, _) = invalid(&PAIR.replace("MSR_PPIN'", "MSR_NOPE'"));
        assert_eq!((line, key.as_str()), (9, "pair Intel.value"));
        let (line, key, _) = invalid(&PAIR.replace("bit = 0", "bit = 40"));
        assert_eq!((line, key.as_str()), (10, "pair Intel.cpuid"));
        let (line, key, _) =
            invalid("name = 'x'\nmodel = 'ppin'\n[capability]\nname = 'KVM_CAP_NOPE'\n");
        assert_eq!((line, key.as_str()), (4, "capability.name"));
        let (line, key, _) =
            invalid("name = 'x'\n\nmodel = 'ppin'\n[capability]\nname = 'KVM_CAP_PPIN'\n");
        assert_eq!((line, key.as_str()), (3, "model"));
    }
}
