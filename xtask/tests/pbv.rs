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
    let checks = pbv::check(&run, false).expect("checks");
    let table = pbv::table(&checks);
    eprint!("{}{table}", run.table());
    assert!(
        checks.iter().all(|c| c.pass),
        "patch-boot-verify is red:\n{table}"
    );
}
