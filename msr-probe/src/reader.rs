//! Reading MSRs through Linux's `/dev/cpu/N/msr`, behind a trait so tests need no device.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::index::MsrIndex;

/// A fault the CPU raised for an MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Fault {
    /// General protection fault: the MSR does not exist or the access is not allowed.
    #[serde(rename = "GP")]
    Gp,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("#GP")
    }
}

/// Why an MSR could not be read at all (as opposed to the CPU faulting on it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unavailable {
    /// The kernel has no msr driver: no `/dev/cpu/N/msr` nodes.
    NoDriver,
    /// The CPU number does not exist or is offline (its device refused the open: `ENXIO`).
    NoSuchCpu,
    /// `/dev/cpu/N/msr` does not exist and sysfs knows no CPU N.
    UnknownCpu,
    /// The CPU itself does not support MSRs (the driver returned EIO on open).
    CpuLacksMsr,
    /// The caller may not open the device (it needs CAP_SYS_RAWIO, usually root).
    PermissionDenied,
    /// Any other I/O error, with its text.
    Io(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDriver => f.write_str(
                "no msr driver: /dev/cpu/N/msr is missing (run `modprobe msr`, or build the kernel with CONFIG_X86_MSR)",
            ),
            Self::NoSuchCpu => f.write_str("no such CPU (or it is offline)"),
            Self::UnknownCpu => f.write_str("no such CPU: /dev/cpu/N/msr does not exist"),
            Self::CpuLacksMsr => f.write_str("the CPU does not support MSRs"),
            Self::PermissionDenied => f.write_str(
                "permission denied: reading MSRs needs CAP_SYS_RAWIO (run as root)",
            ),
            Self::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

/// What one attempt to read one MSR on one CPU gave.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reading {
    /// The MSR's value (JSON: a hex string).
    Value(#[serde(with = "crate::hex::u64_hex")] u64),
    /// The CPU raised a fault (through `/dev/cpu/N/msr` this is `EIO`).
    Fault(Fault),
    /// The read could not be attempted.
    Unavailable(Unavailable),
}

impl Reading {
    /// The value, if there is one.
    pub fn value(&self) -> Option<u64> {
        match self {
            Self::Value(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(v) => write!(f, "{v:#018x}"),
            Self::Fault(x) => write!(f, "{x}"),
            Self::Unavailable(u) => write!(f, "unavailable ({u})"),
        }
    }
}

/// Something that can read MSRs of the CPUs it sees.
pub trait MsrReader {
    /// Reads `msrs` on `cpu`, one reading per index, in order.
    fn read_many(&self, cpu: u32, msrs: &[MsrIndex]) -> Vec<Reading>;

    /// Reads one MSR on one CPU.
    fn read(&self, cpu: u32, msr: MsrIndex) -> Reading {
        self.read_many(cpu, &[msr])
            .pop()
            .unwrap_or(Reading::Unavailable(Unavailable::Io("no reading".into())))
    }

    /// The online CPUs, ascending.
    fn online_cpus(&self) -> Vec<u32>;

    /// The kernel's own view of a CPU's PPIN (`/sys/devices/system/cpu/cpuN/topology/ppin`),
    /// `None` when the kernel shows none.
    fn sysfs_ppin(&self, cpu: u32) -> Option<u64>;
}

/// Reads the real `/dev/cpu/N/msr` (or a tree shaped like it, for tests).
#[derive(Clone, Debug)]
pub struct DevMsr {
    dev_root: PathBuf,
    sys_root: PathBuf,
}

impl Default for DevMsr {
    fn default() -> Self {
        Self::new("/dev/cpu", "/sys/devices/system/cpu")
    }
}

/// Maps an `open()` error of `/dev/cpu/N/msr` to a reason, as `rdmsr` does, telling a missing
/// driver from a missing CPU by whether sysfs knows the CPU.
pub fn classify_open_error(err: &io::Error, cpu_exists: bool) -> Unavailable {
    match err.raw_os_error() {
        Some(ENOENT) => {
            if cpu_exists {
                Unavailable::NoDriver
            } else {
                Unavailable::UnknownCpu
            }
        }
        Some(ENXIO) | Some(ENODEV) => Unavailable::NoSuchCpu,
        Some(EIO) => Unavailable::CpuLacksMsr,
        Some(EACCES) | Some(EPERM) => Unavailable::PermissionDenied,
        _ => Unavailable::Io(err.to_string()),
    }
}

/// Maps a `pread()` error: `EIO` is the CPU's #GP, anything else is unavailable.
pub fn classify_read_error(err: &io::Error) -> Reading {
    match err.raw_os_error() {
        Some(EIO) => Reading::Fault(Fault::Gp),
        Some(ENXIO) | Some(ENODEV) => Reading::Unavailable(Unavailable::NoSuchCpu),
        Some(EACCES) | Some(EPERM) => Reading::Unavailable(Unavailable::PermissionDenied),
        _ => Reading::Unavailable(Unavailable::Io(err.to_string())),
    }
}

const EPERM: i32 = nix::libc::EPERM;
const ENOENT: i32 = nix::libc::ENOENT;
const EIO: i32 = nix::libc::EIO;
const ENXIO: i32 = nix::libc::ENXIO;
const EACCES: i32 = nix::libc::EACCES;
const ENODEV: i32 = nix::libc::ENODEV;

/// Parses a kernel CPU list such as `0-3,5,7-8`; `None` if malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65_536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

impl DevMsr {
    /// A reader rooted at `dev_root` (normally `/dev/cpu`) and `sys_root` (normally
    /// `/sys/devices/system/cpu`).
    pub fn new(dev_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> Self {
        Self {
            dev_root: dev_root.into(),
            sys_root: sys_root.into(),
        }
    }

    /// The device file of `cpu`.
    pub fn device_path(&self, cpu: u32) -> PathBuf {
        self.dev_root.join(cpu.to_string()).join("msr")
    }

    fn cpu_exists(&self, cpu: u32) -> bool {
        let sys = self.sys_root.join(format!("cpu{cpu}"));
        if self.sys_root.exists() {
            return sys.exists();
        }
        self.dev_root.join(cpu.to_string()).exists()
    }

    /// The CPUs that have a directory under the device root, ascending: what `rdmsr -a`
    /// reads (it scans `/dev/cpu` for names starting with a digit). None at all, or no
    /// device root, is the missing driver.
    pub fn device_cpus(&self) -> Result<Vec<u32>, Unavailable> {
        let rd = std::fs::read_dir(&self.dev_root).map_err(|e| classify_open_error(&e, true))?;
        let mut cpus: Vec<u32> = rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        cpus.sort_unstable();
        if cpus.is_empty() {
            return Err(Unavailable::NoDriver);
        }
        Ok(cpus)
    }

    /// Opens `cpu`'s device, or says why not.
    pub fn open(&self, cpu: u32) -> Result<File, Unavailable> {
        File::open(self.device_path(cpu)).map_err(|e| classify_open_error(&e, self.cpu_exists(cpu)))
    }
}

fn pread_u64(file: &File, msr: MsrIndex) -> Reading {
    let mut buf = [0u8; 8];
    match file.read_at(&mut buf, msr.devmsr_offset()) {
        Ok(8) => Reading::Value(u64::from_le_bytes(buf)),
        Ok(n) => Reading::Unavailable(Unavailable::Io(format!("short read of {n} bytes"))),
        Err(e) => classify_read_error(&e),
    }
}

impl MsrReader for DevMsr {
    fn read_many(&self, cpu: u32, msrs: &[MsrIndex]) -> Vec<Reading> {
        match self.open(cpu) {
            Ok(file) => msrs.iter().map(|&m| pread_u64(&file, m)).collect(),
            Err(why) => vec![Reading::Unavailable(why); msrs.len()],
        }
    }

    fn online_cpus(&self) -> Vec<u32> {
        if let Some(list) = std::fs::read_to_string(self.sys_root.join("online"))
            .ok()
            .and_then(|t| parse_cpu_list(&t))
        {
            return list;
        }
        let mut cpus: Vec<u32> = std::fs::read_dir(&self.dev_root)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        cpus.sort_unstable();
        if cpus.is_empty() {
            cpus.push(0);
        }
        cpus
    }

    fn sysfs_ppin(&self, cpu: u32) -> Option<u64> {
        read_sysfs_u64(&self.sys_root.join(format!("cpu{cpu}/topology/ppin")))
    }
}

fn read_sysfs_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    crate::index::parse_u64(text.trim())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A reader serving fixed readings, for tests of everything above the device.
    #[derive(Default)]
    pub struct FakeReader {
        pub cpus: Vec<u32>,
        pub values: HashMap<(u32, MsrIndex), Reading>,
        pub ppin: HashMap<u32, u64>,
    }

    impl MsrReader for FakeReader {
        fn read_many(&self, cpu: u32, msrs: &[MsrIndex]) -> Vec<Reading> {
            msrs.iter()
                .map(|m| {
                    if !self.cpus.contains(&cpu) {
                        Reading::Unavailable(Unavailable::NoSuchCpu)
                    } else {
                        self.values
                            .get(&(cpu, *m))
                            .cloned()
                            .unwrap_or(Reading::Fault(Fault::Gp))
                    }
                })
                .collect()
        }
        fn online_cpus(&self) -> Vec<u32> {
            self.cpus.clone()
        }
        fn sysfs_ppin(&self, cpu: u32) -> Option<u64> {
            self.ppin.get(&cpu).copied()
        }
    }

    /// Builds a fake `/dev/cpu` + sysfs tree: sparse files with values at offset = index.
    pub fn fake_tree(cpus: &[u32], values: &[(u32, u32, u64)]) -> (tempfile::TempDir, DevMsr) {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(&sys).unwrap();
        let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
        std::fs::write(sys.join("online"), list.join(",") + "\n").unwrap();
        for &c in cpus {
            std::fs::create_dir_all(dev.join(c.to_string())).unwrap();
            std::fs::create_dir_all(sys.join(format!("cpu{c}/topology"))).unwrap();
            File::create(dev.join(format!("{c}/msr"))).unwrap();
        }
        for &(c, idx, v) in values {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dev.join(format!("{c}/msr")))
                .unwrap();
            f.write_all_at(&v.to_le_bytes(), u64::from(idx)).unwrap();
        }
        (dir, DevMsr::new(dev, sys))
    }

    #[test]
    fn reads_values_at_offset_index() {
        let (dir, r) = fake_tree(&[0, 1], &[(0, 0x4f, 0x1122), (1, 0xc00102f1, 7)]);
        assert_eq!(r.read(0, MsrIndex::new(0x4f)), Reading::Value(0x1122));
        assert_eq!(r.read(1, MsrIndex::new(0xc00102f1)), Reading::Value(7));
        // Past the end of a regular file the read is short: reported, not a value.
        assert!(matches!(
            r.read(0, MsrIndex::new(0xffff_0000)),
            Reading::Unavailable(Unavailable::Io(_))
        ));
        assert_eq!(r.online_cpus(), vec![0, 1]);
        std::fs::write(dir.path().join("sys/cpu1/topology/ppin"), "0xabc\n").unwrap();
        assert_eq!(r.sysfs_ppin(1), Some(0xabc));
        assert_eq!(r.sysfs_ppin(0), None);
    }

    #[test]
    fn missing_cpu_and_missing_driver_are_told_apart() {
        let (dir, r) = fake_tree(&[0], &[]);
        assert_eq!(
            r.read(5, MsrIndex::new(0x10)),
            Reading::Unavailable(Unavailable::UnknownCpu)
        );
        assert_eq!(r.device_cpus(), Ok(vec![0]));
        std::fs::remove_dir_all(dir.path().join("dev")).unwrap();
        assert_eq!(
            r.read(0, MsrIndex::new(0x10)),
            Reading::Unavailable(Unavailable::NoDriver)
        );
        assert_eq!(r.device_cpus(), Err(Unavailable::NoDriver));
        let msg = Unavailable::NoDriver.to_string();
        assert!(msg.contains("modprobe msr") && msg.contains("CONFIG_X86_MSR"));
    }

    #[test]
    fn errno_mapping_matches_rdmsr() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify_open_error(&e(ENXIO), true), Unavailable::NoSuchCpu);
        assert_eq!(classify_open_error(&e(EIO), true), Unavailable::CpuLacksMsr);
        assert_eq!(
            classify_open_error(&e(EACCES), true),
            Unavailable::PermissionDenied
        );
        assert_eq!(
            classify_open_error(&e(EPERM), true),
            Unavailable::PermissionDenied
        );
        assert_eq!(
            classify_open_error(&e(ENOENT), false),
            Unavailable::UnknownCpu
        );
        assert!(matches!(
            classify_open_error(&e(nix::libc::EBUSY), true),
            Unavailable::Io(_)
        ));
        assert_eq!(classify_read_error(&e(EIO)), Reading::Fault(Fault::Gp));
        assert_eq!(
            classify_read_error(&e(EPERM)),
            Reading::Unavailable(Unavailable::PermissionDenied)
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5\n"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn readings_serialize_as_the_report_schema() {
        let j = |r: &Reading| serde_json::to_string(r).unwrap();
        assert_eq!(j(&Reading::Value(5)), r#"{"value":"0x5"}"#);
        assert_eq!(
            serde_json::from_str::<Reading>(r#"{"value":"0x1122334455667788"}"#).unwrap(),
            Reading::Value(0x1122_3344_5566_7788)
        );
        assert_eq!(j(&Reading::Fault(Fault::Gp)), r#"{"fault":"GP"}"#);
        assert_eq!(
            j(&Reading::Unavailable(Unavailable::NoDriver)),
            r#"{"unavailable":"no-driver"}"#
        );
    }
}
