//! `cargo xtask patch-boot-verify`: patch KVM, build it, boot it in the lab, and prove the
//! guest sees the feature: the series' selftest, every PPIN scenario and the Linux-guest
//! verify with backend `kernel` and with backend `user` on 1 and 2 vCPUs. The kernel's
//! verdicts must equal the userspace model's (the oracle) and the committed expectations in
//! `xtask/tests/expected/`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::lab::{JobOutcome, LabRun};
use crate::{workspace_root, XtaskError};

/// The selftest the series adds.
pub const SELFTEST: &str = "ppin_test";

/// The paired jobs: each runs with `kernel` and with `user`, once per vendor pair.
pub const PAIRED: &[(&str, &str, u8)] = &[
    ("run", "ppin-ctl-states", 1),
    ("run", "ppin-ctl-states", 2),
    ("run", "ppin-enable", 1),
    ("explore", "ppin", 2),
    ("explore", "platform-info", 2),
    // Stock KVM features written from the manuals alone (no Rust): `kernel` is stock KVM here
    // (they have no capability), `user` the rules' model; the lab's KVM conforms to both
    // (docs/conformance.md).
    ("explore", "tsc-adjust", 2),
    ("explore", "cpuid-faulting", 2),
    ("probe", "ppin", 2),
    ("verify", "ppin", 1),
    ("verify", "ppin", 2),
];

/// The vendor pairs every paired job runs with: the guest's CPUID announces one of them. KVM
/// gates the pairs on the guest's CPUID, so the lab's emulated AMD host runs the Intel
/// handlers too.
pub const PAIRS: &[&str] = &["intel", "amd"];

/// A paired job's name.
pub fn paired_job(kind: &str, subject: &str, backend: &str, vcpus: u8, pair: &str) -> String {
    format!("{kind}:{subject}:{backend}:{vcpus}:{pair}")
}

/// How much of the matrix a patch-boot-verify run covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// Every job of [`jobs`]: kernel and user, both pairs, 1 and 2 vCPUs, the generated cases
    /// and the Linux guests.
    Full,
    /// The edit loop's: [`edit_jobs`], the selftest and the kernel backend's scenarios and
    /// probe on both pairs, each checked against its committed expectation (the user model's,
    /// which the last full run held equal to the kernel's). No generated cases, no Linux guest.
    Edit,
}

impl Tier {
    /// The tier's jobs.
    pub fn jobs(self) -> Vec<String> {
        match self {
            Tier::Full => jobs(),
            Tier::Edit => edit_jobs(),
        }
    }
}

/// The edit tier's jobs: the series' selftest (the check that killed every mutant the full
/// matrix kills, kernel-patches/MUTANTS.md) and, on both pairs, the kernel backend's
/// scenarios and probe: every PPIN MSR read and written on 1 and 2 vCPUs through the patched
/// KVM, a few hundred milliseconds each in the lab.
pub fn edit_jobs() -> Vec<String> {
    let mut v = vec![format!("selftest:{SELFTEST}:kernel:1")];
    for pair in PAIRS {
        for (kind, subject, vcpus) in PAIRED {
            if matches!(*kind, "run" | "probe") {
                v.push(paired_job(kind, subject, "kernel", *vcpus, pair));
            }
        }
    }
    v
}

/// Every lab job of a patch-boot-verify run.
pub fn jobs() -> Vec<String> {
    let mut v = vec![format!("selftest:{SELFTEST}:kernel:1")];
    for pair in PAIRS {
        for (kind, subject, vcpus) in PAIRED {
            for backend in ["kernel", "user"] {
                v.push(paired_job(kind, subject, backend, *vcpus, pair));
            }
        }
    }
    v.push("run:ppin-absent:none:2".into());
    v
}

/// Where the committed expectations live.
pub fn expected_dir() -> PathBuf {
    workspace_root().join("xtask/tests/expected")
}

/// A job's view with the backend named neutrally, so kernel and user compare equal.
pub fn neutral(view: &Value) -> Value {
    match view {
        Value::Object(m) => {
            let mut m = m.clone();
            m.remove("backend");
            m.remove("negotiation");
            Value::Object(m)
        }
        Value::Array(lines) => Value::Array(
            lines
                .iter()
                .map(|l| match l.as_str() {
                    // A case's pass/FAIL follows from its steps: drop it, so the first
                    // difference found is the step itself.
                    Some(s) if s.starts_with("case ") => Value::String(
                        s.trim_end_matches(": pass")
                            .trim_end_matches(": FAIL")
                            .to_owned(),
                    ),
                    Some(s) => Value::String(
                        s.replace("backend kernel", "backend *")
                            .replace("backend user", "backend *"),
                    ),
                    None => l.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The first place two views differ, in words (a scenario step, or a reading).
pub fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &format!("{path}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let (p, q) = (
                    x.get(i).unwrap_or(&Value::Null),
                    y.get(i).unwrap_or(&Value::Null),
                );
                // Name scenario steps by their line, readings by their cpu and MSR.
                let label = match (p.as_str(), p.get("cpu"), p.get("msr")) {
                    (Some(_), _, _) => format!("{path}[{i}]"),
                    (None, Some(c), Some(m)) => {
                        format!("{path}[cpu{c} {}]", m.as_str().unwrap_or("?"))
                    }
                    _ => format!("{path}[{i}]"),
                };
                if let Some(d) = first_difference(p, q, &label) {
                    return Some(d);
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

/// One row of the summary.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// The vendor pair the guest's CPUID announced (`-` where none applies).
    pub pair: String,
    /// Whether it holds.
    pub pass: bool,
    /// The difference, if any.
    pub detail: String,
}

fn file_name(job: &str) -> String {
    job.replace(':', "_")
}

fn outcome<'a>(run: &'a LabRun, job: &str) -> Result<&'a JobOutcome, String> {
    run.jobs
        .iter()
        .flatten()
        .find(|o| o.job == job)
        .ok_or_else(|| {
            run.jobs
                .iter()
                .filter_map(|j| j.as_ref().err())
                .find(|e| e.starts_with(job))
                .cloned()
                .unwrap_or_else(|| format!("{job}: no report"))
        })
}

/// Checks a lab run of `ran` (every job of [`jobs`], or one shard's share, which keeps each
/// kernel/user pair together): every job passed, kernel == user for each pair, and each pair
/// equals its committed expectation. A difference from the expectation leaves the run's view
/// beside it as `NAME.snap.new`, for `cargo insta review` (`cargo xtask review`); `bless`
/// writes the expectations instead.
pub fn check(run: &LabRun, ran: &[String], bless: bool) -> Result<Vec<Check>, XtaskError> {
    let mut checks = Vec::new();
    for job in ran {
        let (what, pair) = match job.rsplit_once(':') {
            Some((w, p)) if PAIRS.contains(&p) => (w.to_owned(), p.to_owned()),
            _ => (job.clone(), "-".to_owned()),
        };
        let c = match outcome(run, job) {
            Ok(o) => Check {
                what,
                pair,
                pass: o.pass,
                detail: if o.pass {
                    String::new()
                } else {
                    summary_of_failure(&o.report)
                },
            },
            Err(e) => Check {
                what,
                pair,
                pass: false,
                detail: e,
            },
        };
        checks.push(c);
    }
    let dir = expected_dir();
    for (pair, &(kind, subject, vcpus)) in PAIRS
        .iter()
        .flat_map(|p| PAIRED.iter().map(move |j| (*p, j)))
    {
        let k = paired_job(kind, subject, "kernel", vcpus, pair);
        let u = paired_job(kind, subject, "user", vcpus, pair);
        if !ran.contains(&k) && !ran.contains(&u) {
            continue;
        }
        let name = format!("{kind}:{subject}:*:{vcpus}");
        // The edit tier runs the kernel's side alone: it is checked against the committed
        // expectation, the user model's view.
        let kernel_only = !ran.contains(&u);
        if kernel_only && bless {
            return Err(XtaskError::Usage(format!(
                "--bless needs the user model's view, and {u} did not run: bless from the full tier"
            )));
        }
        let pair_out = (outcome(run, &k), (!kernel_only).then(|| outcome(run, &u)));
        let uv = match pair_out {
            (Ok(ko), None) => neutral(&ko.snapshot),
            (Ok(ko), Some(Ok(uo))) => {
                let (kv, uv) = (neutral(&ko.snapshot), neutral(&uo.snapshot));
                let diff = first_difference(&kv, &uv, "");
                checks.push(Check {
                    what: format!("{name} kernel == user"),
                    pair: pair.to_owned(),
                    pass: diff.is_none(),
                    detail: diff
                        .map(|d| format!("kernel vs user at {d}"))
                        .unwrap_or_default(),
                });
                uv
            }
            _ => {
                checks.push(Check {
                    what: format!("{name} kernel == user"),
                    pair: pair.to_owned(),
                    pass: false,
                    detail: "a report is missing".into(),
                });
                continue;
            }
        };
        let path = dir.join(format!(
            "{}_{pair}.snap",
            file_name(&name.replace('*', "any"))
        ));
        let pending = path.with_extension("snap.new");
        let _ = std::fs::remove_file(&pending);
        if bless {
            crate::write_atomic(&path, snapshot_text(&uv).as_bytes())?;
        }
        let expected: Option<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| snapshot_body(&t).and_then(|b| serde_json::from_str(b).ok()));
        let (pass, detail) = match expected {
            Some(e) => match first_difference(&uv, &neutral(&e), "") {
                None => (true, String::new()),
                Some(d) => (
                    false,
                    format!(
                        "run vs committed {} at {d} (the run's view: {}; cargo xtask review)",
                        rel(&path),
                        rel(&pending)
                    ),
                ),
            },
            None => (
                false,
                format!(
                    "no committed expectation {} (the run's view: {}; cargo xtask review, or --bless)",
                    rel(&path),
                    rel(&pending)
                ),
            ),
        };
        if !pass {
            crate::write_atomic(&pending, snapshot_text(&uv).as_bytes())?;
        }
        checks.push(Check {
            what: format!("{name} == committed"),
            pair: pair.to_owned(),
            pass,
            detail,
        });
    }
    Ok(checks)
}

/// An expectation as an insta snapshot file (the header `cargo insta review` reads, then the
/// view as pretty JSON), so `cargo insta review --workspace` reviews a run's differences like
/// any other snapshot.
pub fn snapshot_text(view: &Value) -> String {
    format!(
        "---\nsource: xtask/src/pbv.rs\nexpression: view\n---\n{}\n",
        serde_json::to_string_pretty(view).unwrap_or_default()
    )
}

/// The body of a snapshot file (after its header).
pub fn snapshot_body(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---\n")?;
    Some(&rest[end + 5..])
}

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn summary_of_failure(report: &Value) -> String {
    if let Some(s) = report.as_str() {
        return s.lines().next().unwrap_or("").to_owned();
    }
    if let Some(out) = report.get("output").and_then(Value::as_str) {
        return out
            .lines()
            .filter(|l| l.contains("FAIL") || l.contains("Assertion") || l.contains("not ok"))
            .take(2)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    // Scenario reports: the first failing step.
    if let Some(cases) = report.get("cases").and_then(Value::as_array) {
        for c in cases {
            for s in c
                .get("steps")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if s.get("pass") == Some(&Value::Bool(false)) {
                    return format!(
                        "case {}: cpu{} {}: expected {} model {} seen {}",
                        c["name"].as_str().unwrap_or("?"),
                        s["cpu"],
                        s["what"].as_str().unwrap_or("?"),
                        s["expected"],
                        s["model"],
                        s["seen"]
                    );
                }
            }
            if c.get("pass") == Some(&Value::Bool(false)) {
                return format!(
                    "case {}: {} (ends {}, expected {})",
                    c["name"].as_str().unwrap_or("?"),
                    c["negotiation"],
                    c["ends"],
                    c["expect_end"]
                );
            }
        }
    }
    if let Some(rows) = report.get("readings").and_then(Value::as_array) {
        for r in rows {
            if matches!(
                r.get("verdict").and_then(Value::as_str),
                Some("mismatch" | "unexpected-fault" | "not-run")
            ) {
                return format!(
                    "cpu{} {}: guest {} verdict {}",
                    r["cpu"],
                    r["name"].as_str().unwrap_or("?"),
                    r["guest"],
                    r["verdict"]
                );
            }
        }
    }
    "failed".into()
}

/// The summary table.
pub fn table(checks: &[Check]) -> String {
    let mut out = format!("{:<44} {:<6} {:<6} DETAIL\n", "CHECK", "PAIR", "RESULT");
    for c in checks {
        out.push_str(&format!(
            "{:<44} {:<6} {:<6} {}\n",
            c.what,
            c.pair,
            if c.pass { "pass" } else { "FAIL" },
            c.detail
        ));
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    out.push_str(&format!(
        "{}: {} checks, {failed} failed\n",
        if failed == 0 { "GREEN" } else { "RED" },
        checks.len()
    ));
    out
}

/// The summary of a run over one or more kernels: the [`table`] with a KERNEL column.
pub fn kernel_table(rows: &[(String, Vec<Check>)]) -> String {
    let mut out = format!(
        "{:<7} {:<44} {:<6} {:<6} DETAIL\n",
        "KERNEL", "CHECK", "PAIR", "RESULT"
    );
    for (kernel, checks) in rows {
        for c in checks {
            out.push_str(&format!(
                "{:<7} {:<44} {:<6} {:<6} {}\n",
                kernel,
                c.what,
                c.pair,
                if c.pass { "pass" } else { "FAIL" },
                c.detail
            ));
        }
    }
    let total: usize = rows.iter().map(|(_, c)| c.len()).sum();
    let failed = rows.iter().flat_map(|(_, c)| c).filter(|c| !c.pass).count();
    let kernels: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    out.push_str(&format!(
        "{}: {total} checks on kernel {}, {failed} failed\n",
        if failed == 0 { "GREEN" } else { "RED" },
        kernels.join(" and ")
    ));
    out
}

#[cfg(test)]
mod tests;
