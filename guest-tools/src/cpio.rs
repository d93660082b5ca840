//! The "newc" cpio format the kernel unpacks as an initramfs (Documentation/driver-api/
//! early-userspace/buffer-format.rst): a 110-byte ASCII header per entry, the NUL-terminated
//! name padded to 4 bytes, the data padded to 4 bytes, and a `TRAILER!!!` entry.

/// File type bits of `mode`.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// One archive entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading `/`.
    pub name: String,
    /// Type and permission bits.
    pub mode: u32,
    /// Device major/minor for character devices.
    pub rdev: (u32, u32),
    /// Contents (the target for symlinks).
    pub data: Vec<u8>,
}

/// Why an archive could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpioError {
    /// a name or size cannot be encoded
    #[error("cpio entry `{name}`: {problem}")]
    Entry {
        /// The entry.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// the archive is malformed
    #[error("cpio archive at byte {offset}: {problem}")]
    Malformed {
        /// Where.
        offset: usize,
        /// What is wrong.
        problem: String,
    },
}

/// Builds a newc archive.
#[derive(Clone, Debug, Default)]
pub struct Builder {
    entries: Vec<Entry>,
}

impl Builder {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: Vec<u8>) -> &mut Self {
        self.entries.push(Entry {
            name: name.trim_start_matches('/').to_owned(),
            mode,
            rdev,
            data,
        });
        self
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.push(name, S_IFDIR | 0o755, (0, 0), Vec::new())
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) -> &mut Self {
        self.push(name, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> &mut Self {
        self.push(name, S_IFCHR | (perm & 0o7777), (major, minor), Vec::new())
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.push(name, S_IFLNK | 0o777, (0, 0), target.as_bytes().to_vec())
    }

    /// The archive's bytes.
    pub fn finish(&self) -> Result<Vec<u8>, CpioError> {
        let mut out = Vec::with_capacity(
            self.entries
                .iter()
                .map(|e| e.data.len() + 128)
                .sum::<usize>()
                + 128,
        );
        for (ino, e) in self.entries.iter().enumerate() {
            write_entry(&mut out, ino as u32 + 1, e)?;
        }
        write_entry(
            &mut out,
            0,
            &Entry {
                name: TRAILER.into(),
                mode: 0,
                rdev: (0, 0),
                data: Vec::new(),
            },
        )?;
        Ok(out)
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(out: &mut Vec<u8>, ino: u32, e: &Entry) -> Result<(), CpioError> {
    let bad = |problem: &str| CpioError::Entry {
        name: e.name.clone(),
        problem: problem.to_owned(),
    };
    if e.name.is_empty() || e.name.contains('\0') {
        return Err(bad("empty name or NUL in name"));
    }
    let size = u32::try_from(e.data.len()).map_err(|_| bad("larger than 4 GiB"))?;
    let namesize = u32::try_from(e.name.len() + 1).map_err(|_| bad("name too long"))?;
    let nlink = if e.mode & 0o170000 == S_IFDIR { 2 } else { 1 };
    let fields = [
        ino, e.mode, 0, 0, nlink, 0, size, 0, 0, e.rdev.0, e.rdev.1, namesize, 0,
    ];
    out.extend_from_slice(MAGIC);
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(&e.data);
    pad4(out);
    Ok(())
}

/// Reads every entry of a newc archive (up to the trailer), validating as it goes.
pub fn read(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut at = 0usize;
    loop {
        let bad = |offset: usize, problem: &str| CpioError::Malformed {
            offset,
            problem: problem.to_owned(),
        };
        let header = bytes
            .get(at..at + 110)
            .ok_or_else(|| bad(at, "truncated header (no trailer)"))?;
        if &header[..6] != MAGIC {
            return Err(bad(at, "bad magic (not a newc archive)"));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let text = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad(at, "non-ASCII header"))?;
            *v = u32::from_str_radix(text, 16).map_err(|_| bad(at, "non-hex header field"))?;
        }
        let (mode, size, namesize) = (f[1], f[6] as usize, f[11] as usize);
        if namesize == 0 {
            return Err(bad(at, "empty name"));
        }
        let name_start = at + 110;
        let name_bytes = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad(at, "truncated name"))?;
        if name_bytes.last() != Some(&0) {
            return Err(bad(at, "name not NUL-terminated"));
        }
        let name = String::from_utf8(name_bytes[..namesize - 1].to_vec())
            .map_err(|_| bad(at, "name not UTF-8"))?;
        let data_start = (name_start + namesize).div_ceil(4) * 4;
        let data = bytes
            .get(data_start..data_start.saturating_add(size))
            .ok_or_else(|| bad(at, "truncated data"))?;
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry {
            name,
            mode,
            rdev: (f[9], f[10]),
            data: data.to_vec(),
        });
        at = (data_start + size).div_ceil(4) * 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = Builder::new();
        b.dir("dev")
            .char_dev("dev/console", 0o600, 5, 1)
            .file("/init", 0o755, b"\x7fELF...".to_vec())
            .symlink("sbin", "/")
            .file("empty", 0o644, Vec::new());
        let bytes = b.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let e = read(&bytes).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[1].rdev, (5, 1));
        assert_eq!(e[2].name, "init");
        assert_eq!(e[2].mode, S_IFREG | 0o755);
        assert_eq!(e[2].data, b"\x7fELF...");
        assert_eq!(e[3].data, b"/");
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(read(b"").is_err());
        assert!(read(&[b'x'; 200]).is_err());
        let mut b = Builder::new();
        b.file("a", 0o644, vec![1; 100]);
        let bytes = b.finish().unwrap();
        for cut in [10, 111, 150, bytes.len() - 1] {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Builder::new().file("", 0o644, vec![]).finish().is_err());
    }

    #[test]
    fn matches_gnu_cpio_when_available() {
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            assert!(
                std::env::var("KVMCAP_REQUIRE_ALL").as_deref() != Ok("1"),
                "GNU cpio is required (KVMCAP_REQUIRE_ALL=1)"
            );
            eprintln!("SKIP: GNU cpio not installed; the reader round trip covers the format");
            return;
        };
        assert!(out.status.success());
        let mut b = Builder::new();
        b.dir("d").file("d/f", 0o644, b"hello".to_vec());
        let bytes = b.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"hello");
    }
}
