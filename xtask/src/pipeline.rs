//! The steps every lab run shares: source, series, kernel build, selftest, lab initramfs.

use std::path::{Path, PathBuf};

use crate::kbuild::{self, Built};
use crate::kernel::{self, Kernel, SourceTree};
use crate::{initramfs, lab, patches, pbv, selftest, tree, XtaskError};

/// Everything a lab boot needs.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// The kernel it was built for.
    pub kernel: Kernel,
    /// The (patched) source tree.
    pub tree: SourceTree,
    /// The kernel build.
    pub built: Built,
    /// Static selftests for `/selftests/`.
    pub selftests: Vec<PathBuf>,
    /// The lab initramfs.
    pub initramfs: PathBuf,
    /// Where the preparation's time went: (step, seconds), in order.
    pub times: Vec<(&'static str, f64)>,
}

impl Artifacts {
    /// The lab as every xtask command boots it: 2 CPUs (one per socket: without ACPI the lab
    /// kernel finds one CPU per socket), 1 GiB, a 15-minute deadline, `jobs` inside, shared
    /// out over one lab QEMU per host CPU (at most 4): a job keeps about one host CPU busy.
    pub fn lab_options(&self, jobs: Vec<String>, console_log: PathBuf) -> lab::LabOptions {
        lab::LabOptions {
            progress: None,
            kernel: self.built.bzimage.clone(),
            initramfs: self.initramfs.clone(),
            jobs,
            cpus: 2,
            mem_mib: 1024,
            deadline: std::time::Duration::from_secs(900),
            console_log,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            stall: lab::STALL,
            qemu: None,
            cache: None,
        }
    }
}

/// Where the time of a run went: the preparation's steps, then the lab's, in one line.
pub fn time_line(art: &Artifacts, lab: &lab::LabRun) -> String {
    let mut parts: Vec<String> = art
        .times
        .iter()
        .map(|(what, s)| format!("{what} {s:.1} s"))
        .collect();
    let cached = lab.cached();
    let ran = lab.jobs.len() - cached;
    let kept = if cached > 0 {
        format!(", {cached} cached")
    } else {
        String::new()
    };
    parts.push(if ran == 0 {
        format!("lab not booted ({cached} jobs cached)")
    } else {
        format!(
            "lab {:.1} s ({ran} jobs in {} lab{}{kept})",
            lab.elapsed.as_secs_f64(),
            lab.shards,
            if lab.shards == 1 { "" } else { "s in parallel" }
        )
    });
    format!(
        "xtask: {} {}: {}",
        art.kernel.label(),
        if art.built.cached {
            "(kernel up to date)"
        } else {
            "(kernel rebuilt)"
        },
        parts.join(", ")
    )
}

/// Where a kernel's source comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// Debian's source of the kernel with its series applied (`target/kernel/patched-KERNEL/`).
    Debian,
    /// The user's git checkout with the series applied by `git am -3` on a temporary branch
    /// in a worktree under `target/kernel/` (`--kernel-tree DIR`).
    GitTree(&'a Path),
    /// A tree used as it stands (`--kernel-tree DIR --as-is`).
    AsIs(&'a Path),
}

/// The (patched) source tree of `kernel` from `source`.
pub fn source_tree(kernel: Kernel, source: Source<'_>) -> Result<SourceTree, XtaskError> {
    match source {
        Source::Debian => patches::apply(kernel, &kernel::fetch(kernel, None)?),
        Source::GitTree(dir) => tree::apply_series(
            dir,
            &patches::series(&kernel.series_dir())?,
            kernel.id(),
            &tree::worktree(kernel),
        ),
        Source::AsIs(dir) => kernel::fetch(kernel, Some(dir)),
    }
}

/// [`prepare_kernel`] for the main line (the newest kernel): Debian's source with the series,
/// or `tree` as it stands.
pub fn prepare(tree: Option<&Path>) -> Result<Artifacts, XtaskError> {
    prepare_kernel(Kernel::Newest, tree.map_or(Source::Debian, Source::AsIs))
}

/// Gets `kernel`'s source with its series from `source`, builds the kernel and the series'
/// selftest, and packs the lab initramfs. Each kernel has its own patched copy, build and
/// selftest folders under `target/kernel/`.
pub fn prepare_kernel(kernel: Kernel, source: Source<'_>) -> Result<Artifacts, XtaskError> {
    if lab::qemu().is_err() {
        // As root this installs QEMU; otherwise it names the apt-get command.
        kernel::ensure_packages(&["qemu-system-x86"])?;
    }
    let mut times = Vec::new();
    let mut t = std::time::Instant::now();
    let mut lap = |what: &'static str, times: &mut Vec<(&'static str, f64)>| {
        times.push((what, t.elapsed().as_secs_f64()));
        t = std::time::Instant::now();
    };
    let tree = source_tree(kernel, source)?;
    lap("source and series", &mut times);
    let built = kbuild::build(&tree)?;
    lap("kernel build", &mut times);
    eprintln!(
        "xtask: kernel {} ({}{})",
        built.bzimage.display(),
        tree.version,
        if built.cached { ", up to date" } else { "" },
    );
    let mut selftests = Vec::new();
    if let Some(subdir) = selftest::subdir(kernel, &tree.dir, pbv::SELFTEST) {
        selftests.push(selftest::build(
            kernel,
            &tree,
            &built.build_dir,
            subdir,
            pbv::SELFTEST,
        )?);
    }
    lap("selftest", &mut times);
    let initramfs = initramfs::lab(&built.bzimage, &selftests)?;
    lap("lab initramfs", &mut times);
    Ok(Artifacts {
        kernel,
        tree,
        built,
        selftests,
        initramfs,
        times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_line_names_every_step_and_the_labs() {
        let art = Artifacts {
            kernel: Kernel::Newest,
            tree: SourceTree {
                dir: "t".into(),
                version: "v".into(),
            },
            built: Built {
                bzimage: "b".into(),
                build_dir: "d".into(),
                cached: true,
                key: "k".into(),
            },
            selftests: Vec::new(),
            initramfs: "i".into(),
            times: vec![("kernel build", 0.46), ("selftest", 0.4)],
        };
        let run = lab::LabRun {
            jobs: vec![Err("x".into()), Err("y".into())],
            elapsed: std::time::Duration::from_millis(31_250),
            console_log: "c".into(),
            shards: 2,
        };
        assert_eq!(
            time_line(&art, &run),
            "xtask: 7.2 (kernel up to date): kernel build 0.5 s, selftest 0.4 s, lab 31.2 s (2 jobs in 2 labs in parallel)"
        );
    }
}
