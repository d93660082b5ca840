//! `--kernel-tree DIR`: the user's own kernel, a git checkout. The series goes onto a
//! temporary branch (`kvmcap/KERNEL`) with `git am -3`, in a git worktree under
//! `target/kernel/`, so the user's branch, index and files are never touched; the build is
//! out of tree (`O=` under `target/`). A patch that does not apply is named with the file that
//! conflicts, and the worktree is reset. `--as-is` uses the tree as it stands (no series).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::{Kernel, SourceTree};
use crate::{target_dir, XtaskError};

/// `git -C DIR ARGS...`.
pub fn git(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir).args(args);
    c
}

/// Runs git in `dir`: whether it succeeded, and its output (stdout then stderr).
pub fn git_out(dir: &Path, args: &[&str]) -> Result<(bool, String), XtaskError> {
    let out = git(dir, args)
        .output()
        .map_err(|source| XtaskError::Spawn {
            tool: "git (apt-get install git)".into(),
            source,
        })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Runs git in `dir`: its trimmed output, or an error with it.
pub fn git_ok(dir: &Path, args: &[&str]) -> Result<String, XtaskError> {
    let (ok, text) = git_out(dir, args)?;
    if !ok {
        return Err(XtaskError::Build {
            command: format!("git -C {} {}", dir.display(), args.join(" ")),
            status: "failed".into(),
            tail: format!("; {}", text.trim()),
        });
    }
    Ok(text.trim().to_owned())
}

/// The files `git am -3` reported as conflicting, from its output.
pub fn conflicts(output: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for l in output.lines() {
        let f = l
            .split_once("Merge conflict in ")
            .map(|(_, f)| f)
            .or_else(|| {
                l.strip_prefix("error: patch failed: ")
                    .map(|f| f.rsplit_once(':').map_or(f, |(f, _)| f))
            })
            .or_else(|| {
                l.strip_prefix("error: ")
                    .and_then(|r| r.strip_suffix(": patch does not apply"))
            });
        if let Some(f) = f {
            let f = f.trim().to_owned();
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    files
}

/// Applies `patches` to the HEAD of the git checkout `user` on the temporary branch
/// `kvmcap/BRANCH`, in the worktree `work`; returns the patched tree. The user's checkout is
/// only read (its object store and refs gain the worktree and the branch).
pub fn apply_series(
    user: &Path,
    patches: &[PathBuf],
    branch: &str,
    work: &Path,
) -> Result<SourceTree, XtaskError> {
    let (ok, _) = git_out(user, &["rev-parse", "--is-inside-work-tree"])?;
    if !ok {
        return Err(XtaskError::Missing {
            what: format!("a git checkout at {}", user.display()),
            hint: "--kernel-tree takes a git checkout (the series goes onto a temporary branch); \
                   add --as-is to build a tree as it stands"
                .into(),
        });
    }
    let base = git_ok(user, &["rev-parse", "HEAD"])?;
    let branch = format!("kvmcap/{branch}");
    if !work.join(".git").exists() {
        let _ = std::fs::remove_dir_all(work);
        if let Some(parent) = work.parent() {
            std::fs::create_dir_all(parent).map_err(|e| XtaskError::Output {
                path: parent.to_owned(),
                problem: e.to_string(),
            })?;
        }
        let _ = git_out(user, &["worktree", "prune"]);
        let w = work.display().to_string();
        git_ok(user, &["worktree", "add", "--detach", &w, &base])?;
    }
    let _ = git_out(work, &["am", "--abort"]);
    git_ok(work, &["checkout", "-q", "-B", &branch, &base])?;
    // git am commits: without an identity of the user's, use the project's.
    let (has_identity, _) = git_out(work, &["config", "user.email"])?;
    let mut am = Command::new("git");
    am.arg("-C").arg(work);
    if !has_identity {
        am.args([
            "-c",
            "user.name=kvmcap",
            "-c",
            "user.email=kvmcap@localhost",
        ]);
    }
    for p in patches {
        let out = am
            .args(["am", "-3"])
            .arg(p)
            .output()
            .map_err(|source| XtaskError::Spawn {
                tool: "git am".into(),
                source,
            })?;
        // `am` keeps its arguments: a fresh command per patch.
        am = Command::new("git");
        am.arg("-C").arg(work);
        if !has_identity {
            am.args([
                "-c",
                "user.name=kvmcap",
                "-c",
                "user.email=kvmcap@localhost",
            ]);
        }
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let mut files = conflicts(&text);
            if files.is_empty() {
                // The unmerged paths the 3-way merge left.
                let (_, unmerged) = git_out(work, &["diff", "--name-only", "--diff-filter=U"])?;
                files = unmerged.lines().map(str::to_owned).collect();
            }
            let _ = git_out(work, &["am", "--abort"]);
            return Err(XtaskError::Patch {
                patch: p.clone(),
                file: if files.is_empty() {
                    "?".into()
                } else {
                    files.join(", ")
                },
                output: format!(
                    "git am -3 onto {} ({base}) in {}: {}",
                    user.display(),
                    work.display(),
                    text.trim()
                ),
            });
        }
    }
    let head = git_ok(work, &["rev-parse", "--short=12", "HEAD"])?;
    eprintln!(
        "xtask: {} patches on {} ({}) as {branch} = {head} in {}",
        patches.len(),
        user.display(),
        &base[..12.min(base.len())],
        work.display()
    );
    // One build folder per checkout and series line (make keeps it incremental).
    Ok(SourceTree {
        dir: work.to_owned(),
        version: format!("git:{branch}:{}", user.display()),
    })
}

/// The worktree for `kernel`'s series on a user's tree.
pub fn worktree(kernel: Kernel) -> PathBuf {
    target_dir()
        .join("kernel")
        .join(format!("tree-{}", kernel.id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
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
    fn the_series_goes_onto_a_temporary_branch_and_a_conflict_is_named() {
        let d = tempfile::tempdir().unwrap();
        let user = d.path().join("linux");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("x.c"), "int a;\nint b;\nint c;\n").unwrap();
        sh(&user, &["init", "-q", "-b", "mine"]);
        sh(&user, &["add", "x.c"]);
        sh(&user, &["commit", "-qm", "base"]);
        // The series: one patch from git format-patch (with its index line, for -3).
        sh(&user, &["checkout", "-qb", "series"]);
        std::fs::write(user.join("x.c"), "int a;\nint d;\nint c;\n").unwrap();
        sh(&user, &["commit", "-qam", "x: change b"]);
        let out = d.path().join("out");
        let o = out.display().to_string();
        sh(&user, &["format-patch", "-q", "-1", "-o", &o]);
        sh(&user, &["checkout", "-q", "mine"]);
        sh(&user, &["branch", "-qD", "series"]);
        let patch = std::fs::read_dir(&out)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let work = d.path().join("work");

        let t = apply_series(&user, std::slice::from_ref(&patch), "newest", &work).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.dir.join("x.c")).unwrap(),
            "int a;\nint d;\nint c;\n"
        );
        // The user's checkout is as it was.
        assert_eq!(
            std::fs::read_to_string(user.join("x.c")).unwrap(),
            "int a;\nint b;\nint c;\n"
        );
        assert_eq!(
            git_ok(&user, &["branch", "--show-current"]).unwrap(),
            "mine"
        );

        // The user's branch moves on and conflicts with the patch.
        std::fs::write(user.join("x.c"), "int a;\nint bb;\nint c;\n").unwrap();
        sh(&user, &["commit", "-qam", "theirs"]);
        let head = git_ok(&user, &["rev-parse", "HEAD"]).unwrap();
        match apply_series(&user, std::slice::from_ref(&patch), "newest", &work) {
            Err(XtaskError::Patch { patch: p, file, .. }) => {
                assert_eq!(p, patch);
                assert_eq!(file, "x.c");
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(git_ok(&user, &["rev-parse", "HEAD"]).unwrap(), head);
        assert_eq!(git_ok(&user, &["status", "--porcelain"]).unwrap(), "");
        assert_eq!(
            git_ok(&user, &["branch", "--show-current"]).unwrap(),
            "mine"
        );
    }

    #[test]
    fn a_tree_that_is_not_git_is_refused_with_the_way_out() {
        let d = tempfile::tempdir().unwrap();
        let e = apply_series(d.path(), &[], "newest", &d.path().join("w")).unwrap_err();
        assert!(e.to_string().contains("--as-is"), "{e}");
    }
}
