//! Writing a report to where the user said: `-` is standard output; a regular file (or a new
//! one) is replaced atomically, so no reader ever sees half a report; anything else (a pipe,
//! a character or block device, a socket, or a symlink to one of them) is written through and
//! never replaced or renamed over. A symlink to a regular file keeps the link: the file it
//! points to is replaced. A path that names this process's own standard output or error
//! (`/dev/stdout`, `/proc/self/fd/1`, also when it is redirected to a file) is written to that
//! stream, so `--report /dev/stdout > out.json` neither replaces `out.json` nor writes it twice
//! from two offsets.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// How a report was written (for tests and for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// To standard output (`-`, or a path naming it).
    Stdout,
    /// To standard error (a path naming it).
    Stderr,
    /// A temporary file beside the target, then `rename(2)` over it.
    Atomic,
    /// Opened and written in place (pipe, device, socket, or a dangling symlink's target).
    Through,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The target could not be examined.
    #[error("{}: cannot examine it: {source}", path.display())]
    Stat {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The target is a directory.
    #[error("{}: is a directory", path.display())]
    Directory {
        /// The path.
        path: PathBuf,
    },
    /// Writing (or renaming into place) failed.
    #[error("{}: {what}: {source}", path.display())]
    Write {
        /// The path written (the symlink's target for a symlink).
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn werr<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Write {
        path: path.to_owned(),
        what,
        source,
    }
}

/// Writes `bytes` to `path` as the module says (`-` is standard output) and returns how.
pub fn write_report(path: &Path, bytes: &[u8]) -> Result<WriteMode, WriteError> {
    if path.as_os_str() == "-" {
        return to_stream(path, WriteMode::Stdout, bytes);
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Nothing there, or a symlink to nothing: a dangling symlink is written through
            // (its target is created), never replaced by a file.
            return if std::fs::symlink_metadata(path).is_ok() {
                through(path, bytes, true)
            } else {
                atomic(path, bytes, None)
            };
        }
        Err(source) => {
            return Err(WriteError::Stat {
                path: path.to_owned(),
                source,
            })
        }
    };
    let same = |stat: nix::Result<nix::sys::stat::FileStat>| {
        stat.is_ok_and(|s| s.st_dev == meta.dev() && s.st_ino == meta.ino())
    };
    if same(nix::sys::stat::fstat(std::io::stdout().as_fd())) {
        return to_stream(path, WriteMode::Stdout, bytes);
    }
    if same(nix::sys::stat::fstat(std::io::stderr().as_fd())) {
        return to_stream(path, WriteMode::Stderr, bytes);
    }
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(WriteError::Directory {
            path: path.to_owned(),
        });
    }
    if kind.is_file() {
        let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        let target = if is_link {
            std::fs::canonicalize(path).map_err(|source| WriteError::Stat {
                path: path.to_owned(),
                source,
            })?
        } else {
            path.to_owned()
        };
        return atomic(&target, bytes, Some(meta.permissions()));
    }
    if kind.is_socket() {
        let mut s = std::os::unix::net::UnixStream::connect(path).map_err(werr(path, "connect"))?;
        s.write_all(bytes).map_err(werr(path, "write"))?;
        return Ok(WriteMode::Through);
    }
    through(path, bytes, false)
}

/// Writes `bytes` to standard output. A reader that went away (`kvmcap ... | head`) is not
/// an error: what it did not read is not wanted.
pub fn stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn to_stream(path: &Path, mode: WriteMode, bytes: &[u8]) -> Result<WriteMode, WriteError> {
    let result = match mode {
        WriteMode::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(bytes).and_then(|()| e.flush())
        }
        _ => stdout(bytes),
    };
    result.map_err(werr(path, "write"))?;
    Ok(mode)
}

/// Opens `path` for writing without replacing it (no rename, no truncation of a device).
fn through(path: &Path, bytes: &[u8], create: bool) -> Result<WriteMode, WriteError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
        .map_err(werr(path, "open"))?;
    f.write_all(bytes).map_err(werr(path, "write"))?;
    Ok(WriteMode::Through)
}

/// A temporary file in `path`'s directory, synced, then renamed over `path`; the temporary
/// file is removed on any failure. An existing file's permissions are kept.
fn atomic(
    path: &Path,
    bytes: &[u8],
    keep: Option<std::fs::Permissions>,
) -> Result<WriteMode, WriteError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| WriteError::Write {
        path: path.to_owned(),
        what: "name",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(werr(&tmp, "create"))?;
        f.write_all(bytes).map_err(werr(&tmp, "write"))?;
        if let Some(p) = keep {
            f.set_permissions(p).map_err(werr(&tmp, "chmod"))?;
        }
        f.sync_all().map_err(werr(&tmp, "sync"))?;
        std::fs::rename(&tmp, path).map_err(werr(path, "rename"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| WriteMode::Atomic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn entries(d: &Path) -> usize {
        std::fs::read_dir(d).unwrap().count()
    }

    #[test]
    fn regular_file_is_replaced_whole_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        assert_eq!(write_report(&p, b"one").unwrap(), WriteMode::Atomic);
        assert_eq!(write_report(&p, b"two").unwrap(), WriteMode::Atomic);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(d.path()), 1);
        assert!(write_report(&d.path().join("missing/dir/r.json"), b"x").is_err());
        assert_eq!(entries(d.path()), 1);
        assert!(matches!(
            write_report(d.path(), b"x"),
            Err(WriteError::Directory { .. })
        ));
    }

    #[test]
    fn existing_file_keeps_its_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.json");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_report(&p, b"new").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn dash_is_stdout() {
        let d = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            write_report(Path::new("-"), b"").unwrap(),
            WriteMode::Stdout
        );
        assert!(!cwd.join("-").exists() || cwd.join("-").is_dir());
        assert_eq!(entries(d.path()), 0);
    }

    #[test]
    fn fifo_is_written_through_not_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let reader = {
            let p = p.clone();
            std::thread::spawn(move || std::fs::read(p).unwrap())
        };
        assert_eq!(write_report(&p, b"report\n").unwrap(), WriteMode::Through);
        assert_eq!(reader.join().unwrap(), b"report\n");
        assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_fifo());
        assert_eq!(entries(d.path()), 1);
    }

    #[test]
    fn dev_null_and_a_symlink_to_it_are_written_through() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            write_report(Path::new("/dev/null"), b"x").unwrap(),
            WriteMode::Through
        );
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        let link = d.path().join("null");
        symlink("/dev/null", &link).unwrap();
        assert_eq!(write_report(&link, b"x").unwrap(), WriteMode::Through);
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(entries(d.path()), 1);
    }

    #[test]
    fn symlink_to_a_file_replaces_the_file_and_keeps_the_link() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("tgt.json");
        let link = d.path().join("link.json");
        std::fs::write(&target, b"old").unwrap();
        symlink(&target, &link).unwrap();
        assert_eq!(write_report(&link, b"new").unwrap(), WriteMode::Atomic);
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(entries(d.path()), 2);
    }

    #[test]
    fn dangling_symlink_creates_its_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("later.json");
        let link = d.path().join("link.json");
        symlink(&target, &link).unwrap();
        assert_eq!(write_report(&link, b"r").unwrap(), WriteMode::Through);
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"r");
    }

    #[test]
    fn socket_is_written_through() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&p).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut got).unwrap();
            got
        });
        assert_eq!(write_report(&p, b"doc").unwrap(), WriteMode::Through);
        assert_eq!(server.join().unwrap(), b"doc");
        assert!(std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_socket());
    }
}
