//! Requirements of the lab tests: QEMU and the kernel source. Missing ones skip with a printed
//! reason, or fail under KVMCAP_REQUIRE_ALL=1 (CI).

/// Whether the lab can run here.
pub fn lab_available() -> bool {
    require(
        xtask::lab::qemu().is_ok(),
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
    ) && require(
        std::path::Path::new(xtask::kernel::SOURCE_TARBALL).exists(),
        "linux-source-6.12 (apt-get install linux-source-6.12)",
    )
}

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
