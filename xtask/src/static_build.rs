//! Fully static binaries for initramfs images: glibc with `+crt-static` and an explicit
//! `--target`, so the flag reaches only target code and proc-macros still build as usual.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{target_dir, workspace_root, XtaskError};

/// The host triple used for static builds (no other rustup target can be added here).
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Builds `package` (a workspace package with a binary of the same name) statically in release
/// mode and returns the binary's path after checking it has no program interpreter.
pub fn build(package: &str) -> Result<PathBuf, XtaskError> {
    let bin = match package {
        "msr-probe" => "msr-probe",
        "kvmcap" => "kvmcap",
        other => {
            return Err(XtaskError::Usage(format!(
                "no static build for `{other}` (expected msr-probe or kvmcap)"
            )))
        }
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--quiet",
            "--package",
            package,
            "--bin",
            bin,
        ])
        .args(["--target", TRIPLE])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        );
    let status = cmd.status().map_err(|source| XtaskError::Spawn {
        tool: cargo.clone(),
        source,
    })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: format!(
                "cargo build --release --package {package} --target {TRIPLE} (+crt-static)"
            ),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    let path = target_dir().join(TRIPLE).join("release").join(bin);
    check_static(&path)?;
    Ok(path)
}

/// Checks that an ELF file is statically linked: it must have no `PT_INTERP` program header.
pub fn check_static(path: &Path) -> Result<(), XtaskError> {
    let bad = |problem: String| XtaskError::Output {
        path: path.to_owned(),
        problem,
    };
    let data = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file".into()));
    }
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(bad("truncated ELF header".into()));
    };
    for i in 0..usize::from(phnum) {
        let off = usize::try_from(phoff)
            .unwrap_or(usize::MAX)
            .saturating_add(i * usize::from(phentsize));
        let p_type = data
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("truncated program headers".into()))?;
        if p_type == 3 {
            return Err(bad(
                "dynamically linked (has a PT_INTERP program interpreter)".into(),
            ));
        }
    }
    Ok(())
}
