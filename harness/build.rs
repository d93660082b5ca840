//! Assembles the bare probe guest's exception handlers (src/bare/probe.S) with the C toolchain the `cc` crate finds
//! (GNU as through gcc), then extracts its position-independent .text as a flat image that
//! kvmcap embeds. No prebuilt blobs: the image is rebuilt from source on every change.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    assert!(status.success(), "{what}: {cmd:?} failed with {status}");
}

fn main() {
    let src = PathBuf::from("src/bare/probe.S");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let obj = out.join("probe.o");
    let bin = out.join("probe.bin");
    let compiler = cc::Build::new().get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-c", "-nostdlib", "-ffreestanding", "-o"])
        .arg(&obj)
        .arg(&src);
    run(&mut cmd, "assembling the bare probe guest");
    let objcopy = std::env::var("OBJCOPY").unwrap_or_else(|_| "objcopy".into());
    run(
        Command::new(objcopy)
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin),
        "extracting the bare probe guest's .text",
    );
}
