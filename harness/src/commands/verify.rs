//! `kvmcap verify --guest linux`: boot a Linux guest whose `/init` is msr-probe, take its
//! framed report off the console, and judge every reading and the guest kernel's own PPIN.

use std::path::PathBuf;

use crate::backend::Backend;
use crate::commands::probe::judge;
use crate::features::model::{simulate_ppin_init, ModelInputs, Oracle};
use crate::features::{FeatureSpec, ModelKind};
use crate::guests::linux::{run_linux, LinuxOutcome, LinuxRequest};
use crate::host::HostSources;
use crate::report::{KernelPpin, Report, Row, RunFingerprint};
use crate::vmm::error::{Limits, VmmError};
use crate::vmm::machine::FeatureRun;
use crate::vmm::vcpu::VcpuEnd;
use crate::x86::cpuid::CpuVendor;
use msr_probe::{Catalog, MsrIndex, ProbeReport};

/// What to verify.
pub struct VerifyRequest<'a> {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs (msr-probe as /init).
    pub initramfs: PathBuf,
    /// The feature.
    pub feature: Option<&'a FeatureSpec>,
    /// The backend.
    pub backend: Backend,
    /// Which of the feature's pairs the guest's CPUID announces.
    pub announce: crate::features::Announce,
    /// vCPUs.
    pub vcpus: u8,
    /// MSRs to read; `None` = the whole catalog.
    pub msrs: Option<Vec<MsrIndex>>,
    /// Host sources.
    pub host: &'a HostSources,
    /// Limits.
    pub limits: Limits,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Console bytes kept.
    pub console_limit: u64,
    /// Copy the guest console to stderr.
    pub echo_console: bool,
    /// Extra guest kernel command-line words.
    pub cmdline: String,
}

/// Why verification produced no report.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// the VMM failed
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// the guest gave no usable report
    #[error("the guest gave no report: {reason} (vCPU ends: {ends}); last console lines:\n{tail}")]
    NoReport {
        /// Why.
        reason: String,
        /// How the vCPUs ended.
        ends: String,
        /// The console's end.
        tail: String,
    },
}

fn no_report(o: &LinuxOutcome, reason: String) -> VerifyError {
    VerifyError::NoReport {
        reason,
        ends: o
            .ends
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        tail: o.console_tail.clone(),
    }
}

/// Checks a guest report against what was asked: one entry per vCPU, each with exactly the
/// requested MSRs in order. Anything else is a forged or broken report.
pub fn validate(report: &ProbeReport, vcpus: u8, msrs: &[MsrIndex]) -> Result<(), String> {
    if report.cpus.len() != usize::from(vcpus) {
        return Err(format!(
            "report covers {} CPUs, the VM has {vcpus}",
            report.cpus.len()
        ));
    }
    for (i, c) in report.cpus.iter().enumerate() {
        if c.cpu as usize != i {
            return Err(format!("report entry {i} is for CPU {}", c.cpu));
        }
        let got: Vec<MsrIndex> = c.readings.iter().map(|r| r.index).collect();
        if got != msrs {
            return Err(format!(
                "CPU {}: report lists {} MSRs, not the {} requested in order",
                c.cpu,
                got.len(),
                msrs.len()
            ));
        }
    }
    Ok(())
}

/// Checks that `bytes` can be an initramfs: a newc cpio archive that reads to its trailer and
/// has an `/init`, or a compressed one (gzip, xz, zstd: left to the kernel).
pub fn check_initramfs(bytes: &[u8]) -> Result<(), String> {
    const COMPRESSED: &[&[u8]] = &[b"\x1f\x8b", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"];
    if COMPRESSED.iter().any(|m| bytes.starts_with(m)) {
        return Ok(());
    }
    let entries = guest_tools::cpio::read(bytes).map_err(|e| format!("not an initramfs: {e}"))?;
    if !entries.iter().any(|e| e.name == "init") {
        return Err("the initramfs has no /init".into());
    }
    Ok(())
}

/// The guest command-line words that tell msr-probe (the guest's `/init`) what to read: the
/// MSRs in order (`None` = the whole catalog) and the frame's stream name.
pub fn probe_words(msrs: Option<&[MsrIndex]>) -> String {
    let list = match msrs {
        Some(m) => m
            .iter()
            .map(|m| format!("{:#x}", m.raw()))
            .collect::<Vec<_>>()
            .join(","),
        None => "catalog".to_owned(),
    };
    format!("KVMCAP_MSRS={list} KVMCAP_STREAM=verify")
}

/// Judges a guest's msr-probe report: every reading (the feature's MSRs against the model
/// built from `inputs`, every other MSR against the host) and, for PPIN, the guest kernel's
/// own `cpuN/topology/ppin` against what its `ppin_init()` must have found.
pub fn judge_guest(
    guest: &ProbeReport,
    feature: Option<&FeatureSpec>,
    backend: Backend,
    inputs: Option<&ModelInputs>,
    oracle: Option<&Oracle>,
    host: &HostSources,
    catalog: &Catalog,
) -> (Vec<Row>, Vec<KernelPpin>) {
    // The oracle: the model as the VMM set it up, then as the guest kernel's ppin_init() left it.
    let mut oracle = oracle.map(Oracle::fresh);
    let mut expected_kernel_ppin = None;
    if let (Some(f), Some(m)) = (feature, oracle.as_mut()) {
        if f.model == ModelKind::Ppin && backend != Backend::None {
            // ppin_init() (6.12, arch/x86/kernel/cpu/common.c) takes the first entry of
            // ppin_cpuids[] whose CPUID bit is set: AMD's pair, then Intel's, whatever the
            // CPU vendor, so a guest of one vendor given the other's bit reads that pair.
            let announced = inputs.map_or(&[][..], |i| &i.announced[..]);
            let pair = [CpuVendor::Amd, CpuVendor::Intel]
                .into_iter()
                .find(|v| announced.contains(v))
                .and_then(|v| f.pair_for(v));
            if let Some(pair) = pair {
                expected_kernel_ppin = simulate_ppin_init(m.as_mut(), pair);
            }
        }
    }
    let mut readings = Vec::new();
    let mut kernel_ppin = Vec::new();
    for c in &guest.cpus {
        for r in &c.readings {
            let g = r.reading.clone();
            readings.push(judge(
                c.cpu,
                r.index,
                g,
                feature,
                &mut oracle,
                host,
                catalog,
            ));
        }
        if feature.is_some_and(|f| f.model == ModelKind::Ppin) {
            kernel_ppin.push(KernelPpin {
                cpu: c.cpu,
                seen: c.sysfs_ppin,
                expected: expected_kernel_ppin,
                ok: c.sysfs_ppin == expected_kernel_ppin,
            });
        }
    }
    (readings, kernel_ppin)
}

/// Boots, reads, judges.
pub fn verify_linux(req: &VerifyRequest<'_>, catalog: &Catalog) -> Result<Report, VerifyError> {
    let image = std::fs::read(&req.initramfs).map_err(|e| VmmError::Image {
        path: req.initramfs.clone(),
        problem: e.to_string(),
    })?;
    check_initramfs(&image).map_err(|problem| VmmError::Image {
        path: req.initramfs.clone(),
        problem,
    })?;
    let msrs = req.msrs.clone().unwrap_or_else(|| catalog.indices());
    let cmdline = format!("{} {}", probe_words(req.msrs.as_deref()), req.cmdline);
    let outcome = run_linux(&LinuxRequest {
        kvm_path: req.kvm_path.clone(),
        kernel: req.kernel.clone(),
        initramfs: req.initramfs.clone(),
        cmdline,
        vcpus: req.vcpus,
        mem_mib: req.mem_mib,
        run: FeatureRun {
            feature: req.feature,
            backend: req.backend,
            host: req.host,
            cap_args: None,
            initial: &[],
            announce: req.announce,
        },
        limits: req.limits,
        console_limit: req.console_limit,
        echo_console: req.echo_console,
    })?;
    if outcome.flooded {
        return Err(no_report(
            &outcome,
            format!(
                "the guest flooded the console ({} bytes)",
                outcome.console_bytes
            ),
        ));
    }
    let frame = outcome
        .frame
        .clone()
        .map_err(|e| no_report(&outcome, e.to_string()))?;
    let guest: ProbeReport = serde_json::from_str(&frame.document())
        .map_err(|e| no_report(&outcome, format!("report is not a msr-probe report: {e}")))?;
    validate(&guest, req.vcpus, &msrs).map_err(|e| no_report(&outcome, e))?;

    let (readings, kernel_ppin) = judge_guest(
        &guest,
        req.feature,
        req.backend,
        outcome.model_inputs.as_ref(),
        outcome.oracle.as_ref(),
        req.host,
        catalog,
    );
    let notes = if guest.fingerprint.kernel.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "guest kernel {}, guest CPU {}, report via the {}",
            guest.fingerprint.kernel, guest.fingerprint.cpu_model, outcome.report_channel
        )]
    };
    Ok(Report {
        schema: crate::report::document::ReportV1,
        pass: false,
        fingerprint: RunFingerprint::of_this_host(
            "linux",
            outcome.vendor,
            req.feature,
            req.backend,
            outcome.ends.len(),
            req.host,
            outcome
                .model_inputs
                .as_ref()
                .map(|i| i.announced.clone())
                .unwrap_or_default(),
        ),
        negotiation: outcome.negotiation.clone(),
        vcpus: outcome
            .ends
            .iter()
            .map(|e| match e {
                VcpuEnd::Reported => VcpuEnd::Done {
                    ops: msrs.len() as u32,
                },
                other => other.clone(),
            })
            .collect(),
        stats: outcome.stats.clone(),
        readings,
        kernel_ppin,
        notes,
        elapsed_ms: outcome.elapsed.as_secs_f64() * 1000.0,
        tsc_khz: None,
    }
    .sealed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::report::CpuReadings;
    use msr_probe::Reading;

    #[test]
    fn initramfs_checks() {
        let mut b = guest_tools::cpio::Builder::new();
        b.file("init", 0o755, vec![1, 2, 3]);
        assert!(check_initramfs(&b.finish().unwrap()).is_ok());
        let mut b = guest_tools::cpio::Builder::new();
        b.file("bin/sh", 0o755, vec![1]);
        assert!(check_initramfs(&b.finish().unwrap())
            .unwrap_err()
            .contains("no /init"));
        assert!(check_initramfs(b"garbage")
            .unwrap_err()
            .contains("not an initramfs"));
        assert!(check_initramfs(b"\x1f\x8b...").is_ok());
    }

    #[test]
    fn forged_reports_are_refused() {
        let msrs = [MsrIndex::new(0x4f), MsrIndex::new(0x10)];
        let cpu = |n: u32, m: &[MsrIndex]| CpuReadings {
            cpu: n,
            readings: m
                .iter()
                .map(|&index| msr_probe::report::MsrReading {
                    index,
                    name: "?".into(),
                    reading: Reading::Value(1),
                })
                .collect(),
            sysfs_ppin: None,
        };
        let report = |cpus: Vec<CpuReadings>| ProbeReport {
            tool: "t".into(),
            source: "devmsr".into(),
            fingerprint: msr_probe::Fingerprint::default(),
            cpus,
        };
        assert!(validate(&report(vec![cpu(0, &msrs), cpu(1, &msrs)]), 2, &msrs).is_ok());
        assert!(validate(&report(vec![cpu(0, &msrs)]), 2, &msrs).is_err());
        assert!(validate(&report(vec![cpu(0, &msrs), cpu(0, &msrs)]), 2, &msrs).is_err());
        assert!(validate(&report(vec![cpu(0, &msrs), cpu(1, &msrs[..1])]), 2, &msrs).is_err());
        let swapped = [msrs[1], msrs[0]];
        assert!(validate(&report(vec![cpu(0, &swapped), cpu(1, &msrs)]), 2, &msrs).is_err());
    }
}
