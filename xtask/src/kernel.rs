//! `cargo xtask kernel fetch`: the kernel sources the series is made for (the build is in
//! [`crate::kbuild`]).
//!
//! Two kernels (see `kernel-patches/README.md`): `newest`, the main line, is Debian's newest
//! kernel release, fetched through a private apt tree under `target/kernel/apt/` (the system's
//! apt configuration is never changed); `6.12`, the stable backport, is Debian stable's
//! `linux-source-6.12` package.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{target_dir, workspace_root, XtaskError};

/// Debian's package with the 6.12 kernel source (the stable backport's base).
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";
/// What the 6.12 package installs.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";

/// The main line's base: Debian's newest kernel release, from unstable (sid). Pinned, so the
/// series is always checked against the tree it was made for; sid keeps only its newest
/// version, so when it moves on, the fetch names the version it has (update the pin and the
/// series together).
pub const NEWEST_PACKAGE: &str = "linux-source-7.2";
/// The pinned version of [`NEWEST_PACKAGE`].
pub const NEWEST_VERSION: &str = "7.2.13-1";
/// The Debian mirror and suite the private apt tree reads (the mirror the system uses).
pub const NEWEST_SOURCES: &str = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main\n";

/// A kernel the series is maintained for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The main line: the newest kernel release Debian carries (7.2).
    Newest,
    /// The stable backport: Debian stable's 6.12.
    Stable612,
}

impl Kernel {
    /// Both, main line first.
    pub const ALL: [Kernel; 2] = [Kernel::Newest, Kernel::Stable612];

    /// The name `--kernel` takes.
    pub fn id(self) -> &'static str {
        match self {
            Kernel::Newest => "newest",
            Kernel::Stable612 => "6.12",
        }
    }

    /// The kernel's version, as the summary table shows it.
    pub fn label(self) -> &'static str {
        match self {
            Kernel::Newest => "7.2",
            Kernel::Stable612 => "6.12",
        }
    }

    /// Debian's source package.
    pub fn package(self) -> &'static str {
        match self {
            Kernel::Newest => NEWEST_PACKAGE,
            Kernel::Stable612 => SOURCE_PACKAGE,
        }
    }

    /// The folder of the kernel's series (`series`, patches, README).
    pub fn series_dir(self) -> PathBuf {
        let d = workspace_root().join("kernel-patches");
        match self {
            Kernel::Newest => d,
            Kernel::Stable612 => d.join("6.12"),
        }
    }

    /// Where the kernel keeps the x86 KVM selftests, under `tools/testing/selftests/kvm/`.
    pub fn selftest_subdir(self) -> &'static str {
        match self {
            Kernel::Newest => "x86",
            Kernel::Stable612 => "x86_64",
        }
    }

    /// `--kernel newest|6.12|all`.
    pub fn parse_list(s: &str) -> Result<Vec<Kernel>, XtaskError> {
        match s {
            "newest" | "7.2" => Ok(vec![Kernel::Newest]),
            "6.12" => Ok(vec![Kernel::Stable612]),
            "all" => Ok(Kernel::ALL.to_vec()),
            other => Err(XtaskError::Usage(format!(
                "--kernel `{other}`: newest, 6.12 or all"
            ))),
        }
    }
}

/// Debian packages a kernel build needs.
pub const BUILD_PACKAGES: &[&str] = &[
    "make",
    "gcc",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "xz-utils",
    // The lab kernel is LZ4-compressed (fixtures/kernel/kvmcap.config).
    "lz4",
];

/// A kernel source tree ready to configure.
#[derive(Clone, Debug)]
pub struct SourceTree {
    /// The tree.
    pub dir: PathBuf,
    /// Its version (the Debian package version, or `tree:<path>`).
    pub version: String,
}

/// FNV-1a, 64 bits: a stable cache key without another dependency.
pub fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Runs `cmd`, capturing its output; a failure is an error with the output's end.
pub fn run_quiet(cmd: &mut Command, what: &str) -> Result<String, XtaskError> {
    let out = cmd.output().map_err(|source| XtaskError::Spawn {
        tool: what.to_owned(),
        source,
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(XtaskError::Build {
            command: what.to_owned(),
            status: out.status.to_string(),
            tail: tail(&text, 20),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of `text`, as a suffix for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "; last lines:\n{}",
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

fn is_root() -> bool {
    nix_free_euid() == 0
}

fn nix_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Installs missing Debian packages when root; otherwise says the one command to run.
pub fn ensure_packages(packages: &[&str]) -> Result<(), XtaskError> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        return Err(XtaskError::Missing {
            what: format!("Debian packages {}", missing.join(", ")),
            hint: format!("run as root: {command}"),
        });
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run_quiet(
        Command::new("apt-get").arg("update").arg("-qq"),
        "apt-get update",
    )?;
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {}", missing.join(" ")),
    )?;
    Ok(())
}

/// Gets the source of `kernel`: `tree` if given, else Debian's package, extracted under
/// `target/kernel/`.
pub fn fetch(kernel: Kernel, tree: Option<&Path>) -> Result<SourceTree, XtaskError> {
    if let Some(t) = tree {
        if !t.join("Makefile").exists() || !t.join("arch/x86").exists() {
            return Err(XtaskError::Missing {
                what: format!("a kernel tree at {}", t.display()),
                hint:
                    "--kernel-tree must point at a Linux source tree (with Makefile and arch/x86)"
                        .into(),
            });
        }
        return Ok(SourceTree {
            dir: t.to_owned(),
            version: format!("tree:{}", t.display()),
        });
    }
    match kernel {
        Kernel::Stable612 => {
            ensure_packages(&[SOURCE_PACKAGE])?;
            let version = run_quiet(
                Command::new("dpkg-query").args(["-W", "-f=${Version}", SOURCE_PACKAGE]),
                "dpkg-query",
            )?
            .trim()
            .to_owned();
            extract(Path::new(SOURCE_TARBALL), SOURCE_PACKAGE, &version)
        }
        Kernel::Newest => {
            let tarball = fetch_newest_tarball()?;
            extract(&tarball, NEWEST_PACKAGE, NEWEST_VERSION)
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> XtaskError + '_ {
    move |e| XtaskError::Output {
        path: path.to_owned(),
        problem: e.to_string(),
    }
}

/// Unpacks `tarball` (whose top folder is `package`) once into `target/kernel/src-VERSION/`.
fn extract(tarball: &Path, package: &str, version: &str) -> Result<SourceTree, XtaskError> {
    let root = target_dir().join("kernel").join(format!("src-{version}"));
    let dir = root.join(package);
    let stamp = root.join(".extracted");
    if !stamp.exists() {
        eprintln!("xtask: extracting {} ({version})", tarball.display());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        run_quiet(
            Command::new("tar")
                .arg("-xf")
                .arg(tarball)
                .arg("-C")
                .arg(&root),
            &format!("tar -xf {}", tarball.display()),
        )?;
        std::fs::write(&stamp, version).map_err(io_err(&stamp))?;
    }
    Ok(SourceTree {
        dir,
        version: version.to_owned(),
    })
}

/// The private apt tree: its own sources.list, lists and cache under `target/kernel/apt/`,
/// passed to apt-get with `-o`, so the system's apt configuration is neither read for
/// sources nor changed.
fn private_apt(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("apt-get");
    c.arg("-q")
        .arg(format!(
            "-oDir::Etc::sourcelist={}",
            root.join("sources.list").display()
        ))
        .arg("-oDir::Etc::sourceparts=-")
        .arg(format!(
            "-oDir::Etc::preferencesparts={}",
            root.join("preferences.d").display()
        ))
        .arg(format!(
            "-oDir::State::Lists={}",
            root.join("lists").display()
        ))
        .arg(format!("-oDir::Cache={}", root.join("cache").display()))
        .arg("-oAPT::Get::List-Cleanup=0")
        .args(args);
    if is_root() {
        // apt's download sandbox user cannot write into the workspace.
        c.arg("-oAPT::Sandbox::User=root");
    }
    c
}

/// Downloads the pinned `linux-source-7.2` .deb with the private apt tree (once) and unpacks
/// its tarball; returns the tarball.
fn fetch_newest_tarball() -> Result<PathBuf, XtaskError> {
    let root = target_dir().join("kernel").join("apt");
    let deb_dir = root.join("debs");
    let deb = deb_dir.join(format!("{NEWEST_PACKAGE}_{NEWEST_VERSION}_all.deb"));
    let unpacked = root.join(format!("x-{NEWEST_VERSION}"));
    let tarball = unpacked.join(format!("usr/src/{NEWEST_PACKAGE}.tar.xz"));
    if tarball.exists() {
        return Ok(tarball);
    }
    ensure_packages(&["apt", "dpkg", "debian-archive-keyring", "xz-utils"])?;
    if !deb.exists() {
        for d in [
            "lists/partial",
            "cache/archives/partial",
            "preferences.d",
            "debs",
        ] {
            let d = root.join(d);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let list = root.join("sources.list");
        std::fs::write(&list, NEWEST_SOURCES).map_err(io_err(&list))?;
        eprintln!(
            "xtask: apt-get update (private apt tree {})",
            root.display()
        );
        run_quiet(
            &mut private_apt(&root, &["update"]),
            "apt-get update (private tree)",
        )?;
        let want = format!("{NEWEST_PACKAGE}={NEWEST_VERSION}");
        eprintln!("xtask: apt-get download {want}");
        if let Err(e) = run_quiet(
            private_apt(&root, &["download", &want]).current_dir(&deb_dir),
            &format!("apt-get download {want} (private tree)"),
        ) {
            let policy = Command::new("apt-cache")
                .arg(format!(
                    "-oDir::Etc::sourcelist={}",
                    root.join("sources.list").display()
                ))
                .arg("-oDir::Etc::sourceparts=-")
                .arg(format!(
                    "-oDir::State::Lists={}",
                    root.join("lists").display()
                ))
                .arg(format!("-oDir::Cache={}", root.join("cache").display()))
                .args(["policy", NEWEST_PACKAGE])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            return Err(XtaskError::Missing {
                what: format!("{want} in Debian unstable"),
                hint: format!(
                    "{e}\nthe mirror has:\n{}\nthe series is pinned to {NEWEST_VERSION}: \
                     port it and update NEWEST_VERSION in xtask/src/kernel.rs together",
                    policy.trim()
                ),
            });
        }
    }
    let _ = std::fs::remove_dir_all(&unpacked);
    run_quiet(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg -x linux-source .deb",
    )?;
    if !tarball.exists() {
        return Err(XtaskError::Output {
            path: tarball,
            problem: format!("not in {}", deb.display()),
        });
    }
    Ok(tarball)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_sensitive() {
        assert_eq!(fnv64(&[b"a", b"b"]), fnv64(&[b"a", b"b"]));
        assert_ne!(fnv64(&[b"ab"]), fnv64(&[b"a", b"b"]));
        assert_ne!(fnv64(&[b"a"]), fnv64(&[b"b"]));
    }

    #[test]
    fn a_bad_tree_is_named() {
        let e = fetch(Kernel::Newest, Some(Path::new("/nonexistent/tree"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tree"), "{e}");
    }

    #[test]
    fn kernel_lists_parse() {
        assert_eq!(Kernel::parse_list("newest").unwrap(), vec![Kernel::Newest]);
        assert_eq!(Kernel::parse_list("6.12").unwrap(), vec![Kernel::Stable612]);
        assert_eq!(Kernel::parse_list("all").unwrap(), Kernel::ALL.to_vec());
        assert!(Kernel::parse_list("6.1").is_err());
        assert!(Kernel::Stable612
            .series_dir()
            .ends_with("kernel-patches/6.12"));
    }

    #[test]
    fn tail_takes_the_end() {
        assert_eq!(tail("a\nb\nc", 2), "; last lines:\nb\nc");
    }
}
