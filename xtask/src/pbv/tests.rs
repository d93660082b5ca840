//! patch-boot-verify's checks: tiers, differences, tables.

use super::*;
use serde_json::json;

/// A lab run of the edit tier whose every kernel job passed with the committed view, but
/// `wrong`'s view changed.
fn edit_run(wrong: Option<&str>) -> LabRun {
    let jobs = edit_jobs()
        .into_iter()
        .map(|job| {
            let (what, pair) = job.rsplit_once(':').unwrap_or((&job, "-"));
            let name = what.replace(":kernel:", ":any:").replace(':', "_");
            let path = expected_dir().join(format!("{name}_{pair}.snap"));
            let mut snapshot = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| snapshot_body(&t).and_then(|b| serde_json::from_str(b).ok()))
                .unwrap_or(Value::Null);
            if wrong == Some(job.as_str()) {
                snapshot = json!(["case changed"]);
            }
            Ok(JobOutcome {
                job: job.clone(),
                pass: true,
                snapshot,
                report: Value::Null,
                job_ms: Some(1.0),
                suite: None,
                stats: Value::Null,
                first_attempt: None,
                cached: false,
            })
        })
        .collect();
    LabRun {
        jobs,
        elapsed: std::time::Duration::ZERO,
        console_log: PathBuf::new(),
        shards: 1,
    }
}

#[test]
fn the_edit_tier_checks_the_kernel_against_the_committed_views() {
    let ran = edit_jobs();
    assert!(ran.iter().all(|j| !j.contains(":user:")), "{ran:?}");
    assert!(ran.contains(&format!("selftest:{SELFTEST}:kernel:1")));
    assert_eq!(ran.len(), 9);
    let checks = check(&edit_run(None), &ran, false).unwrap();
    assert!(checks.iter().all(|c| c.pass), "{checks:?}");
    assert!(checks.iter().all(|c| !c.what.contains("kernel == user")));
    assert_eq!(
        checks
            .iter()
            .filter(|c| c.what.ends_with("== committed"))
            .count(),
        8
    );

    let wrong = "run:ppin-enable:kernel:1:amd";
    let checks = check(&edit_run(Some(wrong)), &ran, false).unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    assert_eq!(failed.len(), 1, "{checks:?}");
    assert_eq!(failed[0].what, "run:ppin-enable:*:1 == committed");
    assert_eq!(failed[0].pair, "amd");
    let pending = expected_dir().join("run_ppin-enable_any_1_amd.snap.new");
    assert!(pending.exists());
    let _ = std::fs::remove_file(pending);

    let e = check(&edit_run(None), &ran, true).unwrap_err();
    assert!(e.to_string().contains("--bless"), "{e}");
}

#[test]
fn differences_are_named_by_step_or_reading() {
    let a = json!([
        "scenario x backend kernel vcpus 1",
        "case c: pass",
        "  cpu0 wrmsr ctl 0x2: expected #GP seen #GP ok"
    ]);
    let b = json!([
        "scenario x backend user vcpus 1",
        "case c: FAIL",
        "  cpu0 wrmsr ctl 0x2: expected #GP seen 0x2 FAIL"
    ]);
    let d = first_difference(&neutral(&a), &neutral(&b), "").unwrap();
    assert!(d.contains("wrmsr ctl 0x2"), "{d}");
    let a = json!({"backend": "kernel", "readings": [{"cpu": 0, "msr": "announced.value", "guest": "0x1"}]});
    let b = json!({"backend": "user", "readings": [{"cpu": 0, "msr": "announced.value", "guest": "0x2"}]});
    let d = first_difference(&neutral(&a), &neutral(&b), "").unwrap();
    assert!(
        d.contains("cpu0 announced.value") && d.contains("\"0x1\" vs \"0x2\""),
        "{d}"
    );
    assert_eq!(first_difference(&neutral(&a), &neutral(&a), ""), None);
}

#[test]
fn the_kernel_table_names_each_row_s_kernel() {
    let c = |pass| Check {
        what: "selftest:ppin_test:kernel:1".into(),
        pair: "-".into(),
        pass,
        detail: String::new(),
    };
    let t = kernel_table(&[
        ("7.2".into(), vec![c(true)]),
        ("6.12".into(), vec![c(false)]),
    ]);
    assert!(t.starts_with("KERNEL "), "{t}");
    assert!(t.contains("\n7.2     selftest:ppin_test:kernel:1"), "{t}");
    assert!(t.contains("\n6.12    selftest"), "{t}");
    assert!(
        t.ends_with("RED: 2 checks on kernel 7.2 and 6.12, 1 failed\n"),
        "{t}"
    );
}

#[test]
fn every_paired_job_has_both_backends() {
    let j = jobs();
    for pair in PAIRS {
        for (kind, subject, vcpus) in PAIRED {
            for b in ["kernel", "user"] {
                assert!(j.contains(&paired_job(kind, subject, b, *vcpus, pair)));
            }
        }
    }
}
