//! msr-probe's errors and its one exit-code table, derived from them: each error names its
//! [`Exit`], and the table in `--help` and the README is [`Exit::table`].

use crate::catalog::{CatalogError, UnknownMsr};
use crate::index::MsrIndex;
use crate::reader::Unavailable;

/// The kinds of exit, one per code (127 is shared with rdmsr's meaning, see [`Exit::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Success,
    /// A bug in msr-probe (never a usage error).
    Internal,
    /// The CPU's device refused the open with ENXIO: no such CPU, or it is offline.
    NoSuchCpu,
    /// The CPU does not support MSRs (EIO on open).
    NoMsrSupport,
    /// The read raised #GP (EIO on pread).
    ReadFault,
    /// Opening the device was not permitted.
    PermissionDenied,
    /// The catalog file is unreadable or invalid.
    BadCatalog,
    /// Any other I/O error reading a device.
    DeviceIo,
    /// The output could not be written.
    OutputNotWritten,
    /// A usage error.
    Usage,
    /// `/dev/cpu/N/msr` does not exist (ENOENT).
    NoDevice,
}

impl Exit {
    /// Every kind, in the table's order.
    pub const ALL: [Exit; 11] = [
        Exit::Success,
        Exit::Internal,
        Exit::NoSuchCpu,
        Exit::NoMsrSupport,
        Exit::ReadFault,
        Exit::PermissionDenied,
        Exit::BadCatalog,
        Exit::DeviceIo,
        Exit::OutputNotWritten,
        Exit::Usage,
        Exit::NoDevice,
    ];

    /// The process exit code. 2, 3, 4 and 127 are rdmsr's (msr-tools 1.3): rdmsr exits 127
    /// for a usage error and for any failed open other than ENXIO and EIO, so a missing
    /// `/dev/cpu/N/msr` is 127 in both tools.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Internal => 1,
            Exit::NoSuchCpu => 2,
            Exit::NoMsrSupport => 3,
            Exit::ReadFault => 4,
            Exit::PermissionDenied => 5,
            Exit::BadCatalog => 6,
            Exit::DeviceIo => 7,
            Exit::OutputNotWritten => 8,
            Exit::Usage | Exit::NoDevice => 127,
        }
    }

    /// What the code means.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Internal => "internal failure: a bug in msr-probe",
            Exit::NoSuchCpu => "no such CPU: its device refused the open (ENXIO)",
            Exit::NoMsrSupport => "the CPU does not support MSRs (EIO on open)",
            Exit::ReadFault => "the read failed: the CPU raised #GP (EIO on read)",
            Exit::PermissionDenied => "permission denied (rdmsr: 127)",
            Exit::BadCatalog => "bad catalog file",
            Exit::DeviceIo => "any other I/O error on the device (rdmsr: 127)",
            Exit::OutputNotWritten => "the output was not written",
            Exit::Usage => "usage error",
            Exit::NoDevice => "/dev/cpu/N/msr does not exist (no msr driver, or no such CPU)",
        }
    }

    /// The table, one line per code (kinds sharing a code share its line): the text of
    /// `--help`'s EXIT CODES and of the README's.
    pub fn table() -> String {
        let mut out = String::new();
        let mut codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        codes.dedup();
        for code in codes {
            let meanings: Vec<&str> = Exit::ALL
                .iter()
                .filter(|e| e.code() == code)
                .map(|e| e.meaning())
                .collect();
            out.push_str(&format!("{code:>5}  {}\n", meanings.join("; ")));
        }
        out
    }
}

/// Why msr-probe failed; each carries what failed and names its exit code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// A bad command line.
    #[error("{0} (see msr-probe --help)")]
    Usage(String),
    /// An MSR operand that is neither a number nor a catalog name (a usage error).
    #[error(transparent)]
    UnknownMsr(#[from] UnknownMsr),
    /// The catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Reads that could not be attempted: one reason and the CPUs it applies to.
    #[error("{} {}: {reason}", if .cpus.len() == 1 { "cpu" } else { "cpus" }, cpu_list(.cpus))]
    Unavailable {
        /// Why.
        reason: Unavailable,
        /// The CPUs (empty when no CPU could even be listed).
        cpus: Vec<u32>,
    },
    /// Several reasons at once (a catalog read on many CPUs): one line each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\nmsr-probe: "))]
    Several(Vec<CliError>),
    /// The CPU raised #GP.
    #[error("CPU {cpu} cannot read MSR {index} ({name}): the CPU raised #GP")]
    Fault {
        /// The CPU.
        cpu: u32,
        /// The MSR.
        index: MsrIndex,
        /// Its catalog name.
        name: String,
    },
    /// Writing the output failed.
    #[error("{target}: not written: {message}")]
    Output {
        /// `stdout` or the path.
        target: String,
        /// The OS error.
        message: String,
    },
    /// A bug: something that cannot fail did.
    #[error("internal error: {0}")]
    Internal(String),
}

fn cpu_list(cpus: &[u32]) -> String {
    if cpus.is_empty() {
        return "(none listed under /dev/cpu)".into();
    }
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The exit of a read that could not be attempted.
pub fn unavailable_exit(u: &Unavailable) -> Exit {
    match u {
        Unavailable::NoDriver | Unavailable::UnknownCpu => Exit::NoDevice,
        Unavailable::NoSuchCpu => Exit::NoSuchCpu,
        Unavailable::CpuLacksMsr => Exit::NoMsrSupport,
        Unavailable::PermissionDenied => Exit::PermissionDenied,
        Unavailable::Io(_) => Exit::DeviceIo,
    }
}

impl CliError {
    /// Which exit this error is.
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) | CliError::UnknownMsr(_) => Exit::Usage,
            CliError::Catalog(_) => Exit::BadCatalog,
            CliError::Unavailable { reason, .. } => unavailable_exit(reason),
            CliError::Several(all) => all
                .iter()
                .map(CliError::exit)
                .max_by_key(|e| e.code())
                .unwrap_or(Exit::Internal),
            CliError::Fault { .. } => Exit::ReadFault,
            CliError::Output { .. } => Exit::OutputNotWritten,
            CliError::Internal(_) => Exit::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_code_and_usage_is_never_internal() {
        let t = Exit::table();
        assert_eq!(t.lines().count(), 10, "{t}");
        assert!(t.contains("  127  usage error; /dev/cpu/N/msr does not exist"));
        assert_eq!(CliError::Internal("x".into()).exit().code(), 1);
        let out = CliError::Output {
            target: "stdout".into(),
            message: "x".into(),
        };
        assert_eq!(out.exit().code(), 8);
        assert_eq!(
            CliError::Several(vec![
                CliError::Unavailable {
                    reason: Unavailable::NoSuchCpu,
                    cpus: vec![3]
                },
                CliError::Unavailable {
                    reason: Unavailable::PermissionDenied,
                    cpus: vec![0, 1]
                },
            ])
            .to_string(),
            "cpu 3: no such CPU (or it is offline)\nmsr-probe: cpus 0,1: permission denied: \
             reading MSRs needs CAP_SYS_RAWIO (run as root)"
        );
    }
}
