//! KVM selftests built from the (patched) tree, statically, so they run in the lab's
//! initramfs: `make headers` into the kernel build dir, then the selftest with
//! `EXTRA_CFLAGS=-static`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::{tail, Kernel, SourceTree};
use crate::{target_dir, XtaskError};

/// The folder of `kernel`'s x86 selftests that holds `NAME.c` in `tree` (`x86/` since 6.15,
/// `x86_64/` before; a user's tree may be either).
pub fn subdir(kernel: Kernel, tree: &Path, name: &str) -> Option<&'static str> {
    let kvm = tree.join("tools/testing/selftests/kvm");
    [kernel.selftest_subdir(), "x86", "x86_64"]
        .into_iter()
        .find(|d| kvm.join(d).join(format!("{name}.c")).exists())
}

/// Builds `tools/testing/selftests/kvm/SUBDIR/NAME` of `kernel`'s tree and returns the binary.
pub fn build(
    kernel: Kernel,
    tree: &SourceTree,
    build_dir: &Path,
    subdir: &str,
    name: &str,
) -> Result<PathBuf, XtaskError> {
    build_into(tree, build_dir, subdir, name, &out_dir(kernel))
}

/// Where `kernel`'s selftests are built.
pub fn out_dir(kernel: Kernel) -> PathBuf {
    target_dir()
        .join("kernel")
        .join(format!("selftests-{}", kernel.id()))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), XtaskError> {
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
}

/// [`build`] with the selftests' build output in `out`: `make headers` into `build_dir`
/// (configured), then the selftest, static.
pub fn build_into(
    tree: &SourceTree,
    build_dir: &Path,
    subdir: &str,
    name: &str,
    out: &Path,
) -> Result<PathBuf, XtaskError> {
    run(
        Command::new("make")
            .arg("-C")
            .arg(&tree.dir)
            .arg(format!("O={}", build_dir.display()))
            .arg("headers"),
        "make headers",
    )?;
    std::fs::create_dir_all(out).map_err(|e| XtaskError::Output {
        path: out.to_owned(),
        problem: e.to_string(),
    })?;
    let bin = out.join(subdir).join(name);
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
        &format!("make selftest {subdir}/{name}"),
    )?;
    Ok(bin)
}
