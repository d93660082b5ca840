//! KVM selftests built from the (patched) tree, statically, so they run in the lab's
//! initramfs: `make headers` into the kernel build dir, then the selftest with
//! `EXTRA_CFLAGS=-static`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::{tail, SourceTree};
use crate::{target_dir, XtaskError};

/// Builds `tools/testing/selftests/kvm/x86_64/NAME` and returns the binary.
pub fn build(tree: &SourceTree, build_dir: &Path, name: &str) -> Result<PathBuf, XtaskError> {
    let run = |cmd: &mut Command, what: &str| -> Result<(), XtaskError> {
        let out = cmd.output().map_err(|source| XtaskError::Spawn {
            tool: "make".into(),
            source,
        })?;
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return Err(XtaskError::Build {
                command: what.to_owned(),
                status: out.status.to_string(),
                tail: tail(&text, 25),
            });
        }
        Ok(())
    };
    run(
        Command::new("make")
            .arg("-C")
            .arg(&tree.dir)
            .arg(format!("O={}", build_dir.display()))
            .arg("headers"),
        "make headers",
    )?;
    let out = target_dir().join("kernel").join("selftests");
    std::fs::create_dir_all(&out).map_err(|e| XtaskError::Output {
        path: out.clone(),
        problem: e.to_string(),
    })?;
    let bin = out.join("x86_64").join(name);
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .to_string();
    run(
        Command::new("make")
            .arg("-C")
            .arg(tree.dir.join("tools/testing/selftests/kvm"))
            .arg(format!("-j{jobs}"))
            .arg("EXTRA_CFLAGS=-static")
            .arg(format!(
                "KHDR_INCLUDES=-isystem {}",
                build_dir.join("usr/include").display()
            ))
            .arg(format!("OUTPUT={}", out.display()))
            .arg(&bin),
        &format!("make selftest x86_64/{name}"),
    )?;
    Ok(bin)
}
