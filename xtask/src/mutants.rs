//! `cargo xtask mutants`: does the loop catch a broken handler? Each mutant changes one thing
//! in the series' MSR handlers (the functions of `arch/x86/kvm/x86.c` whose names contain
//! `ppin`): a condition negated, an early return dropped, an error code swapped, a mask
//! swapped. Each is built incrementally and run in the lab against the checks that name the
//! rules (the selftest, the PPIN scenarios and `kvmcap explore` on both pairs, backend
//! `kernel`); a mutant is killed when one of them fails. The tree is restored after each.

use std::path::Path;

use crate::kernel::Kernel;
use crate::{initramfs, kbuild, lab, pbv, pipeline, XtaskError};

/// One mutant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mutant {
    /// What was changed, in words.
    pub what: String,
    /// The 1-based line of x86.c.
    pub line: usize,
    /// The mutated file.
    pub text: String,
}

/// What happened to a mutant.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The mutant.
    pub mutant: Mutant,
    /// `killed` (with the first failing job), `survived`, or `stillborn` (does not build).
    pub verdict: String,
    /// The first failing job, or the build error.
    pub detail: String,
}

/// The lab jobs a mutant must get past.
pub fn jobs() -> Vec<String> {
    let mut v = vec![format!("selftest:{}:kernel:1", pbv::SELFTEST)];
    for pair in pbv::PAIRS {
        v.push(format!("run:ppin-ctl-states:kernel:2:{pair}"));
        v.push(format!("explore:ppin:kernel:2:{pair}"));
    }
    v.push("run:ppin-enable:kernel:1:amd".into());
    v
}

/// The line ranges of the series' handlers: functions whose name contains `ppin`.
fn handler_lines(lines: &[&str]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, l) in lines.iter().enumerate() {
        if !inside && l.starts_with("static ") && l.contains("ppin") && l.contains('(') {
            inside = true;
        }
        if inside {
            out.push(i);
            if *l == "}" {
                inside = false;
            }
        }
    }
    out
}

/// Where the `)` closing the `(` at `open` is, across lines: (line, byte).
fn closing(lines: &[&str], line: usize, open: usize) -> Option<(usize, usize)> {
    let mut depth = 0i32;
    for (li, l) in lines.iter().enumerate().skip(line) {
        let start = if li == line { open } else { 0 };
        for (bi, c) in l.char_indices().skip_while(|(b, _)| *b < start) {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((li, bi));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// Every mutant of `source` (x86.c's text).
pub fn generate(source: &str) -> Vec<Mutant> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = Vec::new();
    let make = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        edit(&mut v);
        v.join("\n") + "\n"
    };
    for &i in &handler_lines(&lines) {
        let l = lines[i];
        let t = l.trim_start();
        let indent = &l[..l.len() - t.len()];
        if let Some(open) = l.find("if (").map(|p| p + 3) {
            if let Some((cl, cb)) = closing(&lines, i, open) {
                let text = make(&|v: &mut Vec<String>| {
                    v[cl].insert(cb, ')');
                    v[i].replace_range(open..=open, "(!(");
                });
                out.push(Mutant {
                    what: format!("negate the condition `{}`", t.trim_end_matches(['{', ' '])),
                    line: i + 1,
                    text,
                });
            }
        }
        let swaps: &[(&str, &str, &str)] = &[
            (
                "return 1;",
                "return 0;",
                "swap the error code: #GP becomes success",
            ),
            (
                "return KVM_MSR_RET_UNSUPPORTED;",
                "return 1;",
                "swap the error code: UNSUPPORTED becomes #GP",
            ),
        ];
        for (from, to, why) in swaps {
            if t == *from {
                out.push(Mutant {
                    what: format!("{why} (`{from}`)"),
                    line: i + 1,
                    text: make(&|v: &mut Vec<String>| v[i] = format!("{indent}{to}")),
                });
                let prev = lines.get(i.wrapping_sub(1)).map_or("", |p| p.trim());
                if prev.starts_with("if (") || prev.ends_with(')') || prev.ends_with("))") {
                    out.push(Mutant {
                        what: format!("drop the early return `{from}`"),
                        line: i + 1,
                        text: make(&|v: &mut Vec<String>| v[i] = format!("{indent}{{}}")),
                    });
                }
            }
        }
        for (from, to) in [
            ("PPIN_CTL_LOCKOUT", "PPIN_CTL_ENABLE"),
            ("PPIN_CTL_ENABLE", "PPIN_CTL_LOCKOUT"),
        ] {
            if l.contains(from) && !l.contains("const u64 valid") {
                out.push(Mutant {
                    what: format!("change the mask {from} to {to} in `{}`", t),
                    line: i + 1,
                    text: make(&|v: &mut Vec<String>| v[i] = l.replacen(from, to, 1)),
                });
            }
        }
    }
    out
}

/// Runs every mutant of the main line's handlers in the lab.
pub fn run() -> Result<Vec<Outcome>, XtaskError> {
    let art = pipeline::prepare_kernel(Kernel::Newest, pipeline::Source::Debian)?;
    let file = art.tree.dir.join("arch/x86/kvm/x86.c");
    let original = std::fs::read_to_string(&file).map_err(|e| XtaskError::Output {
        path: file.clone(),
        problem: e.to_string(),
    })?;
    // A run cut off mid-mutant would leave the mutant in the tree: drop the series' applied
    // stamp first, so the next `cargo xtask` applies the series afresh whatever happens here.
    if let Some(root) = art.tree.dir.parent() {
        let _ = std::fs::remove_file(root.join(".applied"));
    }
    let mutants = generate(&original);
    eprintln!("xtask: {} mutants of the series' handlers", mutants.len());
    let mut out = Vec::new();
    for (n, m) in mutants.into_iter().enumerate() {
        eprintln!("xtask: mutant {}: line {}: {}", n + 1, m.line, m.what);
        let outcome = run_one(&art, &file, &m);
        restore(&file, &original)?;
        let (verdict, detail) = match outcome {
            Ok(None) => ("survived".to_owned(), String::new()),
            Ok(Some(job)) => ("killed".to_owned(), job),
            Err(e) => (
                "stillborn".to_owned(),
                e.to_string().lines().next().unwrap_or("").to_owned(),
            ),
        };
        eprintln!("xtask:   {verdict} {detail}");
        out.push(Outcome {
            mutant: m,
            verdict,
            detail,
        });
    }
    // Leave the kernel built from the unmutated tree.
    kbuild::build(&art.tree)?;
    Ok(out)
}

fn restore(file: &Path, original: &str) -> Result<(), XtaskError> {
    std::fs::write(file, original).map_err(|e| XtaskError::Output {
        path: file.to_owned(),
        problem: e.to_string(),
    })
}

/// Builds and runs one mutant: `Some(job)` names the first job that failed (killed).
fn run_one(
    art: &pipeline::Artifacts,
    file: &Path,
    m: &Mutant,
) -> Result<Option<String>, XtaskError> {
    restore(file, &m.text)?;
    let built = kbuild::build(&art.tree)?;
    let mut opts = art.lab_options(jobs(), initramfs::out_dir().join("mutants/console.log"));
    opts.kernel = built.bzimage;
    let run = lab::run(&opts)?;
    Ok(jobs()
        .into_iter()
        .zip(&run.jobs)
        .find_map(|(job, r)| match r {
            Ok(o) if o.pass => None,
            Ok(_) => Some(job),
            Err(e) => Some(format!("{job}: {}", e.lines().next().unwrap_or(""))),
        }))
}

/// The report: the score, then every mutant with its verdict.
pub fn report(outcomes: &[Outcome]) -> String {
    let live: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.verdict != "stillborn")
        .collect();
    let killed = live.iter().filter(|o| o.verdict == "killed").count();
    let mut md = format!(
        "# Mutants of the KVM_CAP_PPIN handlers\n\nGenerated by `cargo xtask mutants`; do not edit. \
         Each mutant changes one thing in the functions of the main line's `arch/x86/kvm/x86.c` \
         whose names contain `ppin`, is built incrementally and runs in the lab against: {}. \
         A mutant is killed when one of them fails.\n\n**Score: {killed} of {} killed**{}.\n\n\
         | line | mutant | verdict | first failing check |\n|---|---|---|---|\n",
        jobs().join(", "),
        live.len(),
        if outcomes.len() > live.len() {
            format!(" ({} did not build)", outcomes.len() - live.len())
        } else {
            String::new()
        }
    );
    for o in outcomes {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            o.mutant.line,
            o.mutant.what.replace('|', "\\|"),
            o.verdict,
            o.detail.replace('|', "\\|")
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "int a;\nstatic int kvm_set_ppin_msr(int x)\n{\n\tif ((x & ~3) ||\n\t    x == 3)\n\t\treturn 1;\n\tif (x & PPIN_CTL_LOCKOUT)\n\t\treturn KVM_MSR_RET_UNSUPPORTED;\n\treturn 0;\n}\nstatic int other(void)\n{\n\tif (a)\n\t\treturn 1;\n}\n";

    #[test]
    fn mutants_cover_conditions_returns_and_masks_of_ppin_functions_only() {
        let m = generate(SRC);
        let whats: Vec<&str> = m.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(m.len(), 7, "{whats:#?}");
        let neg = &m[0];
        assert!(
            neg.text.contains("\tif (!((x & ~3) ||\n\t    x == 3))\n"),
            "{}",
            neg.text
        );
        assert!(m
            .iter()
            .any(|m| m.text.contains("\t\treturn 0;\n\tif (x & PPIN")));
        assert!(m.iter().any(|m| m.text.contains("x == 3)\n\t\t{}\n")));
        assert!(m
            .iter()
            .any(|m| m.text.contains("if (x & PPIN_CTL_ENABLE)")));
        assert!(m
            .iter()
            .any(|m| m.text.contains("\t\treturn 1;\n\treturn 0;")));
        // Nothing outside the ppin functions is touched.
        assert!(m
            .iter()
            .all(|m| m.text.ends_with("\tif (a)\n\t\treturn 1;\n}\n")));
    }
}
