//! The lab, end to end: build the kernel (cached), the initramfs images and the static
//! binaries, boot the lab under QEMU TCG, run every default job inside it, and check each
//! report against its snapshot. Needs QEMU and the kernel source: skipped with a reason when
//! missing, a failure under KVMCAP_REQUIRE_ALL=1 (CI).

use xtask::{initramfs, lab};

mod common;

#[test]
fn lab_jobs_pass_and_match_their_snapshots() {
    if !common::lab_available() {
        return;
    }
    let art = xtask::pipeline::prepare(None).expect("patched kernel, selftest and lab initramfs");
    let jobs: Vec<String> = lab::DEFAULT_JOBS.iter().map(|s| s.to_string()).collect();
    let run = lab::run(&art.lab_options(
        jobs.clone(),
        initramfs::out_dir().join("lab-test/console.log"),
    ))
    .expect("the lab runs");
    eprint!("{}", run.table());
    for (job, result) in jobs.iter().zip(&run.jobs) {
        let outcome = result.as_ref().unwrap_or_else(|e| panic!("{job}: {e}"));
        assert!(
            outcome.pass,
            "{job} failed: {}",
            serde_json::to_string_pretty(&outcome.report).unwrap_or_default()
        );
        insta::assert_yaml_snapshot!(job.replace(':', "_"), outcome.snapshot);
    }
}
