//! The library behind `cargo xtask`, so its steps are testable.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::path::PathBuf;

pub mod bench;
pub mod bench_host;
pub mod bench_lab;
pub mod bench_loop;
pub mod bench_report;
pub mod check;
pub mod codegen;
pub mod conformance;
pub mod export;
pub mod export_check;
pub mod initramfs;
pub mod kbuild;
pub mod kernel;
pub mod lab;
pub mod lab_boot;
pub mod lab_cache;
pub mod lab_options;
pub mod lab_run;
pub mod measure;
pub mod mutants;
pub mod patches;
pub mod pbv;
pub mod pipeline;
pub mod results;
pub mod selftest;
pub mod static_build;
pub mod tree;

/// Why an xtask step failed.
#[derive(Debug, thiserror::Error)]
pub enum XtaskError {
    /// the command line is wrong
    #[error("{0} (see `cargo xtask help`)")]
    Usage(String),
    /// a tool could not be started
    #[error("cannot run `{tool}`: {source}")]
    Spawn {
        /// The program.
        tool: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// a build step failed
    #[error("`{command}` failed ({status}){tail}")]
    Build {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its output, if captured.
        tail: String,
    },
    /// a tool or input is missing
    #[error("{what} is missing: {hint}")]
    Missing {
        /// What.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// the lab failed as a whole
    #[error("lab: {problem}; last console lines:\n{tail}")]
    Lab {
        /// What went wrong.
        problem: String,
        /// The end of the lab console.
        tail: String,
    },
    /// a patch of the series does not apply
    #[error("{} does not apply (hunk failed in {file}):\n{output}", patch.display())]
    Patch {
        /// The patch.
        patch: PathBuf,
        /// The file whose hunk failed.
        file: String,
        /// GNU patch's output.
        output: String,
    },
    /// an output is not what it must be
    #[error("{path}: {problem}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

impl XtaskError {
    /// The process exit code for this error (the table `cargo xtask --help` prints).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Build { .. } => 3,
            Self::Output { .. } => 4,
            Self::Missing { .. } => 5,
            Self::Lab { .. } => 6,
            Self::Patch { .. } => 7,
            Self::Spawn { .. } => 8,
        }
    }
}

/// The workspace root (where the top-level Cargo.toml is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The workspace's target directory (honours CARGO_TARGET_DIR).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Writes `bytes` to `path` atomically (a temporary file in the same folder, then a rename),
/// creating the folder; a reader never sees a partial file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), XtaskError> {
    let err = |e: std::io::Error| XtaskError::Output {
        path: path.to_owned(),
        problem: e.to_string(),
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
}

/// Installs the cargo subcommand crate `krate` with `cargo install` (what `cargo xtask fuzz`
/// and `cargo xtask review` do when theirs is missing), saying so on stderr.
pub fn cargo_install(krate: &str) -> Result<(), XtaskError> {
    eprintln!("xtask: {krate} is not installed: installing it with `cargo install {krate}`");
    let status = std::process::Command::new("cargo")
        .args(["install", "--locked", krate])
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: "cargo install".into(),
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: format!("cargo install --locked {krate}"),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(())
}
