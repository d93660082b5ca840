//! Host sources: where the host's MSR values come from, always named in the report.
//!
//! - `explicit`: a value on the command line (`--host-value MSR_PPIN=0x...`);
//! - `profile`: a recorded host dump (`fixtures/hosts/*.toml`), with its fingerprint;
//! - `sysfs`: the host's own PPIN from `/sys/devices/system/cpu/cpuN/topology/ppin`, only when
//!   the user asks for it (`--host-ppin`): the kernel keeps that file root-only (0400);
//! - `devmsr`: `/dev/cpu/N/msr` on this machine;
//! - `kvm`: `KVM_GET_MSRS` on `/dev/kvm` for KVM's feature MSRs.
//!
//! They are consulted in that order: the first that has a value for an MSR wins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use msr_probe::{Catalog, DevMsr, Fingerprint, MsrIndex, MsrReader, Reading};

/// A host value and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostValue {
    /// The reading (a value, or a fault the host CPU raised).
    #[serde(serialize_with = "crate::json::reading")]
    pub reading: Reading,
    /// The source's name (`explicit`, `profile:<file>`, `devmsr`, `kvm`).
    pub source: String,
}

/// Why a host source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// a --host-value argument is malformed
    #[error("--host-value `{0}`: expected NAME=VALUE, e.g. MSR_PPIN=0x1122334455667788")]
    BadExplicit(String),
    /// an MSR name is unknown
    #[error("--host-value: {0}")]
    UnknownMsr(#[from] msr_probe::catalog::UnknownMsr),
    /// the host's PPIN cannot be read from sysfs
    #[error("host PPIN from {path}: {problem}")]
    Sysfs {
        /// The sysfs file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// the profile cannot be read
    #[error("host profile {path}: {message}")]
    Profile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A recorded host dump.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The machine it was recorded on.
    pub fingerprint: Fingerprint,
    /// MSR name (or index) to value, as read on CPU 0.
    pub msr: BTreeMap<String, u64>,
}

/// Parses a recorded host profile's text (see [`Profile`]) into MSR values, each name resolved
/// in `catalog`; `origin` names the text in errors. Also the fuzzing entry point for profiles.
pub fn parse_profile(
    text: &str,
    origin: &str,
    catalog: &Catalog,
) -> Result<Vec<(MsrIndex, u64)>, HostError> {
    let err = |message: String| HostError::Profile {
        path: PathBuf::from(origin),
        message,
    };
    let p: Profile =
        toml::from_str(text).map_err(|e| err(e.to_string().trim_end().replace('\n', " ")))?;
    let mut values = Vec::new();
    for (name, v) in p.msr {
        values.push((catalog.resolve(&name).map_err(|e| err(e.to_string()))?, v));
    }
    Ok(values)
}

/// Every host source configured for a run.
#[derive(Default)]
pub struct HostSources {
    explicit: Vec<(MsrIndex, u64)>,
    profile: Option<(String, Vec<(MsrIndex, u64)>)>,
    sysfs: Option<(String, Vec<(MsrIndex, u64)>)>,
    devmsr: Option<DevMsr>,
    kvm: Vec<(MsrIndex, u64)>,
}

impl HostSources {
    /// Parses `NAME=VALUE` arguments into the explicit source.
    pub fn with_explicit(mut self, args: &[String], catalog: &Catalog) -> Result<Self, HostError> {
        for a in args {
            let (name, value) = a
                .split_once('=')
                .ok_or_else(|| HostError::BadExplicit(a.clone()))?;
            let index = catalog.resolve(name.trim())?;
            let value = msr_probe::index::parse_u64(value)
                .ok_or_else(|| HostError::BadExplicit(a.clone()))?;
            self.explicit.retain(|(i, _)| *i != index);
            self.explicit.push((index, value));
        }
        Ok(self)
    }

    /// Adds a recorded profile.
    pub fn with_profile(mut self, path: &Path, catalog: &Catalog) -> Result<Self, HostError> {
        let text = std::fs::read_to_string(path).map_err(|e| HostError::Profile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let values =
            parse_profile(&text, &path.display().to_string(), catalog).map_err(|e| match e {
                HostError::Profile { message, .. } => HostError::Profile {
                    path: path.to_owned(),
                    message,
                },
                other => other,
            })?;
        self.profile = Some((format!("profile:{}", path.display()), values));
        Ok(self)
    }

    /// Adds the host's own PPIN, read from `SYSFS/devices/system/cpu/cpuCPU/topology/ppin`
    /// (`sysfs` is `/sys` outside tests), as the value of every MSR in `indices` (the
    /// feature's PPIN MSRs). The kernel makes that file root-only; an unprivileged user gets
    /// a clear error, never a silent fallback.
    pub fn with_sysfs_ppin(
        mut self,
        sysfs: &Path,
        cpu: u32,
        indices: &[MsrIndex],
    ) -> Result<Self, HostError> {
        let path = sysfs.join(format!("devices/system/cpu/cpu{cpu}/topology/ppin"));
        let err = |problem: String| HostError::Sysfs {
            path: path.clone(),
            problem,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            err(match e.kind() {
                std::io::ErrorKind::NotFound => "no such file: the host kernel found no PPIN (no CPUID bit, or firmware locked it off) or has no CPU {cpu}".replace("{cpu}", &cpu.to_string()),
                std::io::ErrorKind::PermissionDenied => "permission denied: the host keeps its PPIN root-only (mode 0400); run kvmcap as root, or give the value with --host-value".into(),
                _ => e.to_string(),
            })
        })?;
        let value = msr_probe::index::parse_u64(text.trim())
            .ok_or_else(|| err(format!("`{}` is not a number", text.trim())))?;
        self.sysfs = Some((
            format!("sysfs:cpu{cpu}"),
            indices.iter().map(|&i| (i, value)).collect(),
        ));
        Ok(self)
    }

    /// Adds this machine's `/dev/cpu/N/msr` (used only where the driver is present).
    pub fn with_devmsr(mut self, reader: DevMsr) -> Self {
        self.devmsr = Some(reader);
        self
    }

    /// Adds KVM's feature MSR values (`KVM_GET_MSRS` on the system fd).
    pub fn with_kvm(mut self, values: Vec<(MsrIndex, u64)>) -> Self {
        self.kvm = values;
        self
    }

    /// The host's value of `index` on `cpu`, or `None` if no source has it.
    pub fn get(&self, cpu: u32, index: MsrIndex) -> Option<HostValue> {
        let found =
            |list: &[(MsrIndex, u64)]| list.iter().find(|(i, _)| *i == index).map(|(_, v)| *v);
        if let Some(v) = found(&self.explicit) {
            return Some(HostValue {
                reading: Reading::Value(v),
                source: "explicit".into(),
            });
        }
        for (name, list) in [&self.sysfs, &self.profile].into_iter().flatten() {
            if let Some(v) = found(list) {
                return Some(HostValue {
                    reading: Reading::Value(v),
                    source: name.clone(),
                });
            }
        }
        if let Some(dev) = &self.devmsr {
            match dev.read(cpu, index) {
                r @ (Reading::Value(_) | Reading::Fault(_)) => {
                    return Some(HostValue {
                        reading: r,
                        source: "devmsr".into(),
                    })
                }
                Reading::Unavailable(_) => {}
            }
        }
        found(&self.kvm).map(|v| HostValue {
            reading: Reading::Value(v),
            source: "kvm".into(),
        })
    }

    /// The first value any source has for one of `indices` (e.g. the host's PPIN under either
    /// vendor's index).
    pub fn first_value(&self, indices: &[MsrIndex]) -> Option<(MsrIndex, u64, String)> {
        indices.iter().find_map(|&i| match self.get(0, i) {
            Some(HostValue {
                reading: Reading::Value(v),
                source,
            }) => Some((i, v, source)),
            _ => None,
        })
    }

    /// The first value the user supplied for one of `indices`: an explicit value, the host's
    /// PPIN they asked for (`sysfs`), or a profile. Never read from this machine's MSRs
    /// unasked: that is how a value the host keeps root-only would reach a guest.
    pub fn supplied_value(&self, indices: &[MsrIndex]) -> Option<(MsrIndex, u64, String)> {
        let lists = [
            Some(("explicit".to_owned(), &self.explicit)),
            self.sysfs.as_ref().map(|(n, l)| (n.clone(), l)),
            self.profile.as_ref().map(|(n, l)| (n.clone(), l)),
        ];
        lists.into_iter().flatten().find_map(|(name, list)| {
            indices.iter().find_map(|&i| {
                list.iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, v)| (i, *v, name.clone()))
            })
        })
    }

    /// The names of the configured sources, for the report.
    pub fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.explicit.is_empty() {
            v.push("explicit".to_owned());
        }
        if let Some((n, _)) = &self.sysfs {
            v.push(n.clone());
        }
        if let Some((n, _)) = &self.profile {
            v.push(n.clone());
        }
        if self.devmsr.is_some() {
            v.push("devmsr".to_owned());
        }
        if !self.kvm.is_empty() {
            v.push("kvm".to_owned());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_ppin_is_read_and_its_absence_or_privilege_named() {
        let dir = tempfile::tempdir().unwrap();
        let topo = dir.path().join("devices/system/cpu/cpu0/topology");
        std::fs::create_dir_all(&topo).unwrap();
        let idx = [MsrIndex::new(0x4f), MsrIndex::new(0xc00102f1)];
        let e = HostSources::default()
            .with_sysfs_ppin(dir.path(), 0, &idx)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("found no PPIN"), "{e}");
        std::fs::write(topo.join("ppin"), "0x1122334455667788\n").unwrap();
        let h = HostSources::default()
            .with_sysfs_ppin(dir.path(), 0, &idx)
            .unwrap();
        let (_, v, source) = h.supplied_value(&idx[1..]).unwrap();
        assert_eq!((v, source.as_str()), (0x1122_3344_5566_7788, "sysfs:cpu0"));
        std::fs::write(topo.join("ppin"), "garbage").unwrap();
        assert!(HostSources::default()
            .with_sysfs_ppin(dir.path(), 0, &idx)
            .is_err());
    }

    #[test]
    fn explicit_beats_profile_and_errors_are_named() {
        let c = Catalog::builtin().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.toml");
        std::fs::write(&p, "[fingerprint]\nkernel='6.12'\ncpu_vendor='AuthenticAMD'\ncpu_model='x'\ncpu_fms='1.2.3'\nhypervisor=false\n[msr]\nMSR_AMD_PPIN=5\nMSR_PPIN=6\n").unwrap();
        let h = HostSources::default()
            .with_explicit(&["MSR_PPIN=0x10".into()], &c)
            .unwrap()
            .with_profile(&p, &c)
            .unwrap();
        assert_eq!(
            h.get(0, MsrIndex::new(0x4f)).unwrap().reading,
            Reading::Value(0x10)
        );
        let amd = h.get(0, MsrIndex::new(0xc00102f1)).unwrap();
        assert_eq!(
            (amd.reading, amd.source.starts_with("profile:")),
            (Reading::Value(5), true)
        );
        assert!(h.get(0, MsrIndex::new(0x10)).is_none());
        assert!(HostSources::default()
            .with_explicit(&["MSR_PPIN".into()], &c)
            .is_err());
        assert!(HostSources::default()
            .with_explicit(&["NOPE=1".into()], &c)
            .is_err());
        assert!(HostSources::default()
            .with_explicit(&["MSR_PPIN=zz".into()], &c)
            .is_err());
        // The supplied value never comes from this machine's MSRs.
        assert_eq!(
            h.supplied_value(&[MsrIndex::new(0x4f)])
                .map(|(_, v, s)| (v, s)),
            Some((0x10, "explicit".to_owned()))
        );
        std::fs::write(&p, "garbage = [").unwrap();
        assert!(HostSources::default().with_profile(&p, &c).is_err());
    }
}
