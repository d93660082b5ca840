//! `cargo xtask patch check`: each patch of a kernel's series builds on its own. For every N,
//! the tree with patches 1..N compiles what the series touches, the way a KVM maintainer
//! builds it: `x86_64_defconfig` plus `KVM=m KVM_INTEL=m KVM_AMD=m KVM_WERROR=y` (and SMM,
//! Hyper-V and Xen support, `WERROR=y`), `make arch/x86/kvm/` for kernel files, and the
//! selftest a patch adds or changes. Only the touched files and what includes them are
//! rebuilt between steps, so a warm check takes seconds and a cold one minutes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::kernel::{tail, Kernel, SourceTree};
use crate::{patches, selftest, target_dir, XtaskError};

/// The config symbols on top of `x86_64_defconfig`.
pub const CONFIG: &str = "\
CONFIG_EXPERT=y
CONFIG_KVM=m
CONFIG_KVM_INTEL=m
CONFIG_KVM_AMD=m
CONFIG_KVM_WERROR=y
CONFIG_KVM_SMM=y
CONFIG_KVM_HYPERV=y
CONFIG_KVM_XEN=y
CONFIG_WERROR=y
";

/// One build of the check.
#[derive(Clone, Debug)]
pub struct Row {
    /// The kernel's label (`7.2`, `6.12`).
    pub kernel: String,
    /// The last patch applied (the tree has patches 1..N).
    pub patch: String,
    /// What was built.
    pub what: String,
    /// Whether it built without warnings (warnings are errors).
    pub pass: bool,
    /// Seconds it took.
    pub seconds: f64,
    /// The end of the build output when it failed.
    pub detail: String,
}

/// The make targets for the files a patch series touches: `arch/x86/kvm/` whenever a kernel
/// source or header is touched (the series' only consumer), the folders of other touched C
/// files, and `(subdir, name)` for touched KVM selftests.
pub fn targets(touched: &[String]) -> (Vec<String>, Vec<(String, String)>) {
    let mut dirs: Vec<String> = Vec::new();
    let mut tests = Vec::new();
    let push = |d: String, dirs: &mut Vec<String>| {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    for f in touched {
        if let Some(rest) = f.strip_prefix("tools/testing/selftests/kvm/") {
            if let Some((subdir, file)) = rest.split_once('/') {
                if let Some(name) = file.strip_suffix(".c") {
                    if !file.contains('/') {
                        tests.push((subdir.to_owned(), name.to_owned()));
                    }
                }
            }
            continue;
        }
        if f.starts_with("tools/") || f.starts_with("Documentation/") {
            continue;
        }
        if f.ends_with(".h") {
            push("arch/x86/kvm/".into(), &mut dirs);
        } else if f.ends_with(".c") {
            if let Some((dir, _)) = f.rsplit_once('/') {
                push(format!("{dir}/"), &mut dirs);
            }
        }
    }
    (dirs, tests)
}

fn make(tree: &Path, build: &Path, args: &[&str], what: &str) -> Result<(), String> {
    let out = Command::new("make")
        .arg("-C")
        .arg(tree)
        .arg(format!("O={}", build.display()))
        .args(args)
        .output()
        .map_err(|e| format!("{what}: cannot run make: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(format!("{what} failed ({}){}", out.status, tail(&text, 15)))
}

/// Builds what the files `touched` need in `tree` (configured into `build`): a row per make
/// target and selftest, for the kernel `label` after `patch`.
pub fn build_touched(
    label: &str,
    patch: &str,
    tree: &SourceTree,
    build: &Path,
    touched: &[String],
    selftests: &Path,
) -> Vec<Row> {
    let (dirs, tests) = targets(touched);
    let jobs = format!(
        "-j{}",
        std::thread::available_parallelism().map_or(2, |n| n.get())
    );
    let mut rows = Vec::new();
    for d in dirs {
        let t = Instant::now();
        let r = make(&tree.dir, build, &[&jobs, &d], &format!("make {d}"));
        rows.push(Row {
            kernel: label.into(),
            patch: patch.into(),
            what: format!("{d} (KVM=m KVM_INTEL=m KVM_AMD=m KVM_WERROR=y)"),
            pass: r.is_ok(),
            seconds: t.elapsed().as_secs_f64(),
            detail: r.err().unwrap_or_default(),
        });
    }
    for (subdir, name) in tests {
        let t = Instant::now();
        let r = selftest::build_into(tree, build, &subdir, &name, selftests);
        rows.push(Row {
            kernel: label.into(),
            patch: patch.into(),
            what: format!("selftest {subdir}/{name} (static)"),
            pass: r.is_ok(),
            seconds: t.elapsed().as_secs_f64(),
            detail: r.err().map(|e| e.to_string()).unwrap_or_default(),
        });
    }
    rows
}

/// Checks `kernel`'s series against `pristine`, patch by patch.
pub fn run(kernel: Kernel, pristine: &SourceTree) -> Result<Vec<Row>, XtaskError> {
    crate::kernel::ensure_packages(crate::kernel::BUILD_PACKAGES)?;
    let list = patches::series(&kernel.series_dir())?;
    let root = target_dir()
        .join("kernel")
        .join(format!("check-{}", kernel.id()));
    let build = root.join("build");
    let mut rows = Vec::new();
    for n in 1..=list.len() {
        let tree = patches::apply_patches(pristine, &list[..n], &root.join("src"))?;
        if n == 1 && !build.join(".config").exists() {
            configure(&tree.dir, &build)?;
        }
        let text = std::fs::read_to_string(&list[n - 1]).map_err(|e| XtaskError::Output {
            path: list[n - 1].clone(),
            problem: e.to_string(),
        })?;
        let patch = file_name(&list[n - 1]);
        rows.extend(build_touched(
            kernel.label(),
            &patch,
            &tree,
            &build,
            &patches::touched_files(&text),
            &root.join("selftests"),
        ));
    }
    Ok(rows)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Configures `build` for `tree`: `x86_64_defconfig` plus [`CONFIG`], each symbol checked.
pub fn configure(tree: &Path, build: &Path) -> Result<(), XtaskError> {
    std::fs::create_dir_all(build).map_err(|e| XtaskError::Output {
        path: build.to_owned(),
        problem: e.to_string(),
    })?;
    let fragment: PathBuf = build.join("kvm-check.config");
    std::fs::write(&fragment, CONFIG).map_err(|e| XtaskError::Output {
        path: fragment.clone(),
        problem: e.to_string(),
    })?;
    let fail = |what: &str, e: String| XtaskError::Build {
        command: what.to_owned(),
        status: "failed".into(),
        tail: format!("; {e}"),
    };
    make(tree, build, &["x86_64_defconfig"], "make x86_64_defconfig")
        .map_err(|e| fail("make x86_64_defconfig", e))?;
    let out = Command::new(tree.join("scripts/kconfig/merge_config.sh"))
        .current_dir(tree)
        .arg("-m")
        .arg("-O")
        .arg(build)
        .arg(build.join(".config"))
        .arg(&fragment)
        .output()
        .map_err(|source| XtaskError::Spawn {
            tool: "merge_config.sh".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(fail(
            "merge_config.sh",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    make(tree, build, &["olddefconfig"], "make olddefconfig")
        .map_err(|e| fail("make olddefconfig", e))?;
    let config = std::fs::read_to_string(build.join(".config")).unwrap_or_default();
    for want in CONFIG.lines() {
        if !config.lines().any(|l| l == want) {
            return Err(XtaskError::Output {
                path: build.join(".config"),
                problem: format!("{want} did not stick (a dependency is missing)"),
            });
        }
    }
    Ok(())
}

/// The check's table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<7} {:<58} {:<56} {:<6} {:>7}\n",
        "KERNEL", "PATCHES 1..N", "BUILT", "RESULT", "SECONDS"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<7} {:<58} {:<56} {:<6} {:>7.1}\n",
            r.kernel,
            r.patch,
            r.what,
            if r.pass { "pass" } else { "FAIL" },
            r.seconds
        ));
        if !r.pass {
            out.push_str(&format!(
                "        {}\n",
                r.detail.replace('\n', "\n        ")
            ));
        }
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    out.push_str(&format!(
        "{}: {} builds, {failed} failed (trees and builds under {}/)\n",
        if failed == 0 { "GREEN" } else { "RED" },
        rows.len(),
        target_dir().join("kernel").display()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_files_become_make_targets() {
        let touched: Vec<String> = [
            "Documentation/virt/kvm/api.rst",
            "arch/x86/include/asm/kvm_host.h",
            "arch/x86/kvm/x86.c",
            "include/uapi/linux/kvm.h",
            "tools/testing/selftests/kvm/Makefile.kvm",
            "tools/testing/selftests/kvm/include/x86/processor.h",
            "tools/testing/selftests/kvm/x86/ppin_test.c",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (dirs, tests) = targets(&touched);
        assert_eq!(dirs, vec!["arch/x86/kvm/"]);
        assert_eq!(tests, vec![("x86".to_string(), "ppin_test".to_string())]);
    }
}
