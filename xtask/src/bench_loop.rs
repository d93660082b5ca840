//! The loops users run, timed as they run them (`cargo xtask patch-boot-verify`, the debug
//! xtask of the alias): the edit loop (touch the main line's MSR source file, then
//! patch-boot-verify to a green table), the patch-edit loop (one changed line in the main
//! line's first patch, then the same), and the whole matrix (both kernels) with nothing
//! changed; each against a peer measured in the same invocation.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::kernel::Kernel;
use crate::measure::{stats, time_once, Bench};
use crate::pbv::Tier;
use crate::{kbuild, patches, pbv, selftest, target_dir, workspace_root, XtaskError};

/// The main line's MSR source file, as the series changes it.
pub const MSR_SOURCE: &str = "arch/x86/kvm/x86.c";

/// One `cargo xtask patch-boot-verify --kernel KERNELS --tier TIER`, in milliseconds; red is
/// an error.
pub fn patch_boot_verify(kernels: &str, tier: Tier) -> Result<f64, XtaskError> {
    pbv_command(kernels, tier, &[])
}

/// [`patch_boot_verify`] with more arguments.
fn pbv_command(kernels: &str, tier: Tier, more: &[&str]) -> Result<f64, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tier = match tier {
        Tier::Full => "full",
        Tier::Edit => "edit",
    };
    time_once(
        Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "run",
                "--quiet",
                "--package",
                "xtask",
                "--",
                "patch-boot-verify",
                "--kernel",
                kernels,
                "--tier",
                tier,
            ])
            .args(more),
    )
}

/// Moves `path`'s modification time to now, its content unchanged.
fn touch(path: &Path) -> Result<(), XtaskError> {
    let f = std::fs::File::options()
        .append(true)
        .open(path)
        .map_err(io(path))?;
    f.set_modified(std::time::SystemTime::now())
        .map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> XtaskError + '_ {
    move |e| XtaskError::Output {
        path: path.to_owned(),
        problem: e.to_string(),
    }
}

/// What a cold run starts without: `kernel`'s extracted source, patched copy, kernel build
/// and selftest build (the downloaded Debian package stays: the network is not the loop).
pub fn cold_dirs(kernel: Kernel) -> Result<Vec<PathBuf>, XtaskError> {
    let pristine_version = match kernel {
        Kernel::Newest => crate::kernel::NEWEST_VERSION.to_owned(),
        Kernel::Stable612 => crate::kernel::fetch(kernel, None)?.version,
    };
    let root = target_dir().join("kernel");
    Ok(vec![
        root.join(format!("src-{pristine_version}")),
        patches::patched_root(kernel),
        kbuild::build_dir(&format!("{pristine_version}+kvmcap"))?,
        selftest::out_dir(kernel),
    ])
}

/// The line of the main line's first patch the patch-edit loop changes: the first added
/// comment line of [`MSR_SOURCE`] that opens and closes on one line. Returns its index and
/// the changed line (the comment's text with one word more: the patch still applies, only
/// that file's content changes).
pub fn edited_line(patch: &str) -> Option<(usize, String)> {
    let mut in_source = false;
    for (i, l) in patch.lines().enumerate() {
        if let Some(f) = l.strip_prefix("+++ b/") {
            in_source = f.trim() == MSR_SOURCE;
            continue;
        }
        if in_source && l.starts_with('+') && l.contains("/* ") && l.ends_with(" */") {
            let body = &l[..l.len() - 3];
            return Some((i, format!("{body} (edited) */")));
        }
    }
    None
}

/// Puts a file's original text back when dropped (the bench edits a committed patch).
struct Restore {
    path: PathBuf,
    original: String,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = crate::write_atomic(&self.path, self.original.as_bytes());
    }
}

fn first_patch() -> Result<PathBuf, XtaskError> {
    patches::series(&Kernel::Newest.series_dir())?
        .into_iter()
        .next()
        .ok_or_else(|| XtaskError::Missing {
            what: "the main line's first patch".into(),
            hint: "kernel-patches/series lists none".into(),
        })
}

/// The loops: `runs` samples each. With `cold`, one cold run of the main line's edit tier first
/// (see [`cold_dirs`]), the peer of both edit loops; without, an untimed run brings
/// everything up to date.
pub fn loops(runs: usize, cold: bool) -> Result<Vec<Bench>, XtaskError> {
    let (jobs, edit_jobs) = (pbv::jobs().len(), pbv::edit_jobs().len());
    let cold_stats = if cold {
        for d in cold_dirs(Kernel::Newest)? {
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(io(&d))?;
            }
        }
        Some(stats(&mut [patch_boot_verify("newest", Tier::Edit)?]))
    } else {
        patch_boot_verify("newest", Tier::Edit)?;
        None
    };
    let cold_peer = "the same from cold: the main line's source unpacked and patched, kernel and selftest built from scratch (the downloaded package and the Rust artifacts kept)";

    // The edit loop, in the edit tier and (interleaved) in the full tier.
    let source = patches::patched_root(Kernel::Newest)
        .join(crate::kernel::NEWEST_PACKAGE)
        .join(MSR_SOURCE);
    let (mut edit, mut edit_full) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        touch(&source)?;
        edit.push(patch_boot_verify("newest", Tier::Edit)?);
        touch(&source)?;
        edit_full.push(patch_boot_verify("newest", Tier::Full)?);
    }

    // The patch-edit loop: the line changed and back, alternately; the patch is restored
    // whatever happens.
    let patch = first_patch()?;
    let original = std::fs::read_to_string(&patch).map_err(io(&patch))?;
    let (at, changed) = edited_line(&original).ok_or_else(|| XtaskError::Output {
        path: patch.clone(),
        problem: format!("no one-line comment added to {MSR_SOURCE} to edit"),
    })?;
    let edited: String = original
        .lines()
        .enumerate()
        .map(|(i, l)| if i == at { changed.as_str() } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + if original.ends_with('\n') { "\n" } else { "" };
    let mut patch_edit = Vec::new();
    {
        let _restore = Restore {
            path: patch.clone(),
            original: original.clone(),
        };
        for i in 0..runs {
            let text = if i % 2 == 0 { &edited } else { &original };
            crate::write_atomic(&patch, text.as_bytes())?;
            patch_edit.push(patch_boot_verify("newest", Tier::Edit)?);
        }
    }

    // The whole matrix, nothing changed: answered from the lab's result cache, against the
    // same with every job run (interleaved).
    patch_boot_verify("all", Tier::Full)?;
    let (mut all, mut uncached) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        all.push(patch_boot_verify("all", Tier::Full)?);
        uncached.push(pbv_command("all", Tier::Full, &["--no-cache"])?);
    }
    let warm_note = format!(
        "warm: incremental kernel build (the changed file's object and the link), selftest and lab initramfs up to date, lab boot, the edit tier's {edit_jobs} jobs (`--tier edit`: the selftest and the kernel backend's scenarios and probe, both pairs, against the committed expectations); `cargo xtask patch-boot-verify` prints where its time goes"
    );
    let note = |what: &str| {
        if cold {
            format!("{what}; {warm_note}")
        } else {
            format!("{what}; {warm_note} (--quick: no cold run)")
        }
    };
    Ok(vec![
        Bench {
            name: format!("edit loop: touch {MSR_SOURCE}, then patch-boot-verify --tier edit (7.2) to a green table"),
            kvmcap: Some(stats(&mut edit)),
            peer: cold_peer.into(),
            peer_stats: cold_stats.clone(),
            note: note("the file's timestamp moved, its content unchanged"),
        },
        Bench {
            name: format!("edit loop in the full tier ({jobs} jobs: kernel and user, generated cases, Linux guests)"),
            kvmcap: Some(stats(&mut edit_full)),
            peer: format!("the edit tier ({edit_jobs} jobs), interleaved"),
            peer_stats: Some(stats(&mut edit.clone())),
            note: "the same touch; what the edit tier saves".into(),
        },
        Bench {
            name: format!("patch-edit loop: one changed line ({MSR_SOURCE}) in the main line's 0001, then patch-boot-verify --tier edit (7.2) to a green table"),
            kvmcap: Some(stats(&mut patch_edit)),
            peer: cold_peer.into(),
            peer_stats: cold_stats,
            note: note("the series re-applied in a staging copy, only files whose content changed are written (the other files the patch touches keep their timestamps)"),
        },
        Bench {
            name: format!("whole matrix: patch-boot-verify --kernel all (7.2 and 6.12, both pairs, kernel and user, 1 and 2 vCPUs: {} jobs), warm, nothing changed", 2 * jobs),
            kvmcap: Some(stats(&mut all)),
            peer: "the same with --no-cache: every job run again (interleaved)".into(),
            peer_stats: Some(stats(&mut uncached)),
            note: "both kernels up to date: make is skipped when nothing in the source tree changed since the last build; every job passed before in a lab booted from the same kernel image, initramfs and QEMU, so its kept report is reused (`cached` in the table); with --no-cache each kernel's lab runs its jobs in parallel QEMUs".into(),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edited_line_is_a_comment_of_the_msr_source() {
        let p = "+++ b/arch/x86/kvm/cpuid.c\n+\t/* not this */\n+++ b/arch/x86/kvm/x86.c\n \tint a; /* context */\n+\tint b;\n+\t/* PPIN is read-only */\n";
        let (i, l) = edited_line(p).unwrap();
        assert_eq!(i, 5);
        assert_eq!(l, "+\t/* PPIN is read-only (edited) */");
        assert_eq!(edited_line("+++ b/arch/x86/kvm/x86.c\n+\tint b;\n"), None);
    }

    #[test]
    fn the_main_line_has_a_line_to_edit() {
        let text = std::fs::read_to_string(first_patch().unwrap()).unwrap();
        assert!(edited_line(&text).is_some());
    }
}
