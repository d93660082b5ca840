//! The steps every lab run shares: source, series, kernel build, selftest, lab initramfs.

use std::path::{Path, PathBuf};

use crate::kernel::{self, Built, SourceTree};
use crate::{initramfs, lab, patches, pbv, selftest, XtaskError};

/// Everything a lab boot needs.
#[derive(Clone, Debug)]
pub struct Artifacts {
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
    /// kernel finds one CPU per socket), 1 GiB, a 15-minute deadline, `jobs` inside.
    pub fn lab_options(&self, jobs: Vec<String>, console_log: PathBuf) -> lab::LabOptions {
        lab::LabOptions {
            kernel: self.built.bzimage.clone(),
            initramfs: self.initramfs.clone(),
            jobs,
            cpus: 2,
            mem_mib: 1024,
            deadline: std::time::Duration::from_secs(900),
            console_log,
        }
    }
}

/// Fetches the source, applies `kernel-patches/` (unless `tree` is the user's own, which is
/// used as it is), builds the kernel and the series' selftest, and packs the lab initramfs.
pub fn prepare(tree: Option<&Path>) -> Result<Artifacts, XtaskError> {
    if lab::qemu().is_err() {
        // As root this installs QEMU; otherwise it names the apt-get command.
        kernel::ensure_packages(&["qemu-system-x86"])?;
    }
    let t = std::time::Instant::now();
    let tree = match tree {
        Some(t) => kernel::fetch(Some(t))?,
        None => patches::apply(&kernel::fetch(None)?, &patches::series_dir())?,
    };
    let t_tree = t.elapsed();
    let built = kernel::build(&tree, "")?;
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
    let source = tree.dir.join(format!(
        "tools/testing/selftests/kvm/x86_64/{}.c",
        pbv::SELFTEST
    ));
    if source.exists() {
        selftests.push(selftest::build(&tree, &built.build_dir, pbv::SELFTEST)?);
    }
    let t_selftest = t.elapsed();
    let initramfs = initramfs::lab(&built.bzimage, &selftests)?;
    eprintln!(
        "xtask: selftest {:.1} s, lab initramfs {:.1} s",
        t_selftest.as_secs_f64(),
        (t.elapsed() - t_selftest).as_secs_f64()
    );
    Ok(Artifacts {
        tree,
        built,
        selftests,
        initramfs,
    })
}
