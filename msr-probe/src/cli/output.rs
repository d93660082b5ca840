//! Where output goes: `-` (or no `--output`) is stdout; a regular file, or a path that does
//! not exist yet, is replaced atomically (a temporary file beside it, then `rename()`), so a
//! reader never sees half a report; anything else (a pipe, a device, `/dev/stdout`, a symlink
//! to one of them) is opened and written through, never replaced.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::cli::exit::CliError;

/// An output target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard output.
    Stdout,
    /// A path.
    Path(PathBuf),
}

impl Target {
    /// `None` or `-` is stdout.
    pub fn from_arg(arg: Option<&str>) -> Self {
        match arg {
            None | Some("-") => Target::Stdout,
            Some(p) => Target::Path(p.into()),
        }
    }

    /// Writes `bytes` to the target. A reader of stdout that went away (EPIPE, as in
    /// `msr-probe ... | head -1`) is not an error.
    pub fn write(&self, bytes: &[u8]) -> Result<(), CliError> {
        match self {
            Target::Stdout => {
                let mut so = io::stdout().lock();
                match so.write_all(bytes).and_then(|_| so.flush()) {
                    Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CliError::Output {
                        target: "stdout".into(),
                        message: e.to_string(),
                    }),
                    _ => Ok(()),
                }
            }
            Target::Path(p) => write_path(p, bytes).map_err(|e| CliError::Output {
                target: p.display().to_string(),
                message: e.to_string(),
            }),
        }
    }
}

/// How a path is written.
#[derive(Debug, PartialEq, Eq)]
pub enum Method {
    /// Replace this regular file (the symlink's target when the path is one) atomically.
    Atomic(PathBuf),
    /// Open and write through: pipes, devices, sockets, `/dev` and `/proc` paths.
    Through,
}

/// Chooses how to write `path`.
pub fn method(path: &Path) -> io::Result<Method> {
    let special = |p: &Path| p.starts_with("/dev") || p.starts_with("/proc");
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        )),
        Ok(m) if m.is_file() => {
            let real = fs::canonicalize(path)?;
            if special(path) || special(&real) {
                Ok(Method::Through)
            } else {
                Ok(Method::Atomic(real))
            }
        }
        Ok(_) => Ok(Method::Through),
        // A dangling symlink: written through, which creates its target as the shell's `>`.
        Err(e) if e.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(path).is_ok() => {
            Ok(Method::Through)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Method::Atomic(path.to_owned())),
        Err(e) => Err(e),
    }
}

fn write_path(path: &Path, bytes: &[u8]) -> io::Result<()> {
    match method(path)? {
        Method::Through => {
            // No truncation: pipes and devices have nothing to truncate, and a dangling link's
            // target is created empty.
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            f.write_all(bytes)?;
            f.flush()
        }
        Method::Atomic(real) => write_atomic(&real, bytes),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.msr-probe-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Ok(old) = fs::metadata(path) {
            f.set_permissions(old.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_replaced_and_the_rest_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.json");
        assert_eq!(method(&file).unwrap(), Method::Atomic(file.clone()));
        Target::Path(file.clone()).write(b"one\n").unwrap();
        Target::Path(file.clone()).write(b"two\n").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two\n");
        // A symlink to a regular file: the file is replaced, the link stays a link.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        Target::Path(link.clone()).write(b"three\n").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&file).unwrap(), b"three\n");
        // Devices and links to them are written through, never replaced.
        assert_eq!(method(Path::new("/dev/null")).unwrap(), Method::Through);
        let null_link = dir.path().join("null");
        std::os::unix::fs::symlink("/dev/null", &null_link).unwrap();
        assert_eq!(method(&null_link).unwrap(), Method::Through);
        Target::Path(null_link.clone()).write(b"x").unwrap();
        assert!(fs::symlink_metadata(&null_link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(method(dir.path()).is_err());
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_fifo_is_written_through() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(method(&fifo).unwrap(), Method::Through);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::read(fifo).unwrap())
        };
        Target::Path(fifo.clone()).write(b"through\n").unwrap();
        assert_eq!(reader.join().unwrap(), b"through\n");
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }
}
