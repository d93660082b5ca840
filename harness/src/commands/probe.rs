//! `kvmcap probe --guest bare`: read MSRs in the bare guest on every vCPU and judge each
//! reading against the feature model (the feature's MSRs) or the host (everything else).

use std::path::PathBuf;

use crate::backend::Backend;
use crate::compare::{against_host, against_model, Verdict};
use crate::features::model::Oracle;
use crate::features::FeatureSpec;
use crate::guests::bare::run::{run_bare_on, BareOutcome, BareRequest};
use crate::guests::bare::{MsrOp, OpResult};
use crate::host::HostSources;
use crate::report::{Report, Row, RunFingerprint};
use crate::vmm::error::{Limits, VmmError};
use crate::vmm::machine::OpenVm;
use crate::vmm::vcpu::VcpuEnd;
use msr_probe::{Catalog, MsrIndex, Reading, Rule, Unavailable};

/// What to probe.
pub struct ProbeRequest<'a> {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// The feature.
    pub feature: Option<&'a FeatureSpec>,
    /// The backend.
    pub backend: Backend,
    /// Which of the feature's pairs the guest's CPUID announces.
    pub announce: crate::features::Announce,
    /// vCPU count.
    pub vcpus: u8,
    /// The MSRs to read, in order.
    pub msrs: Vec<MsrIndex>,
    /// Host sources.
    pub host: &'a HostSources,
    /// Limits.
    pub limits: Limits,
    /// Give the VM an in-kernel irqchip (see [`BareRequest::irqchip`]).
    pub irqchip: bool,
    /// Time every access in the guest (see [`BareRequest::timed`]).
    pub timed: bool,
}

/// The guest's reading of op `i` on a vCPU, or why there is none.
pub fn guest_reading(outcome: &BareOutcome, cpu: usize, i: usize, op: &MsrOp) -> Reading {
    match outcome.results.get(cpu) {
        Some(Ok(results)) => match results.get(i) {
            Some(r) => OpResult::reading(*r, op),
            None => Reading::Unavailable(Unavailable::Io(format!(
                "guest stopped before this operation ({})",
                end_word(outcome.ends.get(cpu))
            ))),
        },
        Some(Err(e)) => Reading::Unavailable(Unavailable::Io(e.to_string())),
        None => Reading::Unavailable(Unavailable::NoSuchCpu),
    }
}

fn end_word(e: Option<&VcpuEnd>) -> String {
    e.map_or("no end".into(), |e| e.to_string())
}

/// The fingerprint of a run on this host.
pub fn fingerprint(
    outcome: &BareOutcome,
    feature: Option<&FeatureSpec>,
    backend: Backend,
    guest: &str,
    host: &HostSources,
) -> RunFingerprint {
    RunFingerprint::of_this_host(
        guest,
        outcome.vendor,
        feature,
        backend,
        outcome.ends.len(),
        host,
        outcome
            .model_inputs
            .as_ref()
            .map(|i| i.announced.clone())
            .unwrap_or_default(),
    )
}

/// The host's value of `index`; for a PPIN value MSR the host's PPIN under either vendor's
/// index (it is one number, read through whichever pair the CPU has).
pub fn host_value(
    host: &HostSources,
    feature: Option<&FeatureSpec>,
    cpu: u32,
    index: MsrIndex,
    catalog: &Catalog,
) -> Option<crate::host::HostValue> {
    if let Some(v) = host.get(cpu, index) {
        return Some(v);
    }
    let f = feature?;
    if !f.pairs.iter().any(|p| p.value == index) {
        return None;
    }
    let others: Vec<MsrIndex> = f.pairs.iter().map(|p| p.value).collect();
    host.first_value(&others)
        .map(|(i, v, source)| crate::host::HostValue {
            reading: Reading::Value(v),
            source: format!("{source}, as {}", catalog.name_of(i)),
        })
}

/// Judges one guest reading: the feature's MSRs against the model's prediction (`oracle`, in
/// the state the guest left it), every other MSR against the host under the catalog's rule.
pub fn judge(
    cpu: u32,
    index: MsrIndex,
    guest: Reading,
    feature: Option<&FeatureSpec>,
    oracle: &mut Option<Box<dyn crate::features::model::MsrModel>>,
    host: &HostSources,
    catalog: &Catalog,
) -> Row {
    let host_v = host_value(host, feature, cpu, index, catalog);
    let is_feature = feature.is_some_and(|f| f.msrs().contains(&index));
    let (expected, verdict) = match oracle {
        Some(model) if is_feature => {
            let expected = match model.read(index) {
                Ok(v) => Reading::Value(v),
                Err(f) => Reading::Fault(f),
            };
            let v = match &guest {
                Reading::Unavailable(u) => Verdict::NotRun {
                    reason: u.to_string(),
                },
                g => against_model(g, &expected),
            };
            (Some(expected), v)
        }
        _ => {
            let rule = catalog.get(index).map_or(Rule::Equal, |e| e.rule.clone());
            let v = match &guest {
                Reading::Unavailable(u) => Verdict::NotRun {
                    reason: u.to_string(),
                },
                g => against_host(g, host_v.as_ref().map(|h| &h.reading), &rule),
            };
            (None, v)
        }
    };
    Row {
        cpu,
        index,
        name: catalog.name_of(index).to_owned(),
        guest,
        host: host_v,
        expected,
        cycles: None,
        verdict,
    }
}

/// Runs the probe and builds its report.
pub fn probe_bare(req: &ProbeRequest<'_>, catalog: &Catalog) -> Result<Report, VmmError> {
    probe_bare_on(OpenVm::open(&req.kvm_path)?, req, catalog)
}

/// [`probe_bare`] on a VM already opened (see [`OpenVm`]).
pub fn probe_bare_on(
    open: OpenVm,
    req: &ProbeRequest<'_>,
    catalog: &Catalog,
) -> Result<Report, VmmError> {
    let ops: Vec<MsrOp> = req
        .msrs
        .iter()
        .map(|&index| MsrOp::Read { index })
        .collect();
    let outcome = run_bare_on(
        open,
        &BareRequest {
            kvm_path: req.kvm_path.clone(),
            feature: req.feature,
            backend: req.backend,
            ops: vec![ops.clone(); usize::from(req.vcpus)],
            host: req.host,
            cap_args: None,
            initial: Vec::new(),
            announce: req.announce,
            limits: req.limits,
            irqchip: req.irqchip,
            timed: req.timed,
        },
    )?;
    let mut oracle = outcome.oracle.as_ref().map(Oracle::fresh);
    let mut readings = Vec::new();
    for cpu in 0..usize::from(req.vcpus) {
        for (i, op) in ops.iter().enumerate() {
            let guest = guest_reading(&outcome, cpu, i, op);
            let mut row = judge(
                cpu as u32,
                req.msrs[i],
                guest,
                req.feature,
                &mut oracle,
                req.host,
                catalog,
            );
            if req.timed {
                row.cycles = outcome.cycles.get(cpu).and_then(|c| c.get(i)).copied();
            }
            readings.push(row);
        }
    }

    Ok(Report {
        schema: crate::report::document::ReportV1,
        pass: false,
        fingerprint: fingerprint(&outcome, req.feature, req.backend, "bare", req.host),
        negotiation: outcome.negotiation.clone(),
        vcpus: outcome.ends.clone(),
        stats: outcome.stats.clone(),
        readings,
        kernel_ppin: Vec::new(),
        tsc_khz: outcome.tsc_khz,
        notes: outcome
            .stray_io
            .iter()
            .map(|s| format!("unexpected guest I/O: {s}"))
            .collect(),
        elapsed_ms: outcome.elapsed.as_secs_f64() * 1000.0,
    }
    .sealed())
}
