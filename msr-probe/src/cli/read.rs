//! `msr-probe MSR...`, `--catalog` and `list`: what they print.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::Catalog;
use crate::cli::args::{Cpus, ReadArgs};
use crate::cli::exit::CliError;
use crate::reader::{DevMsr, Reading, Unavailable};
use crate::report::{Fingerprint, ProbeReport};
use crate::{MsrIndex, Rule};

/// What a command prints, and how it failed (if it did) after printing it. rdmsr prints the
/// CPUs it read before the one that failed, so msr-probe does too.
pub struct Outcome {
    /// The output.
    pub output: Vec<u8>,
    /// The failure after it.
    pub failure: Option<CliError>,
}

fn load_catalog(a: &ReadArgs) -> Result<Catalog, CliError> {
    Ok(match &a.catalog_file {
        Some(p) => Catalog::load(p)?,
        None => Catalog::builtin()?,
    })
}

fn is_ppin(entry_name: &str) -> bool {
    matches!(entry_name, "MSR_PPIN" | "MSR_AMD_PPIN")
}

/// `list [--json]`.
pub fn list(a: &ReadArgs) -> Result<Vec<u8>, CliError> {
    let catalog = load_catalog(a)?;
    if a.json {
        let mut doc = serde_json::to_string_pretty(catalog.entries())
            .map_err(|e| CliError::Internal(format!("catalog as JSON: {e}")))?;
        doc.push('\n');
        return Ok(doc.into_bytes());
    }
    let mut out = format!(
        "{:<12} {:<28} {:<6} {:<8} {:<10} FIELDS\n",
        "INDEX", "NAME", "VENDOR", "SCOPE", "RULE"
    );
    for e in catalog.entries() {
        let rule = match &e.rule {
            Rule::Equal => "equal".to_owned(),
            Rule::Mask { mask } => format!("mask {mask:#x}"),
            Rule::Monotonic => "monotonic".to_owned(),
            Rule::PerCpu => "per-cpu".to_owned(),
            Rule::Ignore { .. } => "ignore".to_owned(),
        };
        let fields: Vec<String> = e
            .fields
            .iter()
            .map(|f| format!("{}[{}]", f.name, f.bits))
            .collect();
        out.push_str(&format!(
            "{:<12} {:<28} {:<6} {:<8} {:<10} {}\n",
            e.index.to_string(),
            e.name,
            format!("{:?}", e.vendor).to_lowercase(),
            format!("{:?}", e.scope).to_lowercase(),
            rule,
            fields.join(" ")
        ));
    }
    Ok(out.into_bytes())
}

/// Reads MSRs: one value per line as rdmsr prints it (one MSR, no `--decode`/`--json`),
/// else the table or the JSON report.
pub fn read(a: &ReadArgs) -> Outcome {
    match read_inner(a) {
        Ok(o) => o,
        Err(e) => Outcome {
            output: Vec::new(),
            failure: Some(e),
        },
    }
}

fn read_inner(a: &ReadArgs) -> Result<Outcome, CliError> {
    let catalog = load_catalog(a)?;
    let reader = DevMsr::new(
        a.dev_root.clone().unwrap_or_else(|| "/dev/cpu".into()),
        a.sys_root
            .clone()
            .unwrap_or_else(|| "/sys/devices/system/cpu".into()),
    );
    let mut msrs: Vec<MsrIndex> = Vec::new();
    for m in &a.msrs {
        msrs.push(catalog.resolve(m)?);
    }
    if a.catalog_all {
        msrs.extend(catalog.indices());
    }
    let cpus = match a.cpus {
        Cpus::One(c) => vec![c],
        Cpus::All => reader
            .device_cpus()
            .map_err(|reason| CliError::Unavailable {
                reason,
                cpus: Vec::new(),
            })?,
    };
    let report = ProbeReport::collect(
        &reader,
        &catalog,
        &cpus,
        &msrs,
        Fingerprint::of_running_system(),
    );
    if msrs.len() == 1 && !a.decode && !a.json {
        return Ok(rdmsr_lines(a, &report));
    }
    // Reasons a read could not be attempted: one line per reason, naming the CPUs.
    let mut reasons: BTreeMap<Unavailable, BTreeSet<u32>> = BTreeMap::new();
    for (cpu, r) in report.iter() {
        if let Reading::Unavailable(u) = &r.reading {
            reasons.entry(u.clone()).or_default().insert(cpu);
        }
    }
    let all_unavailable = report
        .iter()
        .all(|(_, r)| matches!(r.reading, Reading::Unavailable(_)));
    let output = if a.json {
        let doc = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Internal(format!("report as JSON: {e}")))?;
        (doc + "\n").into_bytes()
    } else if all_unavailable {
        Vec::new()
    } else {
        table(&report, &catalog, a.decode).into_bytes()
    };
    let mut errors: Vec<CliError> = reasons
        .into_iter()
        .map(|(reason, cpus)| CliError::Unavailable {
            reason,
            cpus: cpus.into_iter().collect(),
        })
        .collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.exit().code()));
    let failure = match errors.len() {
        0 => None,
        1 => errors.pop(),
        _ => Some(CliError::Several(errors)),
    };
    Ok(Outcome { output, failure })
}

fn rdmsr_lines(a: &ReadArgs, report: &ProbeReport) -> Outcome {
    let mut output = Vec::new();
    for (cpu, r) in report.iter() {
        let failure = match &r.reading {
            Reading::Value(v) => {
                output.extend(a.format.render_line(*v));
                continue;
            }
            Reading::Fault(_) => CliError::Fault {
                cpu,
                index: r.index,
                name: r.name.clone(),
            },
            Reading::Unavailable(reason) => CliError::Unavailable {
                reason: reason.clone(),
                cpus: vec![cpu],
            },
        };
        return Outcome {
            output,
            failure: Some(failure),
        };
    }
    Outcome {
        output,
        failure: None,
    }
}

fn table(report: &ProbeReport, catalog: &Catalog, decode: bool) -> String {
    let mut out = format!(
        "{:<4} {:<12} {:<28} {:<20} NOTE\n",
        "CPU", "MSR", "NAME", "VALUE"
    );
    for c in &report.cpus {
        for r in &c.readings {
            let note = if is_ppin(&r.name) {
                match c.sysfs_ppin {
                    Some(v) => format!("kernel topology/ppin: {v:#018x}"),
                    None => "kernel topology/ppin: none".to_owned(),
                }
            } else {
                String::new()
            };
            let value = match &r.reading {
                Reading::Value(v) => format!("{v:#018x}"),
                Reading::Fault(f) => f.to_string(),
                Reading::Unavailable(u) => format!("unavailable: {}", short(u)),
            };
            let row = format!(
                "{:<4} {:<12} {:<28} {:<20} {}",
                c.cpu,
                r.index.to_string(),
                r.name,
                value,
                note
            );
            out.push_str(row.trim_end());
            out.push('\n');
            if let (true, Some(v), Some(e)) = (decode, r.reading.value(), catalog.get(r.index)) {
                for f in e.decode(v) {
                    out.push_str(&format!(
                        "{:<4} {:<12}   {:<26} {:#x}  [bits {}]\n",
                        "", "", f.name, f.value, f.bits
                    ));
                }
            }
        }
    }
    out
}

fn short(u: &Unavailable) -> &'static str {
    match u {
        Unavailable::NoDriver => "no msr driver",
        Unavailable::NoSuchCpu | Unavailable::UnknownCpu => "no such CPU",
        Unavailable::CpuLacksMsr => "no MSR support",
        Unavailable::PermissionDenied => "permission denied",
        Unavailable::Io(_) => "I/O error",
    }
}
