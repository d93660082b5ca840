//! `cargo xtask patch export [--to DIR]`: the main line in the form to post. The in-repo series
//! keeps its far-off capability number (1024, for lab kernels) and the project's sign-off;
//! the exported copy takes the next free capability number of the base tree's uAPI and the
//! exporter's git identity (refused without one), and its cover letter lists what the last
//! patch-boot-verify runs tested. It stays RFC: the lab is emulated (QEMU TCG, nested SVM),
//! not hardware.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::{Kernel, SourceTree};
use crate::{initramfs, patches, workspace_root, XtaskError};

/// The in-repo identity the export replaces.
pub const PROJECT_IDENTITY: &str = "kvmcap developers <kvmcap@users.noreply.github.com>";
/// The in-repo capability line the export renumbers.
pub const PROJECT_CAP_LINE: &str = "#define KVM_CAP_PPIN 1024";

/// The next free `KVM_CAP_*` number of a `include/uapi/linux/kvm.h`.
pub fn next_free_cap(uapi: &str) -> Option<u32> {
    uapi.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("#define") && w.next()?.starts_with("KVM_CAP_"))
                .then(|| w.next()?.parse::<u32>().ok())
                .flatten()
        })
        .max()
        .map(|n| n + 1)
}

fn git_config(key: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["config", key])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// The exporter's `Name <email>` from git, or why there is none.
pub fn identity() -> Result<String, XtaskError> {
    match (git_config("user.name"), git_config("user.email")) {
        (Some(n), Some(e)) => Ok(format!("{n} <{e}>")),
        _ => Err(XtaskError::Missing {
            what: "your git identity (user.name and user.email)".into(),
            hint: "the exported patches carry your Signed-off-by: git config --global user.name \
                   'Your Name' && git config --global user.email you@example.org"
                .into(),
        }),
    }
}

/// One patch (or the cover letter) in its posting form.
pub fn rewrite(text: &str, who: &str, cap: u32) -> String {
    text.replace(PROJECT_CAP_LINE, &format!("#define KVM_CAP_PPIN {cap}"))
        .replace(
            &format!("From: {PROJECT_IDENTITY}"),
            &format!("From: {who}"),
        )
        .replace(
            &format!("Signed-off-by: {PROJECT_IDENTITY}"),
            &format!("Signed-off-by: {who}"),
        )
        .replace(
            "kvmcap developers (",
            &format!("{} (", who.split(" <").next().unwrap_or(who)),
        )
}

/// What the last patch-boot-verify runs (their summaries under `target/kvmcap/pbv/`) tested.
pub fn tested() -> String {
    let mut out = String::new();
    for k in Kernel::ALL {
        let f = initramfs::out_dir()
            .join("pbv")
            .join(k.id())
            .join("summary.txt");
        if let Ok(s) = std::fs::read_to_string(&f) {
            out.push_str(&s);
        }
    }
    if out.is_empty() {
        return "No patch-boot-verify run recorded (run cargo xtask patch-boot-verify \
                --kernel all before exporting).\n"
            .into();
    }
    out
}

/// Writes the posting form of the main line into `to`; returns the files written.
pub fn run(base: &SourceTree, to: &Path) -> Result<Vec<PathBuf>, XtaskError> {
    let who = identity()?;
    let (mut written, cap) = write_series(base, to, &who)?;
    checks(base, &written, to)?;
    eprintln!(
        "xtask: KVM_CAP_PPIN = {cap} (the next free number of {}), signed off by {who}",
        base.dir.join("include/uapi/linux/kvm.h").display()
    );
    written.push(to.join("checks.txt"));
    Ok(written)
}

/// Writes the cover letter and the patches of the main line, signed off by `who`, into `to`;
/// returns the files (cover letter first) and the capability number they give.
pub fn write_series(
    base: &SourceTree,
    to: &Path,
    who: &str,
) -> Result<(Vec<PathBuf>, u32), XtaskError> {
    let uapi_path = base.dir.join("include/uapi/linux/kvm.h");
    let uapi = std::fs::read_to_string(&uapi_path).map_err(|e| XtaskError::Output {
        path: uapi_path.clone(),
        problem: e.to_string(),
    })?;
    let cap = next_free_cap(&uapi).ok_or_else(|| XtaskError::Output {
        path: uapi_path.clone(),
        problem: "no KVM_CAP_* numbers".into(),
    })?;
    let dir = Kernel::Newest.series_dir();
    let mut files = vec![dir.join("0000-cover-letter.patch")];
    files.extend(patches::series(&dir)?);
    std::fs::create_dir_all(to).map_err(|e| XtaskError::Output {
        path: to.to_owned(),
        problem: e.to_string(),
    })?;
    let mut written = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| XtaskError::Output {
            path: f.clone(),
            problem: e.to_string(),
        })?;
        let mut text = rewrite(&text, who, cap);
        if f.ends_with("0000-cover-letter.patch") {
            let tested = format!(
                "Runs behind this posting (cargo xtask patch-boot-verify; QEMU TCG\n\
                 -cpu max lab, i.e. emulated AMD SVM, not hardware; backends kernel\n\
                 and user, vendor pairs intel and amd, 1 and 2 vCPUs):\n\n{}\n",
                tested()
            );
            if let Some(i) = text.find("\nv3:\n") {
                text.insert_str(i + 1, &tested);
            }
        }
        let name = f.file_name().map(PathBuf::from).unwrap_or_default();
        let out = to.join(name);
        crate::write_atomic(&out, text.as_bytes())?;
        written.push(out);
    }
    Ok((written, cap))
}

/// `checkpatch.pl --strict` and `get_maintainer.pl` on the patches (not the cover letter),
/// from the top of the base tree, into `to/checks.txt`.
fn checks(base: &SourceTree, written: &[PathBuf], to: &Path) -> Result<(), XtaskError> {
    let mut report = String::new();
    for p in written.iter().skip(1) {
        for (tool, args) in [
            (
                "scripts/checkpatch.pl",
                vec!["--strict", "--no-summary", "--terse"],
            ),
            ("scripts/get_maintainer.pl", vec![]),
        ] {
            let o = Command::new(base.dir.join(tool))
                .current_dir(&base.dir)
                .args(&args)
                .arg(p)
                .output()
                .map_err(|source| XtaskError::Spawn {
                    tool: tool.into(),
                    source,
                })?;
            report.push_str(&format!(
                "$ {tool} {} {}\n{}{}\n",
                args.join(" "),
                p.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    let r = to.join("checks.txt");
    crate::write_atomic(&r, report.as_bytes())?;
    eprint!("{report}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_free_cap_follows_the_highest() {
        let uapi = "#define KVM_CAP_IRQCHIP 0\n#define KVM_CAP_S390_HPAGE_2G 249\n\
                    #define KVM_CAP_X86_GUEST_MODE 238\n#define KVM_CAP_FOO_BAR(x) 3\n";
        assert_eq!(next_free_cap(uapi), Some(250));
        assert_eq!(next_free_cap("nothing"), None);
    }

    #[test]
    fn the_posting_form_is_renumbered_and_resigned() {
        let t = format!(
            "From: {PROJECT_IDENTITY}\n\n{PROJECT_CAP_LINE}\nSigned-off-by: {PROJECT_IDENTITY}\n\
             kvmcap developers (2):\n"
        );
        let r = rewrite(&t, "A Dev <a@dev.org>", 250);
        assert_eq!(
            r,
            "From: A Dev <a@dev.org>\n\n#define KVM_CAP_PPIN 250\nSigned-off-by: A Dev <a@dev.org>\nA Dev (2):\n"
        );
    }

    #[test]
    fn the_main_line_carries_the_project_cap_line() {
        let list = patches::series(&Kernel::Newest.series_dir()).unwrap();
        let text = std::fs::read_to_string(&list[0]).unwrap();
        assert!(text.contains(&format!("+{PROJECT_CAP_LINE}")));
    }
}
