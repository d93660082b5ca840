//! The KVM layer: the only module of kvmcap with `unsafe` code.
//!
//! It wraps kvm-ioctls with the few things a capability harness needs and kvm-ioctls leaves to
//! the caller: clear errors when `/dev/kvm` cannot be used, raw capability checks and enables
//! in the style of KVM selftests (`enable_cap_raw` returns the errno; the negotiation layer
//! decides whether that is fatal), guest memory registration, and kicking a vCPU out of
//! `KVM_RUN` (a signal plus `immediate_exit`).
//!
//! The VM is a typestate: capabilities can be enabled only on a [`VmSetup`], which has no
//! vCPUs; [`VmSetup::create_vcpus`] consumes it, so "enable after the first vCPU" does not
//! compile.

pub mod cap_names;
pub mod kick;
pub mod ppin_uapi;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// The project's own capability numbers, next to upstream's (see kernel-patches/README.md).
pub const KVMCAP_OWN_CAPS: &[(u32, &str)] = &[(KVM_CAP_PPIN, "KVM_CAP_PPIN")];

/// `KVM_CAP_PPIN`, from the kernel-patches series (generated from its headers).
pub const KVM_CAP_PPIN: u32 = ppin_uapi::KVM_CAP_PPIN;

/// The only KVM API version there has ever been.
pub const KVM_API_VERSION: i32 = 12;

/// What went wrong talking to KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm does not exist
    #[error("{path} does not exist: this kernel has no KVM (load kvm_intel or kvm_amd, enable virtualization in the firmware, or run inside a VM with nested virtualization)")]
    Missing {
        /// The device path.
        path: PathBuf,
    },
    /// /dev/kvm exists but may not be opened
    #[error("{path}: permission denied: add your user to the group that owns it (usually `kvm`: sudo usermod -aG kvm $USER, then log in again) or run as root")]
    NotPermitted {
        /// The device path.
        path: PathBuf,
    },
    /// /dev/kvm cannot be opened for another reason
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The device path.
        path: PathBuf,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// KVM speaks another API version
    #[error("{path}: KVM API version {found}, expected {KVM_API_VERSION}")]
    ApiVersion {
        /// The device path.
        path: PathBuf,
        /// What KVM reported.
        found: i32,
    },
    /// an ioctl failed
    #[error("{ioctl}: {source}")]
    Ioctl {
        /// Which ioctl (and on what).
        ioctl: String,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// guest memory could not be set up
    #[error("guest memory: {0}")]
    Memory(String),
}

fn ioctl_err(ioctl: impl Into<String>) -> impl FnOnce(vmm_sys_util::errno::Error) -> KvmError {
    let ioctl = ioctl.into();
    move |source| KvmError::Ioctl { ioctl, source }
}

/// Names why `/dev/kvm` could not be opened, with what to do about it.
pub fn open_error(path: &Path, e: vmm_sys_util::errno::Error) -> KvmError {
    match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing {
            path: path.to_owned(),
        },
        libc::EACCES | libc::EPERM => KvmError::NotPermitted {
            path: path.to_owned(),
        },
        _ => KvmError::Open {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// An open `/dev/kvm`.
pub struct KvmSystem {
    kvm: Kvm,
    path: PathBuf,
}

impl KvmSystem {
    /// Opens the KVM device at `path` (normally `/dev/kvm`) and checks its API version.
    pub fn open(path: &Path) -> Result<Self, KvmError> {
        let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| KvmError::Missing {
            path: path.to_owned(),
        })?;
        let kvm = Kvm::new_with_path(cpath).map_err(|e| open_error(path, e))?;
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION {
            return Err(KvmError::ApiVersion {
                path: path.to_owned(),
                found,
            });
        }
        Ok(Self {
            kvm,
            path: path.to_owned(),
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `KVM_CHECK_EXTENSION` on the system fd with a raw capability number: the raw result
    /// (0 = absent, >0 = present, with a cap-specific meaning).
    pub fn check_extension_raw(&self, cap: u32) -> i32 {
        self.kvm.check_extension_raw(libc::c_ulong::from(cap))
    }

    /// `KVM_GET_SUPPORTED_CPUID`.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl_err("KVM_GET_SUPPORTED_CPUID"))
    }

    /// The largest number of vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// `KVM_CREATE_VM`: a VM without vCPUs, ready for capability negotiation.
    pub fn create_vm(&self) -> Result<VmSetup, KvmError> {
        let vm = self.kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        Ok(VmSetup { vm })
    }
}

/// A VM with no vCPUs yet: the only state in which capabilities can be enabled.
pub struct VmSetup {
    vm: VmFd,
}

impl VmSetup {
    /// `KVM_CHECK_EXTENSION` on the VM fd (`KVM_CAP_CHECK_EXTENSION_VM`).
    pub fn check_extension_raw(&self, cap: u32) -> i32 {
        self.vm.check_extension_raw(libc::c_ulong::from(cap))
    }

    /// `KVM_ENABLE_CAP` on the VM, returning the errno as is (like selftests'
    /// `__vm_enable_cap`); callers that require success use [`VmSetup::enable_cap`].
    ///
    /// ```no_run
    /// # use kvmcap::kvm::KvmSystem;
    /// let kvm = KvmSystem::open("/dev/kvm".as_ref()).unwrap();
    /// let vm = kvm.create_vm().unwrap();
    /// // KVM_CAP_X86_USER_SPACE_MSR (188): exit to userspace on unknown/invalid/filtered MSRs.
    /// vm.enable_cap_raw(188, [0b111, 0, 0, 0]).unwrap();
    /// ```
    pub fn enable_cap_raw(
        &self,
        cap: u32,
        args: [u64; 4],
    ) -> Result<(), vmm_sys_util::errno::Error> {
        let ec = kvm_enable_cap {
            cap,
            args,
            ..Default::default()
        };
        self.vm.enable_cap(&ec)
    }

    /// `KVM_ENABLE_CAP` that must succeed; the error names the capability.
    pub fn enable_cap(&self, cap: u32, args: [u64; 4]) -> Result<(), KvmError> {
        self.enable_cap_raw(cap, args)
            .map_err(ioctl_err(format!("KVM_ENABLE_CAP({})", cap_name(cap))))
    }

    /// The underlying fd, for kvm-ioctls calls that need no typestate (MSR filter, irqchip).
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }

    /// Registers every region of `mem` as a KVM memory slot.
    ///
    /// The regions must stay mapped for the VM's lifetime: callers keep `mem` alive in the
    /// same struct as the VM ([`VmReady`] does).
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), KvmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| KvmError::Memory(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: u32::try_from(slot)
                    .map_err(|_| KvmError::Memory("too many regions".into()))?,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` is the start of a live mmap of `region.len()` bytes owned by
            // `mem`; the caller keeps `mem` alive as long as the VM (see above), so KVM never
            // sees an unmapped userspace range, and the slot numbers are distinct.
            unsafe { self.vm.set_user_memory_region(r) }.map_err(ioctl_err(format!(
                "KVM_SET_USER_MEMORY_REGION(slot {slot})"
            )))?;
        }
        Ok(())
    }

    /// Creates vCPUs `0..count`, ending the setup phase: no capability can be enabled after.
    pub fn create_vcpus(self, count: u8) -> Result<(VmReady, Vec<VcpuFd>), KvmError> {
        let mut vcpus = Vec::with_capacity(usize::from(count));
        for id in 0..count {
            vcpus.push(
                self.vm
                    .create_vcpu(u64::from(id))
                    .map_err(ioctl_err(format!("KVM_CREATE_VCPU({id})")))?,
            );
        }
        Ok((VmReady { vm: self.vm }, vcpus))
    }
}

/// A VM whose vCPUs exist: capabilities are fixed now.
pub struct VmReady {
    vm: VmFd,
}

impl VmReady {
    /// The underlying fd (interrupt lines and the like).
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }
}

/// The name of a capability number: upstream's, the project's own, or `unknown(N)`.
pub fn cap_name(cap: u32) -> String {
    cap_names::UPSTREAM
        .iter()
        .chain(KVMCAP_OWN_CAPS)
        .find(|(n, _)| *n == cap)
        .map(|(_, name)| (*name).to_owned())
        .unwrap_or_else(|| format!("unknown({cap})"))
}

/// Looks a capability up by name (`KVM_CAP_PPIN` or just `PPIN`).
pub fn cap_by_name(name: &str) -> Option<u32> {
    let up = name.trim().to_ascii_uppercase();
    let full = if up.starts_with("KVM_CAP_") {
        up
    } else {
        format!("KVM_CAP_{up}")
    };
    cap_names::UPSTREAM
        .iter()
        .chain(KVMCAP_OWN_CAPS)
        .find(|(_, n)| *n == full)
        .map(|(c, _)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_names_resolve_both_ways() {
        assert_eq!(cap_name(188), "KVM_CAP_X86_USER_SPACE_MSR");
        assert_eq!(cap_name(159), "KVM_CAP_MSR_PLATFORM_INFO");
        assert_eq!(cap_name(KVM_CAP_PPIN), "KVM_CAP_PPIN");
        assert_eq!(cap_name(99_999), "unknown(99999)");
        assert_eq!(cap_by_name("x86_msr_filter"), Some(189));
        assert_eq!(cap_by_name("KVM_CAP_PPIN"), Some(KVM_CAP_PPIN));
        assert_eq!(cap_by_name("NOPE"), None);
        // The own number must not collide with upstream's.
        assert!(cap_names::UPSTREAM.iter().all(|(n, _)| *n != KVM_CAP_PPIN));
    }

    #[test]
    fn not_permitted_says_which_group() {
        let p = Path::new("/dev/kvm");
        let e = open_error(p, vmm_sys_util::errno::Error::new(libc::EACCES));
        assert!(matches!(e, KvmError::NotPermitted { .. }));
        assert!(e.to_string().contains("usermod -aG kvm"), "{e}");
        let e = open_error(p, vmm_sys_util::errno::Error::new(libc::EBUSY));
        assert!(matches!(e, KvmError::Open { .. }));
    }

    #[test]
    fn a_file_that_is_not_kvm_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = KvmSystem::open(f.path())
            .err()
            .expect("a plain file is no KVM");
        assert!(matches!(e, KvmError::ApiVersion { .. }), "{e}");
    }

    #[test]
    fn missing_device_says_how_to_get_kvm() {
        let e = KvmSystem::open(Path::new("/nonexistent/kvm"))
            .err()
            .expect("must fail");
        assert!(matches!(e, KvmError::Missing { .. }));
        assert!(e.to_string().contains("kvm_amd"));
    }
}
