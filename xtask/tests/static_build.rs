//! The static msr-probe really is static and runs without a loader.

use std::process::Command;

#[test]
fn static_msr_probe_has_no_interpreter_and_runs() {
    let path = xtask::static_build::build("msr-probe").expect("static build");
    xtask::static_build::check_static(&path).expect("static");
    let out = Command::new(&path).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("msr-probe "));
    // A dynamic binary is refused.
    let dynamic = xtask::static_build::check_static(std::path::Path::new("/bin/sh"));
    assert!(dynamic.is_err(), "{dynamic:?}");
}
