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
}

impl Artifacts {
    /// The lab as every xtask command boots it: 2 CPUs (one per socket: without ACPI the lab
    /// kernel finds one CPU per socket), 1 GiB, a 15-minute deadline, `jobs` inside, shared
    /// out over one lab QEMU per host CPU (at most 4): a job keeps about one host CPU busy.
    pub fn lab_options(&self, jobs: Vec<String>, console_log: PathBuf) -> lab::LabOptions {
        lab::LabOptions {
            kernel: self.built.bzimage.clone(),
            initramfs: self.initramfs.clone(),
            jobs,
            cpus: 2,
            mem_mib: 1024,
            deadline: std::time::Duration::from_secs(900),
            console_log,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
    }
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
    let t = std::time::Instant::now();
    let tree = source_tree(kernel, source)?;
    let t_tree = t.elapsed();
    let built = kbuild::build(&tree)?;
    eprintln!(
        "xtask: kernel {} ({}{}; source and series {:.1} s, build {:.1} s)",
        built.bzimage.display(),
        tree.version,
        if built.cached { ", up to date" } else { "" },
        t_tree.as_secs_f64(),
        (t.elapsed() - t_tree).as_secs_f64()
    );
    let t = std::time::Instant::now();
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
    let t_selftest = t.elapsed();
    let initramfs = initramfs::lab(&built.bzimage, &selftests)?;
    eprintln!(
        "xtask: selftest {:.1} s, lab initramfs {:.1} s",
        t_selftest.as_secs_f64(),
        (t.elapsed() - t_selftest).as_secs_f64()
    );
    Ok(Artifacts {
        kernel,
        tree,
        built,
        selftests,
        initramfs,
    })
}
