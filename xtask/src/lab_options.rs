//! How a lab is booted: its options, the lab's fixed host values, and where QEMU is.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use crate::XtaskError;

/// The PPIN every lab job's host source supplies (the `explicit` source).
pub const LAB_PPIN: &str = "MSR_PPIN=0x1122334455667788";

/// Where QEMU sits in the bench lab image (the path `kvmcap lab-init` runs).
pub const LAB_QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// A lab in which no job reported for this long is stuck as a whole (its /init gives a job at
/// most two attempts of [`kvmcap::lab::isolate::JOB_BUDGET`] each, then reports it): it is
/// ended, and the jobs it did not report run once more in a new lab ([`crate::lab::run`]).
pub const STALL: Duration =
    Duration::from_secs(2 * kvmcap::lab::isolate::JOB_BUDGET.as_secs() + 60);

/// How to run the lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// The lab kernel (also the guest kernel).
    pub kernel: PathBuf,
    /// The lab initramfs.
    pub initramfs: PathBuf,
    /// The jobs.
    pub jobs: Vec<String>,
    /// Lab CPUs.
    pub cpus: u8,
    /// Lab memory in MiB.
    pub mem_mib: u32,
    /// When to give up on the lab.
    pub deadline: Duration,
    /// Where the lab's console goes (with shards, shard N's goes to `console.N.log` beside it).
    pub console_log: PathBuf,
    /// How many lab QEMUs run the jobs in parallel, each with its share (1: one lab, the jobs
    /// in order, as the benchmarks that interleave their jobs need).
    pub shards: usize,
    /// Print a line on stderr as each job reports (`xtask: lab 3/12: run:ppin-enable:user:1`):
    /// the count so far (shared by the parallel labs) and the total.
    pub progress: Option<(Arc<AtomicUsize>, usize)>,
    /// A lab in which no job reported for this long is ended as stuck ([`STALL`]).
    pub stall: Duration,
    /// The QEMU to run (`None`: `qemu-system-x86_64` on `PATH`).
    pub qemu: Option<PathBuf>,
    /// Where passes are kept by the lab's inputs and reused ([`crate::lab_cache`]; `None`:
    /// every job runs).
    pub cache: Option<PathBuf>,
}

/// The host's TSC frequency in kHz (the lab kernel must not calibrate against the PIT under
/// TCG: measured, it can then spin forever in KVM_RUN).
pub fn host_tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// Finds QEMU on `PATH` or says how to install it.
pub fn qemu() -> Result<PathBuf, XtaskError> {
    qemu_in(std::env::var_os("PATH"))
}

/// Finds QEMU in a `PATH`-style list of directories.
pub fn qemu_in(path: Option<std::ffi::OsString>) -> Result<PathBuf, XtaskError> {
    let name = "qemu-system-x86_64";
    path.into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| XtaskError::Missing {
            what: name.into(),
            hint: "apt-get install qemu-system-x86".into(),
        })
}

/// Options for tests of the lab's machinery: one lab, 2 CPUs, files under `dir` (the kernel
/// and initramfs hold placeholder bytes), no cache, a stand-in QEMU to be set by the test.
#[cfg(test)]
pub(crate) fn test_options(dir: &std::path::Path, jobs: &[&str]) -> LabOptions {
    std::fs::write(dir.join("bzImage"), b"kernel 1").unwrap();
    std::fs::write(dir.join("lab.cpio"), b"initramfs 1").unwrap();
    LabOptions {
        kernel: dir.join("bzImage"),
        initramfs: dir.join("lab.cpio"),
        jobs: jobs.iter().map(|s| s.to_string()).collect(),
        cpus: 2,
        mem_mib: 1024,
        deadline: Duration::from_secs(60),
        console_log: dir.join("console.log"),
        shards: 1,
        progress: None,
        stall: Duration::from_secs(60),
        qemu: None,
        cache: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_qemu_says_how_to_install_it() {
        let e = qemu_in(Some("/nonexistent:/also/not".into())).unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert!(
            e.to_string().contains("apt-get install qemu-system-x86"),
            "{e}"
        );
    }
}
