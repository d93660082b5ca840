//! Where a command's document goes: standard output in the chosen [`Format`], the JSON to
//! `--report PATH|-`, JUnit XML to `--junit PATH|-`, and the exit accounting with `--stats`.
//! All files through [`write_report`]: atomic for regular files, written through for pipes and
//! devices, `-` for standard output.

use std::path::PathBuf;

use super::document::{json, Document, Format};
use super::results::ktap;
use super::write::{write_report, WriteError, WriteMode};
use crate::vmm::stats::stats_table;

/// What the user asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputOptions {
    /// Standard output's format.
    pub format: Format,
    /// `--report PATH|-`: the JSON document.
    pub report: Option<PathBuf>,
    /// `--junit PATH|-`: JUnit XML.
    pub junit: Option<PathBuf>,
    /// `--stats`: the exit accounting table after the text (as `#` lines in KTAP; the JSON
    /// always carries it).
    pub stats: bool,
}

/// Why the output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The document could not be serialized.
    #[error("serializing the report: {0}")]
    Json(#[from] serde_json::Error),
    /// The `--report` file.
    #[error("report {0}")]
    Report(#[source] WriteError),
    /// The `--junit` file.
    #[error("junit {0}")]
    Junit(#[source] WriteError),
    /// Standard output.
    #[error("standard output: {0}")]
    Stdout(#[source] std::io::Error),
}

/// What [`render_stdout`] prints for `doc`: the table (with `--stats` the exit accounting after
/// it), the JSON, or KTAP (with `--stats` the accounting as diagnostic lines).
pub fn render_stdout<D: Document + ?Sized>(
    o: &OutputOptions,
    doc: &D,
    table: impl FnOnce() -> String,
) -> Result<String, serde_json::Error> {
    let stats = o
        .stats
        .then(|| doc.exit_stats())
        .filter(|s| !s.is_empty())
        .map(|s| stats_table(&s));
    Ok(match o.format {
        Format::Text => {
            let mut t = table();
            if let Some(s) = stats {
                t.push_str("exits per vCPU:\n");
                t.push_str(&s);
            }
            t
        }
        Format::Json => json(doc)?,
        Format::Ktap => {
            let mut k = ktap(&doc.suites());
            if let Some(s) = stats {
                for line in s.lines() {
                    k.push_str(&format!("# {line}\n"));
                }
            }
            k
        }
    })
}

/// Writes `doc` everywhere `o` says. The files come first; a `--report` or `--junit` that is
/// standard output (`-`, `/dev/stdout`) takes its place: the format's own rendering is then
/// not printed too, so standard output holds one document.
pub fn emit<D: Document + ?Sized>(
    o: &OutputOptions,
    doc: &D,
    table: impl FnOnce() -> String,
) -> Result<(), EmitError> {
    let mut stdout_taken = false;
    if let Some(path) = &o.report {
        let mode = write_report(path, json(doc)?.as_bytes()).map_err(EmitError::Report)?;
        stdout_taken |= mode == WriteMode::Stdout;
    }
    if let Some(path) = &o.junit {
        let xml = super::document::junit_of(doc);
        let mode = write_report(path, xml.as_bytes()).map_err(EmitError::Junit)?;
        stdout_taken |= mode == WriteMode::Stdout;
    }
    if !stdout_taken {
        let text = render_stdout(o, doc, table)?;
        super::write::stdout(text.as_bytes()).map_err(EmitError::Stdout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::results::{Case, Status, Suite};
    use crate::vmm::stats::ExitStats;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Doc {
        schema: &'static str,
        pass: bool,
        #[serde(serialize_with = "crate::json::u64_hex")]
        ppin: u64,
    }

    impl Document for Doc {
        fn pass(&self) -> bool {
            self.pass
        }
        fn suites(&self) -> Vec<Suite> {
            vec![Suite {
                name: "doc".into(),
                time_ms: 2.0,
                cases: vec![
                    Case::new("a", Status::Pass),
                    Case::new("b", Status::Skip("later".into())),
                ],
                error: None,
            }]
        }
        fn exit_stats(&self) -> Vec<ExitStats> {
            let mut s = ExitStats::default();
            s.exits.msr_read = 7;
            vec![s.seal()]
        }
    }

    fn doc() -> Doc {
        Doc {
            schema: "test/1",
            pass: true,
            ppin: 0x1122_3344_5566_7788,
        }
    }

    #[test]
    fn each_format_with_and_without_stats() {
        let mut o = OutputOptions::default();
        assert_eq!(render_stdout(&o, &doc(), || "T\n".into()).unwrap(), "T\n");
        o.stats = true;
        let t = render_stdout(&o, &doc(), || "T\n".into()).unwrap();
        assert!(t.starts_with("T\nexits per vCPU:\nVCPU"), "{t}");
        assert_eq!(
            t.lines().nth(3).unwrap().split_whitespace().nth(4),
            Some("0")
        );
        assert_eq!(
            t.lines().nth(3).unwrap().split_whitespace().nth(5),
            Some("7")
        );
        o.format = Format::Ktap;
        let k = render_stdout(&o, &doc(), || unreachable!()).unwrap();
        assert!(k.starts_with("KTAP version 1\n1..1\n"));
        assert!(
            k.contains(
                "  ok 2 b # SKIP later\n# doc: pass:1 fail:0 skip:1 time:2.000ms\nok 1 doc\n# VCPU"
            ),
            "{k}"
        );
        o.format = Format::Json;
        let j: serde_json::Value =
            serde_json::from_str(&render_stdout(&o, &doc(), || unreachable!()).unwrap()).unwrap();
        assert_eq!(j["ppin"], "0x1122334455667788");
    }

    #[test]
    fn report_and_junit_files_are_written() {
        let d = tempfile::tempdir().unwrap();
        let o = OutputOptions {
            format: Format::Text,
            report: Some(d.path().join("r.json")),
            junit: Some(d.path().join("j.xml")),
            stats: false,
        };
        emit(&o, &doc(), String::new).unwrap();
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("r.json")).unwrap()).unwrap();
        assert_eq!(r["schema"], "test/1");
        let x = std::fs::read_to_string(d.path().join("j.xml")).unwrap();
        let parsed = roxmltree::Document::parse(&x).unwrap();
        assert_eq!(parsed.root_element().attribute("skipped"), Some("1"), "{x}");
        let bad = OutputOptions {
            report: Some(d.path().join("no/such/dir/r.json")),
            ..o
        };
        assert!(matches!(
            emit(&bad, &doc(), String::new),
            Err(EmitError::Report(_))
        ));
    }
}
