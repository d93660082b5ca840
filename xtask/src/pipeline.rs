//! The steps every lab run shares: source, series, kernel build, selftest, lab initramfs.

use std::path::{Path, PathBuf};

use crate::kernel::{self, Built, SourceTree};
use crate::{initramfs, patches, pbv, selftest, XtaskError};

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

/// Fetches the source, applies `kernel-patches/` (unless `tree` is the user's own, which is
/// used as it is), builds the kernel and the series' selftest, and packs the lab initramfs.
pub fn prepare(tree: Option<&Path>) -> Result<Artifacts, XtaskError> {
    let tree = match tree {
        Some(t) => kernel::fetch(Some(t))?,
        None => patches::apply(&kernel::fetch(None)?, &patches::series_dir())?,
    };
    let built = kernel::build(&tree, "")?;
    eprintln!(
        "xtask: kernel {} ({}{})",
        built.bzimage.display(),
        tree.version,
        if built.cached { ", up to date" } else { "" }
    );
    let mut selftests = Vec::new();
    let source = tree.dir.join(format!(
        "tools/testing/selftests/kvm/x86_64/{}.c",
        pbv::SELFTEST
    ));
    if source.exists() {
        selftests.push(selftest::build(&tree, &built.build_dir, pbv::SELFTEST)?);
    }
    let initramfs = initramfs::lab(&built.bzimage, &selftests)?;
    Ok(Artifacts {
        tree,
        built,
        selftests,
        initramfs,
    })
}
