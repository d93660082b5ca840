//! Assembles the bare probe guest's exception handlers (src/guests/bare/probe.S) and its multiboot
//! entry for other VMMs (src/guests/bare/multiboot.S) with the C toolchain the `cc` crate finds (GNU
//! as through gcc), then extracts each one's position-independent .text as a flat image that
//! kvmcap embeds. No prebuilt blobs: the images are rebuilt from source on every change.

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    assert!(status.success(), "{what}: {cmd:?} failed with {status}");
}

fn assemble(name: &str, what: &str) {
    let src = PathBuf::from(format!("src/guests/bare/{name}.S"));
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let obj = out.join(format!("{name}.o"));
    let bin = out.join(format!("{name}.bin"));
    let compiler = cc::Build::new().get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-c", "-nostdlib", "-ffreestanding", "-o"])
        .arg(&obj)
        .arg(&src);
    run(&mut cmd, &format!("assembling {what}"));
    let objcopy = std::env::var("OBJCOPY").unwrap_or_else(|_| "objcopy".into());
    run(
        Command::new(objcopy)
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin),
        &format!("extracting the .text of {what}"),
    );
}

fn main() {
    assemble("probe", "the bare probe guest's handlers");
    assemble("multiboot", "the bare probe's multiboot entry");
}
