//! The lab, end to end: build the kernel (cached), the initramfs images and the static
//! binaries, boot the lab under QEMU TCG, run every default job inside it, and check each
//! report against its snapshot. Needs QEMU and the kernel source: skipped with a reason when
//! missing, a failure under KVMCAP_REQUIRE_ALL=1 (CI).

use std::time::Duration;

use xtask::{initramfs, kernel, lab};

fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    assert!(
        std::env::var("KVMCAP_REQUIRE_ALL").as_deref() != Ok("1"),
        "requirement missing: {what} (KVMCAP_REQUIRE_ALL=1)"
    );
    eprintln!("SKIP: requirement missing: {what}");
    false
}

#[test]
fn lab_jobs_pass_and_match_their_snapshots() {
    if !require(
        lab::qemu().is_ok(),
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
    ) {
        return;
    }
    if !require(
        std::path::Path::new(kernel::SOURCE_TARBALL).exists(),
        "linux-source-6.12 (apt-get install linux-source-6.12)",
    ) {
        return;
    }
    let art = xtask::pipeline::prepare(None).expect("patched kernel, selftest and lab initramfs");
    let jobs: Vec<String> = lab::DEFAULT_JOBS.iter().map(|s| s.to_string()).collect();
    let run = lab::run(&lab::LabOptions {
        kernel: art.built.bzimage.clone(),
        initramfs: art.initramfs.clone(),
        jobs: jobs.clone(),
        cpus: 2,
        mem_mib: 1024,
        deadline: Duration::from_secs(900),
        console_log: initramfs::out_dir().join("lab-test/console.log"),
    })
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
