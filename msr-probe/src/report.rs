//! The probe report: a fingerprint of the machine and every reading, for people and machines.

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::index::MsrIndex;
use crate::reader::{MsrReader, Reading};

/// Where and on what a report was taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// CPU vendor string (`GenuineIntel`, `AuthenticAMD`, ...).
    pub cpu_vendor: String,
    /// CPU model name.
    pub cpu_model: String,
    /// CPU family/model/stepping as `family.model.stepping`.
    pub cpu_fms: String,
    /// Whether the kernel says it runs under a hypervisor.
    pub hypervisor: bool,
}

impl Fingerprint {
    /// Reads the fingerprint of the running system from `/proc`, once per process (the
    /// kernel and CPU do not change under it); a caller may warm it on another thread.
    pub fn of_running_system() -> Self {
        static CACHE: std::sync::OnceLock<Fingerprint> = std::sync::OnceLock::new();
        CACHE.get_or_init(Self::read_running_system).clone()
    }

    fn read_running_system() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        // Only the first CPU's block: the kernel formats /proc/cpuinfo as it is read, and
        // every CPU's block costs CPUID calls (trapped, on a virtual host).
        let mut cpuinfo = String::new();
        if let Ok(f) = std::fs::File::open("/proc/cpuinfo") {
            use std::io::BufRead;
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if line.trim().is_empty() {
                    break;
                }
                cpuinfo.push_str(&line);
                cpuinfo.push('\n');
            }
        }
        Self::from_cpuinfo(kernel, &cpuinfo)
    }

    /// Builds a fingerprint from a kernel release and `/proc/cpuinfo` text.
    pub fn from_cpuinfo(kernel: String, cpuinfo: &str) -> Self {
        let get = |key: &str| {
            cpuinfo
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == key).then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let flags = get("flags");
        Self {
            kernel,
            cpu_vendor: get("vendor_id"),
            cpu_model: get("model name"),
            cpu_fms: format!("{}.{}.{}", get("cpu family"), get("model"), get("stepping")),
            hypervisor: flags.split_whitespace().any(|f| f == "hypervisor"),
        }
    }
}

/// One MSR read on one CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrReading {
    /// The MSR.
    pub index: MsrIndex,
    /// Its catalog name, or `?`.
    pub name: String,
    /// What the read gave.
    pub reading: Reading,
}

/// Everything read on one CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuReadings {
    /// The CPU number.
    pub cpu: u32,
    /// The readings, in request order.
    pub readings: Vec<MsrReading>,
    /// The kernel's `topology/ppin` for this CPU, if it shows one (JSON: a hex string).
    #[serde(with = "crate::hex::opt_u64_hex", default)]
    pub sysfs_ppin: Option<u64>,
}

/// A complete probe: one JSON document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The tool and its version.
    pub tool: String,
    /// The host source the readings came from (`devmsr` here).
    pub source: String,
    /// The machine.
    pub fingerprint: Fingerprint,
    /// Per CPU.
    pub cpus: Vec<CpuReadings>,
}

impl ProbeReport {
    /// Reads `msrs` on `cpus` through `reader`.
    pub fn collect(
        reader: &dyn MsrReader,
        catalog: &Catalog,
        cpus: &[u32],
        msrs: &[MsrIndex],
        fingerprint: Fingerprint,
    ) -> Self {
        let cpus = cpus
            .iter()
            .map(|&cpu| CpuReadings {
                cpu,
                readings: msrs
                    .iter()
                    .zip(reader.read_many(cpu, msrs))
                    .map(|(&index, reading)| MsrReading {
                        index,
                        name: catalog.name_of(index).to_owned(),
                        reading,
                    })
                    .collect(),
                sysfs_ppin: reader.sysfs_ppin(cpu),
            })
            .collect();
        Self {
            tool: concat!("msr-probe ", env!("CARGO_PKG_VERSION")).to_owned(),
            source: "devmsr".into(),
            fingerprint,
            cpus,
        }
    }

    /// Every reading with its CPU.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &MsrReading)> {
        self.cpus
            .iter()
            .flat_map(|c| c.readings.iter().map(move |r| (c.cpu, r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_from_cpuinfo() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu hypervisor ppin\n\nprocessor\t: 1\nvendor_id\t: Other\n";
        let f = Fingerprint::from_cpuinfo("6.12.0".into(), info);
        assert_eq!(f.cpu_vendor, "AuthenticAMD");
        assert_eq!(f.cpu_model, "AMD EPYC");
        assert_eq!(f.cpu_fms, "25.1.1");
        assert!(f.hypervisor);
    }
}
