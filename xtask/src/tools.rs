//! `cargo xtask review` and `cargo xtask docs`.

use std::path::Path;
use std::process::{Command, Stdio};

use xtask::XtaskError;

fn spawn(tool: &str) -> impl Fn(std::io::Error) -> XtaskError + '_ {
    move |source| XtaskError::Spawn {
        tool: tool.into(),
        source,
    }
}

/// `cargo insta review --workspace`: the tests' snapshots and patch-boot-verify's committed
/// expectations (xtask/tests/expected/, insta snapshot files); cargo-insta is installed when
/// missing.
pub fn review() -> Result<bool, XtaskError> {
    let installed = Command::new("cargo")
        .args(["insta", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        xtask::cargo_install("cargo-insta")?;
    }
    let status = Command::new("cargo")
        .args(["insta", "review", "--workspace"])
        .current_dir(xtask::workspace_root())
        .status()
        .map_err(spawn("cargo insta review"))?;
    Ok(status.success())
}

/// Shell completions (bash, zsh, fish) and man pages of kvmcap (its hidden `completions` and
/// `manpage` subcommands, from the same clap definitions it parses with) into
/// target/kvmcap/share/.
pub fn docs() -> Result<bool, XtaskError> {
    let root = xtask::workspace_root();
    let status = Command::new("cargo")
        .args(["build", "--quiet", "-p", "kvmcap", "--bin", "kvmcap"])
        .current_dir(&root)
        .status()
        .map_err(spawn("cargo build"))?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: "cargo build -p kvmcap".into(),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    let kvmcap = xtask::target_dir().join("debug/kvmcap");
    let share = xtask::initramfs::out_dir().join("share");
    let out = |args: &[&str], to: &Path| -> Result<(), XtaskError> {
        let o = Command::new(&kvmcap)
            .args(args)
            .output()
            .map_err(spawn("kvmcap"))?;
        if !o.status.success() || o.stdout.is_empty() {
            return Err(XtaskError::Output {
                path: to.to_owned(),
                problem: format!(
                    "kvmcap {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            });
        }
        xtask::write_atomic(to, &o.stdout)?;
        println!("{}", to.display());
        Ok(())
    };
    for (shell, file) in [
        ("bash", "completions/kvmcap.bash"),
        ("zsh", "completions/_kvmcap"),
        ("fish", "completions/kvmcap.fish"),
    ] {
        out(&["completions", shell], &share.join(file))?;
    }
    out(&["manpage"], &share.join("man/man1/kvmcap.1"))?;
    Ok(true)
}
