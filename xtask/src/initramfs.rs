//! The initramfs images: the guest's (msr-probe as `/init`) and the lab's (kvmcap as `/init`,
//! with the guest kernel, the guest initramfs and the scenarios).

use std::path::{Path, PathBuf};

use guest_tools::cpio::Builder;

use crate::{static_build, target_dir, workspace_root, XtaskError};

fn read(path: &Path) -> Result<Vec<u8>, XtaskError> {
    std::fs::read(path).map_err(|e| XtaskError::Output {
        path: path.to_owned(),
        problem: format!("cannot read: {e}"),
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), XtaskError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| XtaskError::Output {
            path: d.to_owned(),
            problem: e.to_string(),
        })?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| XtaskError::Output {
            path: path.to_owned(),
            problem: e.to_string(),
        })
}

fn cpio_err(e: guest_tools::cpio::CpioError) -> XtaskError {
    XtaskError::Output {
        path: PathBuf::from("initramfs"),
        problem: e.to_string(),
    }
}

/// Where xtask keeps its images.
pub fn out_dir() -> PathBuf {
    target_dir().join("kvmcap")
}

/// The base of every image: `/dev/console` so `/init` has a console, and the mount points.
fn base() -> Builder {
    let mut b = Builder::new();
    b.dir("dev")
        .char_dev("dev/console", 0o600, 5, 1)
        .dir("proc")
        .dir("sys");
    b
}

/// Builds the guest initramfs (static msr-probe as `/init`) and returns its path.
pub fn guest() -> Result<PathBuf, XtaskError> {
    let probe = static_build::build("msr-probe")?;
    let mut b = base();
    b.file("init", 0o755, read(&probe)?);
    let path = out_dir().join("guest-initramfs.cpio");
    write(&path, &b.finish().map_err(cpio_err)?)?;
    Ok(path)
}

/// Builds the lab initramfs around `guest_kernel`, with `selftests` under `/selftests/`, and
/// returns its path.
pub fn lab(guest_kernel: &Path, selftests: &[PathBuf]) -> Result<PathBuf, XtaskError> {
    let guest = guest()?;
    let kvmcap = static_build::build("kvmcap")?;
    let mut b = base();
    b.file("init", 0o755, read(&kvmcap)?)
        .dir("guest")
        .file("guest/bzImage", 0o644, read(guest_kernel)?)
        .file("guest/initramfs.cpio", 0o644, read(&guest)?)
        .dir("scenarios")
        .dir("selftests");
    for t in selftests {
        let name = t
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        b.file(&format!("selftests/{name}"), 0o755, read(t)?);
    }
    let dir = workspace_root().join("fixtures/scenarios");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| XtaskError::Output {
            path: dir.clone(),
            problem: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    for p in names {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        b.file(&format!("scenarios/{name}"), 0o644, read(&p)?);
    }
    let path = out_dir().join("lab-initramfs.cpio");
    write(&path, &b.finish().map_err(cpio_err)?)?;
    Ok(path)
}
