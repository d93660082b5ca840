//! `cargo xtask patch export --check`: the exported main line as a maintainer takes it. The
//! series is exported (as `patch export` writes it) into `target/kvmcap/export-check/`, applied
//! with plain `git am` (no 3-way merge, no fuzz: a hunk whose context is not exactly there
//! fails, naming the file) onto a pristine git tree of the newest kernel's source, and built
//! as `patch check` builds: `x86_64_defconfig` plus `KVM=m KVM_INTEL=m KVM_AMD=m
//! KVM_WERROR=y WERROR=y`, `arch/x86/kvm/` and the selftest the series adds.

use std::path::{Path, PathBuf};

use crate::check::{self, Row};
use crate::kernel::{Kernel, SourceTree};
use crate::tree::{conflicts, git_ok, git_out};
use crate::{export, initramfs, patches, target_dir, XtaskError};

/// The identity the check's copy is signed off with when git has none (the copy is only
/// applied and built, never posted).
pub const CHECK_IDENTITY: &str = "kvmcap export check <kvmcap@localhost>";

/// The tag of the pristine tree's one commit.
const BASE_TAG: &str = "kvmcap-pristine";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> XtaskError + '_ {
    move |e| XtaskError::Output {
        path: path.to_owned(),
        problem: e.to_string(),
    }
}

/// A git repository whose one commit (tagged `kvmcap-pristine`) is `base` as Debian ships it,
/// under `target/kernel/git-KERNEL/`, made once per source version (a hard-linked copy: git
/// replaces the files it changes, so the extracted source is never written).
pub fn pristine_git(kernel: Kernel, base: &SourceTree) -> Result<PathBuf, XtaskError> {
    let root = target_dir()
        .join("kernel")
        .join(format!("git-{}", kernel.id()));
    let dir = root.join(base.dir.file_name().unwrap_or("linux".as_ref()));
    let stamp = root.join(".committed");
    if std::fs::read_to_string(&stamp).is_ok_and(|v| v == base.version) {
        return Ok(dir);
    }
    eprintln!(
        "xtask: a pristine git tree of {} in {} (once)",
        base.version,
        dir.display()
    );
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(io(&root))?;
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    crate::patches::hardlink_copy(&base.dir, &dir)?;
    git_ok(&dir, &["init", "-q", "-b", "pristine"])?;
    // -f: Debian's .gitignore ignores everything at the top level (its packaging's idiom).
    git_ok(&dir, &["add", "-A", "-f"])?;
    git_ok(
        &dir,
        &[
            "-c",
            "user.name=kvmcap",
            "-c",
            "user.email=kvmcap@localhost",
            "commit",
            "-q",
            "-m",
            &format!("{} as Debian ships it", base.version),
        ],
    )?;
    git_ok(&dir, &["tag", "-f", BASE_TAG])?;
    crate::write_atomic(&stamp, base.version.as_bytes())?;
    Ok(dir)
}

/// Applies `patches` with plain `git am` onto the pristine commit of the repository `git`
/// (reset first); a patch that does not apply exactly is named with its file and the tree is
/// reset to the pristine commit.
pub fn git_am(git: &Path, patches: &[PathBuf], who: &str) -> Result<String, XtaskError> {
    let _ = git_out(git, &["am", "--abort"]);
    git_ok(
        git,
        &["checkout", "-q", "-f", "-B", "export-check", BASE_TAG],
    )?;
    git_ok(git, &["clean", "-q", "-fdx"])?;
    let (name, email) = who
        .split_once(" <")
        .map(|(n, e)| (n.to_owned(), e.trim_end_matches('>').to_owned()))
        .unwrap_or_else(|| (who.to_owned(), "kvmcap@localhost".to_owned()));
    for p in patches {
        let path = p.display().to_string();
        let (ok, text) = git_out(
            git,
            &[
                "-c",
                &format!("user.name={name}"),
                "-c",
                &format!("user.email={email}"),
                "am",
                "--quiet",
                &path,
            ],
        )?;
        if !ok {
            let files = conflicts(&text);
            let _ = git_out(git, &["am", "--abort"]);
            let _ = git_out(git, &["checkout", "-q", "-f", BASE_TAG]);
            return Err(XtaskError::Patch {
                patch: p.clone(),
                file: if files.is_empty() {
                    "?".into()
                } else {
                    files.join(", ")
                },
                output: format!("git am onto {}: {}", git.display(), text.trim()),
            });
        }
    }
    git_ok(git, &["log", "--oneline", &format!("{BASE_TAG}..HEAD")])
}

/// Exports the main line, applies it with `git am` to the pristine git tree of `base` (the
/// newest kernel's source) and builds it with `KVM_WERROR=y`: one row per build.
pub fn run(base: &SourceTree) -> Result<Vec<Row>, XtaskError> {
    crate::kernel::ensure_packages(crate::kernel::BUILD_PACKAGES)?;
    let who = export::identity().unwrap_or_else(|_| CHECK_IDENTITY.to_owned());
    let out = initramfs::out_dir().join("export-check");
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(io(&out))?;
    }
    let (files, cap) = export::write_series(base, &out, &who)?;
    let series: Vec<PathBuf> = files.into_iter().skip(1).collect();
    let git = pristine_git(Kernel::Newest, base)?;
    let log = git_am(&git, &series, &who)?;
    eprintln!(
        "xtask: git am applied {} patches (KVM_CAP_PPIN = {cap}) onto {}:\n{log}",
        series.len(),
        git.display()
    );
    let root = target_dir().join("kernel").join("export-check");
    let build = root.join("build");
    let tree = SourceTree {
        dir: git.clone(),
        version: format!("git:{}", git.display()),
    };
    if !build.join(".config").exists() {
        check::configure(&git, &build)?;
    }
    let mut touched = Vec::new();
    for p in &series {
        let text = std::fs::read_to_string(p).map_err(io(p))?;
        for f in patches::touched_files(&text) {
            if !touched.contains(&f) {
                touched.push(f);
            }
        }
    }
    Ok(check::build_touched(
        Kernel::Newest.label(),
        &format!("git am 0001..{:04} (exported)", series.len()),
        &tree,
        &build,
        &touched,
        &root.join("selftests"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn git_am_applies_exactly_or_names_the_file_and_resets() {
        let d = tempfile::tempdir().unwrap();
        let git = d.path().join("linux");
        std::fs::create_dir_all(&git).unwrap();
        std::fs::write(git.join("x.c"), "int a;\nint b;\nint c;\nint e;\n").unwrap();
        sh(&git, &["init", "-q", "-b", "pristine"]);
        sh(&git, &["add", "x.c"]);
        sh(&git, &["commit", "-qm", "base"]);
        sh(&git, &["tag", BASE_TAG]);
        let mail = |from: &str, to: &str, ctx: &str| {
            format!(
                "From 0 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nSubject: [PATCH] x\n\n---\n x.c | 2 +-\n\ndiff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1,4 +1,4 @@\n {ctx}\n int b;\n-{from}\n+{to}\n int e;\n-- \n2.0\n"
            )
        };
        let good = d.path().join("good.patch");
        std::fs::write(&good, mail("int c;", "int d;", "int a;")).unwrap();
        let log = git_am(&git, std::slice::from_ref(&good), "A <a@b>").unwrap();
        assert!(log.contains(" x"), "{log}");
        assert_eq!(
            std::fs::read_to_string(git.join("x.c")).unwrap(),
            "int a;\nint b;\nint d;\nint e;\n"
        );
        // One context line off: GNU patch would apply it with fuzz, git am refuses.
        let fuzzy = d.path().join("fuzzy.patch");
        std::fs::write(&fuzzy, mail("int c;", "int d;", "int z;")).unwrap();
        match git_am(&git, std::slice::from_ref(&fuzzy), "A <a@b>") {
            Err(XtaskError::Patch { patch, file, .. }) => {
                assert_eq!(patch, fuzzy);
                assert_eq!(file, "x.c");
            }
            other => panic!("a fuzzy patch applied: {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(git.join("x.c")).unwrap(),
            "int a;\nint b;\nint c;\nint e;\n"
        );
    }
}
