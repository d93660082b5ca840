//! Feature and scenario files: those built into kvmcap (every file of the workspace's
//! `fixtures/features` and `fixtures/scenarios`, embedded at build time, so a copied binary
//! runs them) and the user's own, in a directory laid out the same way (`DIR/features/*.toml`,
//! `DIR/scenarios/*.toml`) named by `--fixtures DIR` or `KVMCAP_FIXTURES`, which is searched
//! first. In the lab, kvmcap's own files sit at `/features` and `/scenarios` (directory `/`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));

/// The environment variable naming the user's fixtures directory.
pub const ENV: &str = "KVMCAP_FIXTURES";

static USER_DIR: OnceLock<PathBuf> = OnceLock::new();

/// What kind of file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A feature file (`features/NAME.toml`).
    Feature,
    /// A scenario file (`scenarios/NAME.toml`).
    Scenario,
}

impl Kind {
    fn folder(self) -> &'static str {
        match self {
            Self::Feature => "features",
            Self::Scenario => "scenarios",
        }
    }

    fn builtin(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Feature => FEATURES,
            Self::Scenario => SCENARIOS,
        }
    }
}

/// Sets the user's fixtures directory for this process (`--fixtures DIR`); the first call wins.
pub fn set_user_dir(dir: PathBuf) {
    let _ = USER_DIR.set(dir);
}

/// The user's fixtures directory: `--fixtures`, else `KVMCAP_FIXTURES`.
pub fn user_dir() -> Option<PathBuf> {
    USER_DIR.get().cloned().or_else(|| {
        std::env::var_os(ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Whether `name` is a file path rather than a name.
pub fn is_path(name: &str) -> bool {
    name.contains('/') || name.ends_with(".toml")
}

/// A file found by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// In the user's directory.
    File(PathBuf),
    /// Built in: its text.
    Builtin(&'static str),
}

/// Finds `name` of `kind`: the user's directory first, then the built-in files.
pub fn find(kind: Kind, name: &str) -> Option<Found> {
    if let Some(dir) = user_dir() {
        let p = dir.join(kind.folder()).join(format!("{name}.toml"));
        if p.is_file() {
            return Some(Found::File(p));
        }
    }
    kind.builtin()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| Found::Builtin(text))
}

/// Why a named file could not be had.
#[derive(Debug)]
pub enum Missing {
    /// No file of that name (the known names attached).
    Unknown {
        /// The names known, comma-separated.
        known: String,
    },
    /// The file is there but cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The text of `name_or_path` of `kind` and its origin for messages: a path is read as it is;
/// a name is the user's file, else the built-in one ([`find`]).
pub fn text(kind: Kind, name_or_path: &str) -> Result<(String, String), Missing> {
    let read = |path: PathBuf| match std::fs::read_to_string(&path) {
        Ok(t) => Ok((t, path.display().to_string())),
        Err(source) => Err(Missing::Read { path, source }),
    };
    if is_path(name_or_path) {
        return read(PathBuf::from(name_or_path));
    }
    match find(kind, name_or_path) {
        Some(Found::File(path)) => read(path),
        Some(Found::Builtin(t)) => Ok((t.to_owned(), format!("{name_or_path} (built in)"))),
        None => Err(Missing::Unknown { known: names(kind) }),
    }
}

/// One listed file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// Where it comes from: `built in` or the file's path.
    pub origin: String,
}

/// Every file of `kind` by name, the user's shadowing the built-in ones, sorted by name.
pub fn list(kind: Kind) -> Vec<Entry> {
    let mut out: Vec<Entry> = kind
        .builtin()
        .iter()
        .map(|(n, _)| Entry {
            name: (*n).to_owned(),
            origin: "built in".into(),
        })
        .collect();
    if let Some(dir) = user_dir() {
        for (name, path) in toml_files(&dir.join(kind.folder())) {
            out.retain(|e| e.name != name);
            out.push(Entry {
                name,
                origin: path.display().to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn toml_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_owned(), p)))
        .collect()
}

/// The names of `kind`, comma-separated (for error messages).
pub fn names(kind: Kind) -> String {
    list(kind)
        .into_iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workspace_fixture_is_built_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        for kind in [Kind::Feature, Kind::Scenario] {
            let on_disk = toml_files(&root.join(kind.folder()));
            assert!(!on_disk.is_empty());
            for (name, path) in on_disk {
                let Some(Found::Builtin(text)) = find(kind, &name) else {
                    panic!("{name} is not built in");
                };
                assert_eq!(text, std::fs::read_to_string(path).unwrap());
            }
        }
        assert!(find(Kind::Feature, "no-such-feature").is_none());
    }
}
