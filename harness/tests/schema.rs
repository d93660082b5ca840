//! Every kind of report kvmcap writes, made for real on KVM, validates against
//! `docs/schema/kvmcap.schema.json` (draft 2020-12; every object closed, so a field added,
//! renamed or retyped without the schema fails here), and its KTAP and JUnit agree with it.

mod common;

use std::path::PathBuf;

use kvmcap::backend::Backend;
use kvmcap::commands::caps::scan_caps;
use kvmcap::commands::explore::{explore, ExploreRequest};
use kvmcap::commands::probe::{probe_bare, ProbeRequest};
use kvmcap::commands::scenario::{run_scenario, RunReport, Scenario, SkippedBackend};
use kvmcap::features::{Announce, FeatureSpec};
use kvmcap::host::HostSources;
use kvmcap::lab::{parse_jobs, run_job, LabPaths};
use kvmcap::report::results::{junit, ktap, Status};
use kvmcap::report::{Document, KernelPpin};
use kvmcap::vmm::error::Limits;
use msr_probe::Catalog;
use serde_json::Value;

const PPIN: &str = "MSR_PPIN=0x1122334455667788";

fn validator() -> jsonschema::Validator {
    common::schema_validator()
}

fn assert_valid(v: &jsonschema::Validator, what: &str, doc: &Value) {
    common::assert_schema(v, what, doc)
}

/// JSON `pass`, KTAP and JUnit of one document agree.
fn assert_formats_agree(what: &str, doc: &impl Document) {
    let json = serde_json::to_value(doc).unwrap();
    assert_eq!(json["pass"], doc.pass(), "{what}");
    let suites = doc.suites();
    let k = ktap(&suites);
    assert!(
        k.starts_with(&format!("KTAP version 1\n1..{}\n", suites.len())),
        "{what}"
    );
    let x = junit(&suites);
    let parsed = roxmltree::Document::parse(&x).unwrap();
    let cases: Vec<_> = parsed
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let failed = cases
        .iter()
        .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
        .count();
    let skipped = cases
        .iter()
        .filter(|c| c.children().any(|n| n.has_tag_name("skipped")))
        .count();
    let own: usize = suites
        .iter()
        .map(|s| {
            s.cases
                .iter()
                .filter(|c| matches!(c.status, Status::Fail(_)))
                .count()
        })
        .sum();
    let own_skip: usize = suites.iter().map(|s| s.counts().skip).sum();
    assert_eq!(skipped, own_skip, "{what}");
    assert!(failed >= own, "{what}");
    // A document that passes has no failure anywhere.
    if doc.pass() {
        assert_eq!(failed, 0, "{what}: {x}");
        assert!(
            !k.lines().any(|l| l.trim_start().starts_with("not ok")),
            "{what}"
        );
    }
}

#[test]
fn every_report_kind_matches_the_schema() {
    let Some(kvm) = common::kvm() else { return };
    let v = validator();
    let catalog = Catalog::builtin().unwrap();
    let spec = FeatureSpec::find("ppin", &catalog).unwrap();
    let host = HostSources::default()
        .with_explicit(&[PPIN.to_owned()], &catalog)
        .unwrap();

    // kvmcap.report/1 from the bare probe, timed (cycles, tsc_khz).
    let report = probe_bare(
        &ProbeRequest {
            kvm_path: kvm.clone(),
            feature: Some(&spec),
            backend: Backend::User,
            announce: Announce::Both,
            vcpus: 2,
            msrs: spec.msrs(),
            host: &host,
            limits: Limits::default(),
            irqchip: false,
            timed: true,
        },
        &catalog,
    )
    .unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_valid(&v, "probe report", &json);
    assert_eq!(json["schema"], "kvmcap.report/1");
    let ppins: Vec<&Value> = json["readings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["guest"].get("value"))
        .filter(|v| *v == "0x1122334455667788")
        .collect();
    // Both pairs announced: MSR_PPIN and MSR_AMD_PPIN on each of 2 vCPUs.
    assert_eq!(ppins.len(), 4, "the PPIN, exact: {json:#}");
    assert_eq!(json["stats"].as_array().unwrap().len(), 2);
    assert!(json["stats"][0]["exits"]["msr_read"].as_u64().unwrap() > 0);
    assert_formats_agree("probe report", &report);

    // The same kind as `verify` fills it (a Linux guest cannot boot on every test host, so its
    // Linux-only fields are added to a real report): the kernel's PPIN per CPU.
    let mut linux = report.clone();
    linux.fingerprint.guest = "linux".into();
    linux.kernel_ppin = vec![
        KernelPpin {
            cpu: 0,
            seen: Some(0x1122_3344_5566_7788),
            expected: Some(0x1122_3344_5566_7788),
            ok: true,
        },
        KernelPpin {
            cpu: 1,
            seen: None,
            expected: Some(1),
            ok: false,
        },
    ];
    linux.notes = vec!["guest kernel 6.12".into()];
    let linux = linux.sealed();
    assert!(!linux.pass);
    assert_valid(&v, "verify report", &serde_json::to_value(&linux).unwrap());
    assert_formats_agree("verify report", &linux);

    // kvmcap.scenario/1 and kvmcap.run/1 (with a skipped backend).
    let scenario = Scenario::find("ppin-ctl-states", &catalog).unwrap();
    let sr = run_scenario(
        &scenario,
        Backend::User,
        2,
        Announce::Vendor,
        &kvm,
        &catalog,
        Limits::default(),
    )
    .unwrap();
    assert_valid(&v, "scenario report", &serde_json::to_value(&sr).unwrap());
    assert_formats_agree("scenario report", &sr);
    let run = RunReport::new(
        scenario.name.clone(),
        vec![sr],
        vec![SkippedBackend {
            backend: Backend::Kernel,
            reason: "the running kernel lacks KVM_CAP_X86_PPIN".into(),
        }],
    );
    assert_valid(&v, "run report", &serde_json::to_value(&run).unwrap());
    assert_formats_agree("run report", &run);
    assert!(ktap(&run.suites()).contains("# SKIP the running kernel lacks"));

    // kvmcap.explore/1.
    let ex = explore(
        &ExploreRequest {
            kvm_path: kvm.clone(),
            feature: &spec,
            backend: Backend::User,
            vcpus: 1,
            announce: Announce::Vendor,
            host: &host,
            limits: Limits::default(),
            kvm_label: "host".into(),
        },
        &catalog,
    )
    .unwrap();
    assert_valid(&v, "exploration", &serde_json::to_value(&ex).unwrap());
    assert_formats_agree("exploration", &ex);

    // kvmcap.caps/1.
    let caps = scan_caps(&kvm).unwrap();
    assert_valid(&v, "caps", &serde_json::to_value(&caps).unwrap());
    assert_formats_agree("caps", &caps);

    // kvmcap.lab-job/1 around each report kind a lab job makes (cost/1 and selftest/1 among
    // them) and around a job that could not run.
    let paths = LabPaths {
        kvm: kvm.clone(),
        selftests: PathBuf::from("/bin"),
        ..LabPaths::default()
    };
    let jobs = parse_jobs(
        "probe:ppin:user:2,run:ppin-ctl-states:user:2,explore:ppin:user:1,cost:ppin:user:1,\
         selftest:true:kernel:1,run:no-such-scenario:user:1",
    )
    .unwrap();
    let mut schemas = Vec::new();
    for job in &jobs {
        let r = run_job(job, &paths, &[PPIN.to_owned()], &catalog);
        let json = serde_json::to_value(&r).unwrap();
        assert_valid(&v, &job.name(), &json);
        assert_formats_agree(&job.name(), &r);
        assert!(r.suite.time_ms > 0.0 && r.suite.time_ms == r.job_ms);
        // Every job that ran a VM of kvmcap's carries its exit accounting.
        let ran_vm = matches!(job.kind.as_str(), "probe" | "run" | "explore" | "cost");
        assert_eq!(!r.stats.is_empty(), ran_vm && r.pass, "{}", job.name());
        schemas.push(
            json["report"]["schema"]
                .as_str()
                .unwrap_or("error")
                .to_owned(),
        );
    }
    assert_eq!(
        schemas,
        [
            "kvmcap.report/1",
            "kvmcap.scenario/1",
            "kvmcap.explore/1",
            "kvmcap.cost/1",
            "kvmcap.selftest/1",
            "error"
        ]
    );
}

#[test]
fn a_drifted_report_fails_the_schema() {
    let v = validator();
    let good = serde_json::json!({
        "schema": "kvmcap.caps/1", "pass": true, "kvm": "/dev/kvm", "cpu_model": "x",
        "kernel": "6.12", "caps": [{"number": 1, "name": "KVM_CAP_IRQCHIP", "system": 1, "vm": 1}],
        "elapsed_ms": 1.0
    });
    assert!(v.is_valid(&good));
    let mut extra = good.clone();
    extra["new_field"] = Value::Bool(true);
    assert!(!v.is_valid(&extra), "an undocumented field");
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("pass");
    assert!(!v.is_valid(&missing), "no pass");
    let mut unknown = good.clone();
    unknown["schema"] = "kvmcap.caps/2".into();
    assert!(!v.is_valid(&unknown), "an unknown schema version");
    let number = serde_json::json!({"value": 1234605616436508552u64});
    let hex = serde_json::json!({"value": "0x1122334455667788"});
    let kernel = |r: &Value| {
        serde_json::json!({
            "schema": "kvmcap.explore/1", "pass": false, "feature": "ppin", "backend": "user",
            "pair": "amd", "vcpus": 1, "states": [], "truncated": false, "cases": 1,
            "checked": 1, "stats": [], "elapsed_ms": 1.0,
            "differences": [{"key": "k", "explained": null, "accesses": [], "at": 0,
                             "rules": r, "rule": null, "seen": hex, "scenario": ""}]
        })
    };
    assert!(v.is_valid(&kernel(&hex)));
    assert!(
        !v.is_valid(&kernel(&number)),
        "a 64-bit value as a JSON number"
    );
}
