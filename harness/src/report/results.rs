//! Results for machines: any report kind as a [`Suite`] of cases (pass, fail or skip, each
//! with its time where known), rendered as KTAP v1 (the kernel's test output format) or as
//! JUnit XML. A suite passes only if no case failed and at least one case passed: a run that
//! checked nothing is not a pass.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Pass,
    /// It failed, and why.
    Fail(String),
    /// It did not run, and why.
    Skip(String),
}

/// One case: a reading, a scenario case, a difference, a lab job's check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Its name (unique in its suite).
    pub name: String,
    /// How it ended.
    #[serde(flatten)]
    pub status: Status,
    /// Its time in milliseconds, where it was measured on its own.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub time_ms: Option<f64>,
}

impl Case {
    /// A case with no time of its own.
    pub fn new(name: impl Into<String>, status: Status) -> Self {
        Self {
            name: name.into(),
            status,
            time_ms: None,
        }
    }
}

/// A report as cases: one probe, verify, scenario run, exploration, caps scan or lab job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Suite {
    /// Its name (the command and subject, or the lab job).
    pub name: String,
    /// Its wall time in milliseconds.
    pub time_ms: f64,
    /// The cases, in order.
    pub cases: Vec<Case>,
    /// Why the whole suite did not run (every case absent), if it did not.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Cases by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Skipped.
    pub skip: usize,
}

impl Suite {
    /// The suite's cases by outcome.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for case in &self.cases {
            match case.status {
                Status::Pass => c.pass += 1,
                Status::Fail(_) => c.fail += 1,
                Status::Skip(_) => c.skip += 1,
            }
        }
        c
    }

    /// How the suite as a whole ended: failed if a case failed or it could not run; skipped if
    /// every case was skipped; failed if it has no case at all (nothing checked); else passed.
    pub fn status(&self) -> Status {
        let c = self.counts();
        if let Some(e) = &self.error {
            return Status::Fail(e.clone());
        }
        if c.fail > 0 {
            return Status::Fail(format!("{} of {} failed", c.fail, self.cases.len()));
        }
        if c.pass == 0 && c.skip > 0 {
            return Status::Skip(format!("all {} cases skipped", c.skip));
        }
        if c.pass == 0 {
            return Status::Fail("nothing was checked".into());
        }
        Status::Pass
    }

    /// Whether the suite passed.
    pub fn pass(&self) -> bool {
        self.status() == Status::Pass
    }
}

/// A KTAP test name: no `#` (it starts a directive) and no line breaks.
fn ktap_name(s: &str) -> String {
    s.chars()
        .map(|c| if c == '#' || c.is_control() { ' ' } else { c })
        .collect()
}

/// A diagnostic or directive text on one line.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r']).collect::<Vec<_>>().join(" | ")
}

fn ktap_result(out: &mut String, indent: &str, n: usize, name: &str, status: &Status) {
    let _ = match status {
        Status::Pass => writeln!(out, "{indent}ok {n} {}", ktap_name(name)),
        Status::Skip(why) => writeln!(
            out,
            "{indent}ok {n} {} # SKIP {}",
            ktap_name(name),
            one_line(why)
        ),
        Status::Fail(why) => writeln!(out, "{indent}# {}: {}", ktap_name(name), one_line(why))
            .and_then(|()| writeln!(out, "{indent}not ok {n} {}", ktap_name(name))),
    };
}

/// KTAP v1: one top-level test per suite, its cases as subtests.
pub fn ktap(suites: &[Suite]) -> String {
    let mut out = format!("KTAP version 1\n1..{}\n", suites.len());
    for (i, s) in suites.iter().enumerate() {
        let _ = writeln!(out, "  KTAP version 1");
        let _ = writeln!(out, "  # Subtest: {}", ktap_name(&s.name));
        let _ = writeln!(out, "  1..{}", s.cases.len());
        for (j, c) in s.cases.iter().enumerate() {
            ktap_result(&mut out, "  ", j + 1, &c.name, &c.status);
        }
        let c = s.counts();
        let _ = writeln!(
            out,
            "# {}: pass:{} fail:{} skip:{} time:{:.3}ms",
            ktap_name(&s.name),
            c.pass,
            c.fail,
            c.skip,
            s.time_ms
        );
        ktap_result(&mut out, "", i + 1, &s.name, &s.status());
    }
    out
}

/// Text for XML attributes and character data.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: f64) -> String {
    format!("{:.6}", ms / 1000.0)
}

/// JUnit XML: a `testsuite` per suite (its `time` the suite's), a `testcase` per case with
/// `<failure>` or `<skipped>`; a suite that could not run or checked nothing gets one failed
/// testcase saying so, so its failure is counted.
pub fn junit(suites: &[Suite]) -> String {
    let mut body = String::new();
    let (mut tests, mut failures, mut skipped, mut time) = (0, 0, 0, 0.0);
    for s in suites {
        let mut cases = s.cases.clone();
        if let (true, Status::Fail(why)) = (s.cases.is_empty() || s.error.is_some(), s.status()) {
            cases.push(Case::new(s.name.clone(), Status::Fail(why)));
        }
        let c = Suite {
            cases: cases.clone(),
            error: None,
            ..s.clone()
        }
        .counts();
        tests += cases.len();
        failures += c.fail;
        skipped += c.skip;
        time += s.time_ms;
        let _ = writeln!(
            body,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\">",
            xml(&s.name),
            cases.len(),
            c.fail,
            c.skip,
            secs(s.time_ms)
        );
        for case in &cases {
            let time = case
                .time_ms
                .map(|t| format!(" time=\"{}\"", secs(t)))
                .unwrap_or_default();
            let open = format!(
                "    <testcase classname=\"{}\" name=\"{}\"{time}",
                xml(&s.name),
                xml(&case.name)
            );
            let _ = match &case.status {
                Status::Pass => writeln!(body, "{open}/>"),
                Status::Fail(why) => writeln!(
                    body,
                    "{open}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml(&one_line(why)),
                    xml(why)
                ),
                Status::Skip(why) => writeln!(
                    body,
                    "{open}>\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml(&one_line(why))
                ),
            };
        }
        let _ = writeln!(body, "  </testsuite>");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"kvmcap\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{}\">\n{body}</testsuites>\n",
        secs(time)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suites() -> Vec<Suite> {
        vec![
            Suite {
                name: "probe ppin <user> & \"2\"".into(),
                time_ms: 12.5,
                cases: vec![
                    Case::new("cpu0 MSR_PPIN (0x4f)", Status::Pass),
                    Case {
                        name: "cpu1 MSR_PPIN # 2".into(),
                        status: Status::Fail("expected 0x1\nsaw <#GP>".into()),
                        time_ms: Some(1.0),
                    },
                    Case::new("cpu1 other", Status::Skip("needs 2 vCPUs".into())),
                ],
                error: None,
            },
            Suite {
                name: "run all-skipped".into(),
                time_ms: 0.0,
                cases: vec![Case::new("c", Status::Skip("needs 4 vCPUs".into()))],
                error: None,
            },
            Suite {
                name: "explore nothing".into(),
                time_ms: 3.0,
                cases: Vec::new(),
                error: None,
            },
            Suite {
                name: "lab job broke".into(),
                time_ms: 4.0,
                cases: Vec::new(),
                error: Some("no such scenario".into()),
            },
        ]
    }

    #[test]
    fn nothing_checked_is_not_a_pass() {
        let s = suites();
        assert!(matches!(s[0].status(), Status::Fail(_)));
        assert!(matches!(s[1].status(), Status::Skip(_)));
        assert_eq!(s[2].status(), Status::Fail("nothing was checked".into()));
        assert!(!s[3].pass());
        let ok = Suite {
            cases: vec![
                Case::new("a", Status::Pass),
                Case::new("b", Status::Skip("x".into())),
            ],
            ..s[2].clone()
        };
        assert!(ok.pass());
    }

    #[test]
    fn ktap_has_plan_results_skips_and_subtests() {
        let k = ktap(&suites());
        let lines: Vec<&str> = k.lines().collect();
        assert_eq!(&lines[..2], ["KTAP version 1", "1..4"]);
        assert!(lines.contains(&"  1..3"));
        assert!(lines.contains(&"  ok 1 cpu0 MSR_PPIN (0x4f)"));
        assert!(lines.contains(&"  not ok 2 cpu1 MSR_PPIN   2"));
        assert!(lines.contains(&"  # cpu1 MSR_PPIN   2: expected 0x1 | saw <#GP>"));
        assert!(lines.contains(&"  ok 3 cpu1 other # SKIP needs 2 vCPUs"));
        assert!(lines.contains(&"not ok 1 probe ppin <user> & \"2\""));
        assert!(lines.contains(&"ok 2 run all-skipped # SKIP all 1 cases skipped"));
        assert!(lines.contains(&"not ok 3 explore nothing"));
        assert!(lines.contains(&"not ok 4 lab job broke"));
        // Every top-level result line is numbered in order, and the plan matches.
        let top: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
            .copied()
            .collect();
        assert_eq!(top.len(), 4);
    }

    /// Parses the XML back and counts what a JUnit consumer counts.
    fn parse_counts(xml: &str) -> (usize, usize, usize, usize) {
        let doc = roxmltree::Document::parse(xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        let cases: Vec<_> = root
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let fail = cases
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
            .count();
        let skip = cases
            .iter()
            .filter(|c| c.children().any(|n| n.has_tag_name("skipped")))
            .count();
        let attr = |n: &str| root.attribute(n).unwrap().parse::<usize>().unwrap();
        assert_eq!(attr("tests"), cases.len());
        assert_eq!(attr("failures"), fail);
        assert_eq!(attr("skipped"), skip);
        for s in root.children().filter(|n| n.has_tag_name("testsuite")) {
            let t: f64 = s.attribute("time").unwrap().parse().unwrap();
            assert!(t >= 0.0);
        }
        (cases.len(), cases.len() - fail - skip, fail, skip)
    }

    #[test]
    fn junit_parses_with_the_suites_counts_and_escapes() {
        let s = suites();
        let x = junit(&s);
        let (tests, pass, fail, skip) = parse_counts(&x);
        // Suite 0: 1/1/1; suite 1: one skip; suites 2 and 3: one failure each, said so.
        assert_eq!((tests, pass, fail, skip), (6, 1, 3, 2));
        let doc = roxmltree::Document::parse(&x).unwrap();
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .unwrap();
        assert_eq!(failure.text(), Some("expected 0x1\nsaw <#GP>"));
        let suite0 = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite0.attribute("name"), Some("probe ppin <user> & \"2\""));
        assert_eq!(suite0.attribute("time"), Some("0.012500"));
        let timed = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .nth(1)
            .unwrap();
        assert_eq!(timed.attribute("time"), Some("0.001000"));
    }

    #[test]
    fn suites_survive_json_for_the_lab() {
        let s = suites();
        let back: Vec<Suite> = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
