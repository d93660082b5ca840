//! The KVM_CAP_PPIN series: the main line in `kernel-patches/`, the 6.12 backport in
//! `kernel-patches/6.12/`. Applied with GNU patch without fuzz (`-F0`: a series that no longer
//! fits its base fails, naming the patch and file, as `git am` would) onto a hard-linked copy
//! of the pristine source, so re-applying a changed series rewrites only the files the series
//! touches and the kernel rebuild stays incremental.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::{fnv64, Kernel, SourceTree};
use crate::{target_dir, workspace_root, XtaskError};

/// The main line's series folder.
pub fn series_dir() -> PathBuf {
    workspace_root().join("kernel-patches")
}

/// Where `kernel`'s patched copy lives.
pub fn patched_root(kernel: Kernel) -> PathBuf {
    target_dir()
        .join("kernel")
        .join(format!("patched-{}", kernel.id()))
}

/// The patches named by `kernel-patches/series`, in order.
pub fn series(dir: &Path) -> Result<Vec<PathBuf>, XtaskError> {
    let file = dir.join("series");
    let text = std::fs::read_to_string(&file).map_err(|e| XtaskError::Missing {
        what: file.display().to_string(),
        hint: e.to_string(),
    })?;
    let patches: Vec<PathBuf> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| dir.join(l))
        .collect();
    if patches.is_empty() {
        return Err(XtaskError::Missing {
            what: "patches".into(),
            hint: format!("{} lists none", file.display()),
        });
    }
    for p in &patches {
        if !p.exists() {
            return Err(XtaskError::Missing {
                what: p.display().to_string(),
                hint: format!("named in {}", file.display()),
            });
        }
    }
    Ok(patches)
}

/// The hash of the series' contents.
pub fn series_hash(patches: &[PathBuf]) -> Result<String, XtaskError> {
    let mut parts = Vec::new();
    for p in patches {
        parts.push(std::fs::read(p).map_err(|e| XtaskError::Output {
            path: p.clone(),
            problem: e.to_string(),
        })?);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(format!("{:016x}", fnv64(&refs)))
}

/// The files a patch touches (its `+++ b/...` lines).
pub fn touched_files(patch: &str) -> Vec<String> {
    patch
        .lines()
        .filter_map(|l| l.strip_prefix("+++ b/"))
        .map(|f| f.split('\t').next().unwrap_or(f).trim().to_owned())
        .collect()
}

/// Why a patch did not apply, from GNU patch's output: the file whose hunk failed.
pub fn failed_file(output: &str) -> Option<String> {
    let mut current = None;
    for l in output.lines() {
        if let Some(f) = l.strip_prefix("patching file ") {
            current = Some(f.trim().trim_matches('\'').to_owned());
        }
        if l.contains("FAILED") || l.contains("can't find file") || l.contains("malformed patch") {
            return current.or_else(|| Some("?".into()));
        }
    }
    None
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> XtaskError + '_ {
    move |e| XtaskError::Output {
        path: path.to_owned(),
        problem: e.to_string(),
    }
}

/// Applies `kernel`'s series to a copy of `pristine` (that kernel's source), returning the
/// patched tree. The copy is kept between runs: files the previously applied series touched
/// are restored first.
pub fn apply(kernel: Kernel, pristine: &SourceTree) -> Result<SourceTree, XtaskError> {
    apply_in(pristine, &kernel.series_dir(), &patched_root(kernel))
}

/// [`apply`] with the series in `dir` and the patched copy under `root`.
pub fn apply_in(pristine: &SourceTree, dir: &Path, root: &Path) -> Result<SourceTree, XtaskError> {
    apply_patches(pristine, &series(dir)?, root)
}

/// Applies `patches`, in order, to a copy of `pristine` under `root`. The patches are applied
/// to a staging copy of the files they touch; a file of the patched tree is rewritten only if
/// its content changes, so make rebuilds only what an edit of the series really changed, and a
/// series that does not apply leaves the tree as it was.
pub fn apply_patches(
    pristine: &SourceTree,
    patches: &[PathBuf],
    root: &Path,
) -> Result<SourceTree, XtaskError> {
    let hash = series_hash(patches)?;
    let root = root.to_path_buf();
    let tree = root.join(pristine.dir.file_name().unwrap_or("linux".as_ref()));
    let stamp = root.join(".applied");
    let touched_file = root.join(".touched");
    let version = format!("{}+kvmcap", pristine.version);
    let base_stamp = root.join(".base");
    let base_ok = std::fs::read_to_string(&base_stamp).is_ok_and(|b| b == pristine.version);
    if !base_ok {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        hardlink_copy(&pristine.dir, &tree)?;
        std::fs::write(&base_stamp, &pristine.version).map_err(io(&base_stamp))?;
    }
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == hash) {
        return Ok(SourceTree { dir: tree, version });
    }
    let _ = std::fs::remove_file(&stamp);

    // The pristine copies of every file the series touches, patched in a staging folder.
    let mut touched: Vec<String> = Vec::new();
    for p in patches {
        let text = std::fs::read_to_string(p).map_err(io(p))?;
        for f in touched_files(&text) {
            if !touched.contains(&f) {
                touched.push(f);
            }
        }
    }
    let stage = root.join(".stage");
    let _ = std::fs::remove_dir_all(&stage);
    for f in &touched {
        let (src, dst) = (pristine.dir.join(f), stage.join(f));
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        if src.exists() {
            std::fs::copy(&src, &dst).map_err(io(&dst))?;
        }
    }
    for p in patches {
        let out = Command::new("patch")
            .args([
                "-p1",
                "-F0",
                "--forward",
                "--no-backup-if-mismatch",
                "-r",
                "-",
                "-i",
            ])
            .arg(p)
            .current_dir(&stage)
            .output()
            .map_err(|source| XtaskError::Spawn {
                tool: "patch (apt-get install patch)".into(),
                source,
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(XtaskError::Patch {
                patch: p.clone(),
                file: failed_file(&text).unwrap_or_else(|| "?".into()),
                output: text.trim().to_owned(),
            });
        }
    }

    // Into the tree: what this series touches as patched, what only the previous series
    // touched as pristine; files whose content is already right keep their timestamps.
    let previous = std::fs::read_to_string(&touched_file).unwrap_or_default();
    let mut all: Vec<&str> = touched.iter().map(String::as_str).collect();
    for f in previous.lines().filter(|l| !l.is_empty()) {
        if !all.contains(&f) {
            all.push(f);
        }
    }
    for f in all {
        let wanted = if touched.iter().any(|t| t == f) {
            stage.join(f)
        } else {
            pristine.dir.join(f)
        };
        let dst = tree.join(f);
        let new = std::fs::read(&wanted).ok();
        if new == std::fs::read(&dst).ok() {
            continue;
        }
        // A fresh inode: the hard-linked pristine file stays intact.
        let _ = std::fs::remove_file(&dst);
        if new.is_some() {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::copy(&wanted, &dst).map_err(io(&dst))?;
        }
    }
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::write(&touched_file, touched.join("\n")).map_err(io(&touched_file))?;
    std::fs::write(&stamp, &hash).map_err(io(&stamp))?;
    Ok(SourceTree { dir: tree, version })
}

/// Copies the tree `from` to `to` with hard links (`cp -al`): seconds, not a full copy; a
/// patched file is rewritten, never edited in place, so the original stays pristine.
pub fn hardlink_copy(from: &Path, to: &Path) -> Result<(), XtaskError> {
    let status = Command::new("cp")
        .arg("-al")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: "cp".into(),
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: format!("cp -al {} {}", from.display(), to.display()),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_patch_output() {
        let out =
            "patching file arch/x86/kvm/x86.c\nHunk #2 FAILED at 3350.\n1 out of 4 hunks FAILED\n";
        assert_eq!(failed_file(out).as_deref(), Some("arch/x86/kvm/x86.c"));
        assert_eq!(failed_file("patching file a.c\n"), None);
        let p = "--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n--- a/y/z.h\n+++ b/y/z.h\n";
        assert_eq!(touched_files(p), vec!["x.c", "y/z.h"]);
    }

    #[test]
    fn a_series_that_does_not_apply_names_the_patch_and_file() {
        let d = tempfile::tempdir().unwrap();
        let pristine = d.path().join("src");
        std::fs::create_dir_all(pristine.join("arch/x86/kvm")).unwrap();
        std::fs::write(
            pristine.join("arch/x86/kvm/x86.c"),
            "int a;\nint b;\nint c;\n",
        )
        .unwrap();
        let series_dir = d.path().join("series");
        std::fs::create_dir_all(&series_dir).unwrap();
        std::fs::write(series_dir.join("series"), "0001-x.patch\n").unwrap();
        std::fs::write(
            series_dir.join("0001-x.patch"),
            "--- a/arch/x86/kvm/x86.c\n+++ b/arch/x86/kvm/x86.c\n@@ -1,3 +1,3 @@\n int a;\n-int NOT_THERE;\n+int d;\n int c;\n",
        )
        .unwrap();
        let tree = SourceTree {
            dir: pristine.clone(),
            version: "t".into(),
        };
        match apply_in(&tree, &series_dir, &d.path().join("work")) {
            Err(XtaskError::Patch { patch, file, .. }) => {
                assert!(patch.ends_with("0001-x.patch"));
                assert_eq!(file, "arch/x86/kvm/x86.c");
            }
            other => panic!("expected a patch failure, got {other:?}"),
        }
        // The pristine tree is untouched (the work copy is hard-linked, patch writes anew).
        assert_eq!(
            std::fs::read_to_string(pristine.join("arch/x86/kvm/x86.c")).unwrap(),
            "int a;\nint b;\nint c;\n"
        );
        // A good patch applies; a later broken one is undone on the next run.
        std::fs::write(
            series_dir.join("0001-x.patch"),
            "--- a/arch/x86/kvm/x86.c\n+++ b/arch/x86/kvm/x86.c\n@@ -1,3 +1,3 @@\n int a;\n-int b;\n+int d;\n int c;\n",
        )
        .unwrap();
        let t = apply_in(&tree, &series_dir, &d.path().join("work")).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.dir.join("arch/x86/kvm/x86.c")).unwrap(),
            "int a;\nint d;\nint c;\n"
        );
        assert_eq!(
            std::fs::read_to_string(pristine.join("arch/x86/kvm/x86.c")).unwrap(),
            "int a;\nint b;\nint c;\n"
        );
    }

    #[test]
    fn the_committed_series_are_complete() {
        for k in Kernel::ALL {
            let patches = series(&k.series_dir()).expect("each series lists existing patches");
            // The KVM change with its documentation, then the selftest.
            assert!(patches.len() >= 2, "{}", k.id());
            for p in &patches {
                let text = std::fs::read_to_string(p).unwrap();
                assert!(
                    text.contains("Signed-off-by: kvmcap developers"),
                    "{}",
                    p.display()
                );
                assert!(!touched_files(&text).is_empty(), "{}", p.display());
            }
        }
    }

    #[test]
    fn files_a_changed_series_leaves_alone_keep_their_timestamps() {
        let d = tempfile::tempdir().unwrap();
        let pristine = d.path().join("src");
        std::fs::create_dir_all(&pristine).unwrap();
        std::fs::write(pristine.join("h.h"), "int h;\n").unwrap();
        std::fs::write(pristine.join("c.c"), "int c;\n").unwrap();
        let tree = SourceTree {
            dir: pristine,
            version: "t".into(),
        };
        let series_dir = d.path().join("series");
        std::fs::create_dir_all(&series_dir).unwrap();
        std::fs::write(series_dir.join("series"), "1.patch\n").unwrap();
        let patch = |c: &str| {
            format!(
                "--- a/h.h\n+++ b/h.h\n@@ -1 +1 @@\n-int h;\n+int h2;\n--- a/c.c\n+++ b/c.c\n@@ -1 +1 @@\n-int c;\n+int {c};\n"
            )
        };
        std::fs::write(series_dir.join("1.patch"), patch("c1")).unwrap();
        let work = d.path().join("work");
        let t = apply_in(&tree, &series_dir, &work).unwrap();
        let mtime = |f: &str| {
            std::fs::metadata(t.dir.join(f))
                .unwrap()
                .modified()
                .unwrap()
        };
        let (h0, c0) = (mtime("h.h"), mtime("c.c"));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(series_dir.join("1.patch"), patch("c2")).unwrap();
        apply_in(&tree, &series_dir, &work).unwrap();
        assert_eq!(
            mtime("h.h"),
            h0,
            "h.h did not change and keeps its timestamp"
        );
        assert_ne!(mtime("c.c"), c0);
        assert_eq!(
            std::fs::read_to_string(t.dir.join("c.c")).unwrap(),
            "int c2;\n"
        );
        // A series that no longer touches c.c gives it back its pristine content.
        std::fs::write(
            series_dir.join("1.patch"),
            "--- a/h.h\n+++ b/h.h\n@@ -1 +1 @@\n-int h;\n+int h2;\n",
        )
        .unwrap();
        apply_in(&tree, &series_dir, &work).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.dir.join("c.c")).unwrap(),
            "int c;\n"
        );
        assert_eq!(mtime("h.h"), h0);
    }

    #[test]
    fn a_patch_that_needs_fuzz_does_not_land() {
        let d = tempfile::tempdir().unwrap();
        let pristine = d.path().join("src");
        std::fs::create_dir_all(&pristine).unwrap();
        // The context's first line moved on: GNU patch's default fuzz would apply it.
        std::fs::write(pristine.join("a.c"), "int z;\nint b;\nint c;\nint e;\n").unwrap();
        let series_dir = d.path().join("series");
        std::fs::create_dir_all(&series_dir).unwrap();
        std::fs::write(series_dir.join("series"), "0001-x.patch\n").unwrap();
        std::fs::write(
            series_dir.join("0001-x.patch"),
            "--- a/a.c\n+++ b/a.c\n@@ -1,4 +1,4 @@\n int a;\n int b;\n-int c;\n+int d;\n int e;\n",
        )
        .unwrap();
        let tree = SourceTree {
            dir: pristine,
            version: "t".into(),
        };
        match apply_in(&tree, &series_dir, &d.path().join("work")) {
            Err(XtaskError::Patch { file, .. }) => assert_eq!(file, "a.c"),
            other => panic!("a fuzzy hunk applied: {other:?}"),
        }
    }
}
