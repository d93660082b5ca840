//! `cargo xtask patch-boot-verify` as CI runs it: the series applied and built, the lab booted,
//! the selftest passing, and kernel verdicts equal to the userspace model's and to the
//! committed expectations. Needs QEMU and the kernel source (skip, or fail under
//! KVMCAP_REQUIRE_ALL=1).

use xtask::{initramfs, lab, pbv, pipeline};

mod common;

#[test]
fn patch_boot_verify_is_green() {
    if !common::lab_available() {
        return;
    }
    let art = pipeline::prepare(None).expect("patched kernel, selftest and lab initramfs");
    assert_eq!(art.selftests.len(), 1, "the series' selftest is built");
    let run = lab::run(&art.lab_options(
        pbv::jobs(),
        initramfs::out_dir().join("pbv-test/console.log"),
    ))
    .expect("the lab runs");
    let all = pbv::jobs();
    let checks = pbv::check(&run, &all, false).expect("checks");
    let table = pbv::table(&checks);
    eprint!("{}{table}", run.table());
    assert!(
        checks.iter().all(|c| c.pass),
        "patch-boot-verify is red:\n{table}"
    );
    shards_merge_into_the_whole(&all, &run);
}

/// The matrix spread over runners, on the same lab run: each shard's share of its job
/// results and checks, merged, equals the whole run's results (the same jobs in the same
/// order, the same JUnit); a kernel/user pair is never split.
fn shards_merge_into_the_whole(all: &[String], run: &lab::LabRun) {
    use xtask::results::{merge, Results, Shard, Share};
    let results_of = |share: &Share| {
        let ran = share.jobs();
        let jobs: Vec<_> = share.mine.iter().map(|&i| run.jobs[i].clone()).collect();
        let sub = lab::LabRun {
            jobs,
            ..run.clone()
        };
        let checks = pbv::check(&sub, &ran, false).expect("checks");
        Results::of_run("patch-boot-verify", "newest", share, &sub, &checks)
    };
    let whole = results_of(&Share::of(all.to_vec(), None));
    assert!(whole.pass(), "{}", whole.table());
    let mut sorted = whole.clone();
    sorted
        .checks
        .sort_by(|a, b| (&a.what, &a.pair).cmp(&(&b.what, &b.pair)));
    for n in [2, 3] {
        let parts: Vec<Results> = (1..=n)
            .map(|k| results_of(&Share::of(all.to_vec(), Some(Shard { k, n }))))
            .collect();
        let merged = merge(&parts).expect("the shards merge");
        assert_eq!(merged, vec![sorted.clone()], "{n} shards");
        assert_eq!(merged[0].junit(), sorted.junit());
    }
}
