//! The exit-code contract: one table ([`TABLE`]), printed after `kvmcap --help` and in
//! README.md (a test holds them equal), and the code of every error, derived from its type.

use crate::commands::scenario::ScenarioError;
use crate::commands::verify::VerifyError;
use crate::features::FeatureError;
use crate::kvm::KvmError;
use crate::negotiate::NegotiationError;
use crate::vmm::error::VmmError;

/// Every verdict as expected.
pub const OK: u8 = 0;
/// At least one verdict is not as expected.
pub const VERDICT: u8 = 1;
/// Bad command line, or a request that cannot be (an unknown name, too many vCPUs).
pub const USAGE: u8 = 2;
/// `/dev/kvm` missing, not permitted, or unusable.
pub const KVM: u8 = 3;
/// A required capability is missing.
pub const CAP_MISSING: u8 = 4;
/// `KVM_ENABLE_CAP` refused a required capability.
pub const CAP_REFUSED: u8 = 5;
/// A data file (catalog, feature, scenario, profile, kernel image) is bad.
pub const INPUT: u8 = 6;
/// The VMM failed (an ioctl, a thread, a guest that broke its contract).
pub const VMM: u8 = 7;
/// A report file could not be written.
pub const OUTPUT: u8 = 8;
/// The guest gave no usable report (no frame, a broken or forged one, a flood).
pub const NO_REPORT: u8 = 9;

/// The table: code and meaning.
pub const TABLE: &[(u8, &str)] = &[
    (OK, "every verdict as expected"),
    (VERDICT, "a verdict is not as expected"),
    (
        USAGE,
        "usage: a bad command line, an unknown name, a request that cannot be",
    ),
    (KVM, "/dev/kvm missing, not permitted or unusable"),
    (CAP_MISSING, "a required capability is missing"),
    (CAP_REFUSED, "KVM_ENABLE_CAP refused a required capability"),
    (
        INPUT,
        "a bad input file (catalog, feature, scenario, profile, kernel image)",
    ),
    (
        VMM,
        "the VMM failed (an ioctl, a thread, a guest that broke its contract)",
    ),
    (OUTPUT, "a report could not be written"),
    (NO_REPORT, "the guest gave no usable report"),
];

/// The table as `kvmcap --help` prints it.
pub fn help_table() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, what) in TABLE {
        s.push_str(&format!("  {code}  {what}\n"));
    }
    s
}

/// The table as README.md carries it (Markdown).
pub fn markdown_table() -> String {
    let mut s = String::from("| exit | meaning |\n|---|---|\n");
    for (code, what) in TABLE {
        s.push_str(&format!("| {code} | {what} |\n"));
    }
    s
}

/// An error's exit code.
pub trait ExitCode {
    /// The code.
    fn exit_code(&self) -> u8;
}

impl ExitCode for KvmError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Missing { .. }
            | Self::NotPermitted { .. }
            | Self::Open { .. }
            | Self::ApiVersion { .. } => KVM,
            _ => VMM,
        }
    }
}

impl ExitCode for VmmError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Kvm(k) => k.exit_code(),
            Self::Negotiation {
                error: NegotiationError::Missing { .. },
                ..
            } => CAP_MISSING,
            Self::Negotiation {
                error: NegotiationError::Refused { .. },
                ..
            } => CAP_REFUSED,
            Self::Request(_) | Self::Wiring(_) => USAGE,
            Self::Initial(_) | Self::Image { .. } => INPUT,
            Self::Internal(_) | Self::Vcpu { .. } => VMM,
        }
    }
}

impl ExitCode for FeatureError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Unknown { .. } => USAGE,
            Self::Read { .. } | Self::Syntax { .. } | Self::Invalid { .. } => INPUT,
        }
    }
}

impl ExitCode for ScenarioError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Vmm(v) => v.exit_code(),
            Self::Feature(f) => f.exit_code(),
            Self::Unknown { .. } | Self::Backend { .. } => USAGE,
            _ => INPUT,
        }
    }
}

impl ExitCode for VerifyError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Vmm(v) => v.exit_code(),
            Self::NoReport { .. } => NO_REPORT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_and_help_carry_the_one_table() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        assert!(
            readme.contains(&markdown_table()),
            "README.md must carry exactly this table:\n{}",
            markdown_table()
        );
        let codes: Vec<u8> = TABLE.iter().map(|(c, _)| *c).collect();
        assert_eq!(codes, (0..=9).collect::<Vec<u8>>());
        assert!(help_table().contains("  9  the guest gave no usable report"));
    }

    #[test]
    fn internal_failures_are_not_usage_errors() {
        assert_eq!(VmmError::Internal("x".into()).exit_code(), VMM);
        assert_eq!(
            VmmError::Vcpu {
                cpu: 0,
                what: "KVM_SET_REGS".into(),
                error: "x".into()
            }
            .exit_code(),
            VMM
        );
        assert_eq!(VmmError::Request("x".into()).exit_code(), USAGE);
    }
}
