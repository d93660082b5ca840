//! `cargo xtask patch-boot-verify` as CI runs it: the series applied and built, the lab booted,
//! the selftest passing, and kernel verdicts equal to the userspace model's and to the
//! committed expectations. Needs QEMU and the kernel source (skip, or fail under
//! KVMCAP_REQUIRE_ALL=1).

use std::time::Duration;

use xtask::{initramfs, kernel, lab, pbv, pipeline};

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
fn patch_boot_verify_is_green() {
    if !require(
        lab::qemu().is_ok(),
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
    ) || !require(
        std::path::Path::new(kernel::SOURCE_TARBALL).exists(),
        "linux-source-6.12 (apt-get install linux-source-6.12)",
    ) {
        return;
    }
    let art = pipeline::prepare(None).expect("patched kernel, selftest and lab initramfs");
    assert_eq!(art.selftests.len(), 1, "the series' selftest is built");
    let run = lab::run(&lab::LabOptions {
        kernel: art.built.bzimage.clone(),
        initramfs: art.initramfs.clone(),
        jobs: pbv::jobs(),
        cpus: 2,
        mem_mib: 1024,
        deadline: Duration::from_secs(900),
        console_log: initramfs::out_dir().join("pbv-test/console.log"),
    })
    .expect("the lab runs");
    let checks = pbv::check(&run, false).expect("checks");
    let table = pbv::table(&checks);
    eprint!("{}{table}", run.table());
    assert!(
        checks.iter().all(|c| c.pass),
        "patch-boot-verify is red:\n{table}"
    );
}
