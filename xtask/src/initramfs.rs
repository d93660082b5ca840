//! The initramfs images: the guest's (msr-probe as `/init`) and the lab's (kvmcap as `/init`,
//! with the guest kernel, the guest initramfs and the scenarios).

use std::path::{Path, PathBuf};

use guest_tools::cpio::Builder;

use crate::lab_options as lab;
use crate::{static_build, target_dir, workspace_root, write_atomic, XtaskError};

fn read(path: &Path) -> Result<Vec<u8>, XtaskError> {
    std::fs::read(path).map_err(|e| XtaskError::Output {
        path: path.to_owned(),
        problem: format!("cannot read: {e}"),
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
    write_atomic(&path, &b.finish().map_err(cpio_err)?)?;
    Ok(path)
}

/// Builds the lab initramfs around `guest_kernel`, with `selftests` under `/selftests/`, and
/// returns its path.
pub fn lab(guest_kernel: &Path, selftests: &[PathBuf]) -> Result<PathBuf, XtaskError> {
    let b = lab_builder(guest_kernel, selftests)?;
    let path = out_dir().join("lab-initramfs.cpio");
    write_atomic(&path, &b.finish().map_err(cpio_err)?)?;
    Ok(path)
}

/// The firmware QEMU's microvm machine loads for `-kernel` (what it opens, seen with strace).
const QEMU_FIRMWARE: &[&str] = &["qboot.rom", "bios-microvm.bin", "linuxboot_dma.bin"];

/// The shared objects `binary` needs, from `ldd` (the loader included).
pub fn shared_objects(binary: &Path) -> Result<Vec<PathBuf>, XtaskError> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| XtaskError::Spawn {
            tool: "ldd".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(XtaskError::Output {
            path: binary.to_owned(),
            problem: format!("ldd: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute paths in `ldd` output (`name => /path (addr)` or `/path (addr)`).
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The lab initramfs plus QEMU (`/usr/bin/qemu-system-x86_64`, its shared objects at their
/// paths, its microvm firmware), for the benchmark that boots the same guest under QEMU
/// inside the lab. About 60 MB, so only `cargo xtask bench` builds it.
pub fn bench_lab(
    guest_kernel: &Path,
    selftests: &[PathBuf],
    qemu: &Path,
) -> Result<PathBuf, XtaskError> {
    let mut b = lab_builder(guest_kernel, selftests)?;
    let mut dirs: Vec<String> = Vec::new();
    let mut add = |b: &mut Builder, at: &Path, data: Vec<u8>, perm: u32| {
        let rel = at.to_string_lossy().trim_start_matches('/').to_owned();
        let mut prefix = String::new();
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            prefix = if prefix.is_empty() {
                (*part).to_owned()
            } else {
                format!("{prefix}/{part}")
            };
            if !dirs.contains(&prefix) {
                b.dir(&prefix);
                dirs.push(prefix.clone());
            }
        }
        b.file(&rel, perm, data);
    };
    add(&mut b, Path::new(lab::LAB_QEMU), read(qemu)?, 0o755);
    for so in shared_objects(qemu)? {
        add(&mut b, &so, read(&so)?, 0o755);
    }
    let share = Path::new("/usr/share/qemu");
    for f in QEMU_FIRMWARE {
        add(&mut b, &share.join(f), read(&share.join(f))?, 0o644);
    }
    let path = out_dir().join("bench-lab-initramfs.cpio");
    write_atomic(&path, &b.finish().map_err(cpio_err)?)?;
    Ok(path)
}

/// The `.toml` files in `dir` (none if it does not exist), sorted.
fn tomls_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

/// The `.toml` files of `fixtures/SUB/`, sorted.
pub fn fixture_tomls(sub: &str) -> Result<Vec<PathBuf>, XtaskError> {
    let dir = workspace_root().join("fixtures").join(sub);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| XtaskError::Output {
            path: dir.clone(),
            problem: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    Ok(names)
}

fn lab_builder(guest_kernel: &Path, selftests: &[PathBuf]) -> Result<Builder, XtaskError> {
    let guest = guest()?;
    let kvmcap = static_build::build("kvmcap")?;
    let mut b = base();
    b.file("init", 0o755, read(&kvmcap)?)
        .dir("guest")
        .file("guest/bzImage", 0o644, read(guest_kernel)?)
        .file("guest/initramfs.cpio", 0o644, read(&guest)?)
        .dir("scenarios")
        .dir("features")
        .dir("selftests");
    for t in selftests {
        let name = t
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        b.file(&format!("selftests/{name}"), 0o755, read(t)?);
    }
    // The workspace's files, then the user's own (`cargo xtask lab --scenario FILE` or
    // `--fixtures DIR`, staged and named to kvmcap's loader), which win by name.
    let user = kvmcap::fixtures::user_dir();
    for sub in ["scenarios", "features"] {
        let mut files = fixture_tomls(sub)?;
        if let Some(dir) = &user {
            files.extend(tomls_in(&dir.join(sub)));
        }
        let mut seen = std::collections::BTreeMap::new();
        for p in files {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            seen.insert(name, p);
        }
        for (name, p) in seen {
            b.file(&format!("{sub}/{name}"), 0o644, read(&p)?);
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\tlibgone.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
