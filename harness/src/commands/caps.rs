//! `kvmcap caps`: every capability number KVM reports as present, on /dev/kvm and on a VM.

use std::path::Path;

use serde::Serialize;

use crate::kvm::{cap_name, KvmError, KvmSystem};
use crate::report::document::{CapsV1, Document};
use crate::report::results::{Case, Status, Suite};

/// Capability numbers scanned: every upstream one and beyond, so a patched kernel's new
/// number shows up even when nobody names it.
pub const CAP_SCAN_LIMIT: u32 = 4096;

/// One capability KVM reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CapRow {
    /// Its number.
    pub number: u32,
    /// Its name (`KVM_CAP_…`, or the number for an unnamed one).
    pub name: String,
    /// `KVM_CHECK_EXTENSION` on /dev/kvm.
    pub system: i32,
    /// `KVM_CHECK_EXTENSION` on a VM.
    pub vm: i32,
}

/// What `caps` found (`kvmcap.caps/1`). It passes when KVM reported at least one capability.
#[derive(Clone, Debug, Serialize)]
pub struct CapsReport {
    /// The schema name.
    pub schema: CapsV1,
    /// Whether any capability was found.
    pub pass: bool,
    /// The KVM device.
    pub kvm: String,
    /// The host CPU model.
    pub cpu_model: String,
    /// The running kernel.
    pub kernel: String,
    /// Every capability present on the system or the VM, by number.
    pub caps: Vec<CapRow>,
    /// Wall time of the scan, milliseconds.
    pub elapsed_ms: f64,
}

/// Scans capability numbers `0..CAP_SCAN_LIMIT` on `kvm` and on a new VM.
pub fn scan_caps(kvm: &Path) -> Result<CapsReport, KvmError> {
    let start = std::time::Instant::now();
    let sys = KvmSystem::open(kvm)?;
    let vm = sys.create_vm()?;
    let caps: Vec<CapRow> = (0..CAP_SCAN_LIMIT)
        .filter_map(|n| {
            let (system, at_vm) = (sys.check_extension_raw(n), vm.check_extension_raw(n));
            (system != 0 || at_vm != 0).then(|| CapRow {
                number: n,
                name: cap_name(n),
                system,
                vm: at_vm,
            })
        })
        .collect();
    Ok(CapsReport {
        schema: CapsV1,
        pass: !caps.is_empty(),
        kvm: sys.path().display().to_string(),
        cpu_model: msr_probe::Fingerprint::of_running_system().cpu_model,
        kernel: crate::negotiate::running_kernel(),
        caps,
        elapsed_ms: start.elapsed().as_secs_f64() * 1000.0,
    })
}

impl CapsReport {
    /// The table people read.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} on {} (kernel {}): {} capabilities present\n{:<6} {:<40} {:>10} {:>10}\n",
            self.kvm,
            self.cpu_model,
            self.kernel,
            self.caps.len(),
            "NUMBER",
            "NAME",
            "SYSTEM",
            "VM"
        );
        for r in &self.caps {
            out.push_str(&format!(
                "{:<6} {:<40} {:>10} {:>10}\n",
                r.number, r.name, r.system, r.vm
            ));
        }
        out
    }
}

impl Document for CapsReport {
    fn pass(&self) -> bool {
        self.pass
    }

    fn suites(&self) -> Vec<Suite> {
        vec![Suite {
            name: format!("caps {}", self.kvm),
            time_ms: self.elapsed_ms,
            cases: self
                .caps
                .iter()
                .map(|c| Case::new(format!("{} ({})", c.name, c.number), Status::Pass))
                .collect(),
            error: None,
        }]
    }
}
