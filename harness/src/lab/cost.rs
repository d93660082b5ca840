//! `cost` jobs: the bare probe reading one MSR many times with timed reads, and the result
//! that keeps the cycles per read.

use super::*;
use crate::commands::probe::{probe_bare, ProbeRequest};
use crate::features::FeatureSpec;
use crate::host::HostSources;
use crate::report::Report;
use crate::vmm::error::Limits;
use crate::x86::cpuid::CpuVendor;
use msr_probe::{Catalog, Fingerprint, MsrIndex, Reading};

/// The vendor a CPUID vendor string names.
pub fn vendor_named(s: &str) -> CpuVendor {
    match s {
        "GenuineIntel" => CpuVendor::Intel,
        "AuthenticAMD" | "HygonGenuine" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    }
}

/// The MSR a `cost` job reads: the feature's value MSR for `vendor` (model ppin), else its
/// first KVM-served MSR.
pub fn cost_msr(spec: &FeatureSpec, vendor: CpuVendor) -> Option<MsrIndex> {
    spec.pair_for(vendor)
        .map(|p| p.value)
        .or_else(|| spec.kvm_msrs.first().map(|k| k.msr))
}

/// A `cost` job: the bare probe reading one MSR [`COST_READS`] times per vCPU, timed in the
/// guest.
pub(super) fn cost(
    job: &Job,
    spec: &FeatureSpec,
    paths: &LabPaths,
    host: &HostSources,
    limits: Limits,
    catalog: &Catalog,
) -> Result<JobResult, String> {
    let vendor = vendor_named(&Fingerprint::of_running_system().cpu_vendor);
    let msr = cost_msr(spec, vendor).ok_or_else(|| {
        format!(
            "feature {} has no MSR for a {vendor} CPU to time",
            spec.name
        )
    })?;
    let r = probe_bare(
        &ProbeRequest {
            kvm_path: paths.kvm.clone(),
            feature: Some(spec),
            backend: job.backend,
            announce: job.pair,
            vcpus: job.vcpus,
            msrs: vec![msr; COST_READS],
            host,
            limits,
            irqchip: false,
            timed: true,
        },
        catalog,
    )
    .map_err(|e| e.to_string())?;
    Ok(cost_result(job, &r, msr, catalog))
}

/// A `cost` job's result from the probe's report: per vCPU the cycles of every read, the TSC
/// frequency, and what the reads returned (they must all pass their verdicts).
pub fn cost_result(job: &Job, r: &Report, msr: MsrIndex, catalog: &Catalog) -> JobResult {
    let vcpus = usize::from(job.vcpus);
    let mut cycles: Vec<Vec<u32>> = vec![Vec::new(); vcpus];
    let mut seen: Vec<String> = Vec::new();
    for row in &r.readings {
        if let (Some(c), Some(per)) = (row.cycles, cycles.get_mut(row.cpu as usize)) {
            per.push(c);
        }
        let what = match &row.guest {
            Reading::Value(v) => format!("{v:#x}"),
            Reading::Fault(_) => "#GP".to_owned(),
            Reading::Unavailable(u) => format!("unavailable: {u}"),
        };
        if !seen.contains(&what) {
            seen.push(what);
        }
    }
    let complete = cycles.iter().all(|c| c.len() == COST_READS);
    let pass = r.ok() && complete && r.tsc_khz.is_some();
    // Two cases, not one per read: a cost job reads thousands of times.
    let suites = vec![Suite {
        name: "cost".into(),
        time_ms: r.elapsed_ms,
        cases: vec![
            Case::new(
                "every read as expected",
                if r.ok() {
                    Status::Pass
                } else {
                    Status::Fail(format!("{} failed verdicts", r.failures()))
                },
            ),
            Case::new(
                "every read timed, TSC frequency known",
                if complete && r.tsc_khz.is_some() {
                    Status::Pass
                } else {
                    Status::Fail(format!(
                        "timed reads per vCPU {:?} of {COST_READS}, TSC kHz {:?}",
                        cycles.iter().map(Vec::len).collect::<Vec<_>>(),
                        r.tsc_khz
                    ))
                },
            ),
        ],
        error: None,
    }];
    let mut result = JobResult::new(
        job,
        pass,
        serde_json::json!({
            "msr": catalog.name_of(msr),
            "backend": job.backend.to_string(),
            "reads": COST_READS,
            "guest_saw": seen,
            "verdicts_ok": r.ok(),
            "timed": complete,
        }),
        serde_json::json!({
            "schema": crate::report::document::CostV1::ID,
            "pass": pass,
            "msr": catalog.name_of(msr),
            "index": crate::json::hex(u64::from(msr.raw())),
            "reads_per_vcpu": COST_READS,
            "guest_saw": seen,
            "failures": r.failures(),
            "tsc_khz": r.tsc_khz,
            "cycles": cycles,
            "negotiation": to_value(&r.negotiation),
            "vcpus": to_value(&r.vcpus),
            "stats": to_value(&r.stats),
            "elapsed_ms": r.elapsed_ms,
        }),
        suites,
    );
    result.stats = r.stats.clone();
    result
}
