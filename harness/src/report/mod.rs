//! Reports: every verdict plus a fingerprint of the run, as a table for people, JSON for
//! machines, and a machine-independent view for snapshots. Files are written atomically.

use serde::Serialize;

pub mod document;
pub mod output;
pub mod results;
pub mod style;
pub mod write;
pub use document::{json, junit_of, render, Document, Format};
pub use output::{emit, render_stdout, EmitError, OutputOptions};
pub use write::{write_report, WriteError, WriteMode};

use results::{Case, Status, Suite};

use crate::backend::Backend;
use crate::compare::Verdict;
use crate::features::FeatureSpec;
use crate::host::HostValue;
use crate::negotiate::NegotiationStep;
use crate::vmm::stats::ExitStats;
use crate::vmm::vcpu::VcpuEnd;
use crate::x86::cpuid::CpuVendor;
use msr_probe::{MsrIndex, Reading};

/// What the run was: enough to reproduce it and to know which host it describes.
#[derive(Clone, Debug, Serialize)]
pub struct RunFingerprint {
    /// The running kernel (`uname -r`).
    pub kernel: String,
    /// Host CPU vendor string.
    pub cpu_vendor: String,
    /// Host CPU model.
    pub cpu_model: String,
    /// The guest's CPUID vendor.
    pub guest_vendor: CpuVendor,
    /// `bare` or `linux`.
    pub guest: String,
    /// The feature, if any.
    pub feature: Option<String>,
    /// The backend.
    pub backend: Backend,
    /// vCPU count.
    pub vcpus: usize,
    /// The host sources consulted, in order.
    pub host_sources: Vec<String>,
    /// The vendors whose PPIN pair the guest's CPUID announced.
    pub announced: Vec<CpuVendor>,
}

impl RunFingerprint {
    /// A run on this host (its kernel and CPU read now) of `guest` (`bare`, `linux`) whose CPU
    /// is `guest_vendor`, with `feature` through `backend` on `vcpus` vCPUs, the guest's CPUID
    /// announcing the pairs of `announced`.
    pub fn of_this_host(
        guest: &str,
        guest_vendor: CpuVendor,
        feature: Option<&FeatureSpec>,
        backend: Backend,
        vcpus: usize,
        host: &crate::host::HostSources,
        announced: Vec<CpuVendor>,
    ) -> Self {
        let me = msr_probe::Fingerprint::of_running_system();
        Self {
            kernel: me.kernel,
            cpu_vendor: me.cpu_vendor,
            cpu_model: me.cpu_model,
            guest_vendor,
            guest: guest.into(),
            feature: feature.map(|f| f.name.clone()),
            backend,
            vcpus,
            host_sources: host.describe(),
            announced,
        }
    }
}

/// One (cpu, msr) of a report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The vCPU.
    pub cpu: u32,
    /// The MSR.
    #[serde(serialize_with = "crate::json::msr_index")]
    pub index: MsrIndex,
    /// Its catalog name.
    pub name: String,
    /// What the guest saw.
    #[serde(serialize_with = "crate::json::reading")]
    pub guest: Reading,
    /// The host's value and its source.
    pub host: Option<HostValue>,
    /// The feature model's prediction, for the feature's own MSRs (JSON `model`: the
    /// verdict's own `expected`, on a mismatch, is what the guest was judged against).
    #[serde(
        rename = "model",
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::json::opt_reading"
    )]
    pub expected: Option<Reading>,
    /// TSC ticks the guest's access took (bare guest; guest-measured, for benchmarks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u32>,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The guest kernel's view of PPIN on one CPU, against the model's prediction of what the
/// kernel's `ppin_init()` finds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelPpin {
    /// The CPU.
    pub cpu: u32,
    /// `cpuN/topology/ppin` (absent when the kernel found no PPIN).
    #[serde(serialize_with = "crate::json::opt_u64_hex")]
    pub seen: Option<u64>,
    /// What `ppin_init()` must have found.
    #[serde(serialize_with = "crate::json::opt_u64_hex")]
    pub expected: Option<u64>,
    /// Whether they agree.
    pub ok: bool,
}

/// A whole report (`kvmcap.report/1`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The schema name.
    pub schema: document::ReportV1,
    /// Whether every verdict is as expected and something was checked ([`Report::sealed`]).
    pub pass: bool,
    /// The run.
    pub fingerprint: RunFingerprint,
    /// Capability negotiation, step by step.
    pub negotiation: Vec<NegotiationStep>,
    /// How each vCPU ended.
    pub vcpus: Vec<VcpuEnd>,
    /// Per vCPU: exits by reason, time in `KVM_RUN` and in the VMM (empty when another VMM
    /// ran the guest: the lab's `qemu` jobs).
    pub stats: Vec<ExitStats>,
    /// Every reading with its verdict.
    pub readings: Vec<Row>,
    /// The guest kernel's own PPIN (`cpuN/topology/ppin`) per CPU, Linux guests only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_ppin: Vec<KernelPpin>,
    /// Extra facts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Milliseconds from VM creation to the last vCPU's end.
    pub elapsed_ms: f64,
    /// The guest TSC frequency, to read `cycles` as time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsc_khz: Option<u32>,
}

impl Report {
    /// Whether every verdict is as expected and at least one reading was checked.
    pub fn ok(&self) -> bool {
        self.failures() == 0 && !(self.readings.is_empty() && self.kernel_ppin.is_empty())
    }

    /// The report with `pass` set from its verdicts (call once it is complete).
    pub fn sealed(mut self) -> Self {
        self.pass = self.ok();
        self
    }

    /// The number of failed verdicts.
    pub fn failures(&self) -> usize {
        self.readings.iter().filter(|r| !r.verdict.ok()).count()
            + self.kernel_ppin.iter().filter(|k| !k.ok).count()
    }

    /// The table people read.
    pub fn table(&self) -> String {
        let f = &self.fingerprint;
        let mut out = format!(
            "kvmcap: guest {} on {} vCPU(s), feature {}, backend {}, guest CPU {}; host {} ({}), kernel {}\n",
            f.guest,
            f.vcpus,
            f.feature.as_deref().unwrap_or("none"),
            f.backend,
            f.guest_vendor,
            f.cpu_model,
            f.cpu_vendor,
            f.kernel
        );
        for s in &self.negotiation {
            out.push_str(&format!(
                "  {} ({}): checked system={} vm={}{}\n",
                s.cap,
                s.number,
                s.system,
                s.vm,
                match (&s.args, &s.enabled) {
                    (Some(a), Some(e)) => format!(", enabled with {a:?}: {e}"),
                    _ => String::new(),
                }
            ));
        }
        out.push_str(&format!(
            "{:<4} {:<12} {:<24} {:<20} {:<30} VERDICT\n",
            "CPU", "MSR", "NAME", "GUEST", "HOST (SOURCE)"
        ));
        let style = style::get();
        let mut hidden = 0;
        for r in &self.readings {
            // Without -v, readings nothing could be compared with are counted, not listed.
            if !style.verbose && matches!(r.verdict, Verdict::Unchecked { .. }) {
                hidden += 1;
                continue;
            }
            let tone = match &r.verdict {
                v if !v.ok() => style::Tone::Bad,
                Verdict::Unchecked { .. } => style::Tone::Neutral,
                _ => style::Tone::Good,
            };
            let host = match &r.host {
                Some(h) => format!("{} ({})", short(&h.reading), h.source),
                None => "-".to_owned(),
            };
            out.push_str(&format!(
                "{:<4} {:<12} {:<24} {:<20} {:<30} {}\n",
                r.cpu,
                r.index.to_string(),
                r.name,
                short(&r.guest),
                host,
                style::paint(&r.verdict.word(), tone)
            ));
        }
        if hidden > 0 {
            out.push_str(&format!(
                "({hidden} unchecked readings not shown: nothing to compare them with; -v shows every row)\n"
            ));
        }
        let hex = |v: Option<u64>| v.map_or("none".to_owned(), |v| format!("{v:#x}"));
        for k in &self.kernel_ppin {
            out.push_str(&format!(
                "cpu{} kernel topology/ppin: {} (expected {}) {}\n",
                k.cpu,
                hex(k.seen),
                hex(k.expected),
                if k.ok {
                    style::paint("match", style::Tone::Good)
                } else {
                    style::paint("MISMATCH", style::Tone::Bad)
                }
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        for (cpu, e) in self.vcpus.iter().enumerate() {
            if !matches!(e, VcpuEnd::Done { .. }) {
                out.push_str(&format!("vCPU {cpu} ended: {e}\n"));
            }
        }
        // The counts KTAP and JUnit give (a reading nothing could be compared with is skipped).
        let c = self
            .suites()
            .iter()
            .fold(results::Counts::default(), |mut all, s| {
                let c = s.counts();
                all.pass += c.pass;
                all.fail += c.fail;
                all.skip += c.skip;
                all
            });
        out.push_str(&format!(
            "{}: {} readings, {} passed, {} failed, {} skipped, {:.1} ms\n",
            style::pass_fail(self.ok()),
            self.readings.len(),
            c.pass,
            c.fail,
            c.skip,
            self.elapsed_ms
        ));
        out
    }

    /// The machine-independent view for snapshots: host-specific values become relations,
    /// the feature's MSRs are named by role (the pair the guest's CPUID announces, or the
    /// other), values the VMM supplies stay literal.
    pub fn snapshot_view(&self, feature: Option<&FeatureSpec>) -> SnapshotView {
        let role = |index: MsrIndex| -> Option<String> {
            let f = feature?;
            f.pairs.iter().find_map(|p| {
                let side = if self.fingerprint.announced.contains(&p.vendor) {
                    "announced"
                } else {
                    "other"
                };
                if p.ctl == index {
                    Some(format!("{side}.ctl"))
                } else if p.value == index {
                    Some(format!("{side}.value"))
                } else {
                    None
                }
            })
        };
        let readings = self
            .readings
            .iter()
            .map(|r| {
                let (name, guest) = match role(r.index) {
                    Some(role) => (role, short(&r.guest)),
                    None => {
                        let rel = match (&r.guest, &r.verdict) {
                            (Reading::Fault(_), _) => "#GP".to_owned(),
                            (_, Verdict::Match) => "== host".to_owned(),
                            (_, Verdict::WithinRule { rule }) => format!("~ host ({rule})"),
                            (Reading::Value(_), _)
                                if feature.is_some_and(|f| f.msrs().contains(&r.index)) =>
                            {
                                short(&r.guest)
                            }
                            (Reading::Value(_), _) => "value".to_owned(),
                            (Reading::Unavailable(u), _) => format!("unavailable: {u}"),
                        };
                        (r.name.clone(), rel)
                    }
                };
                SnapshotRow {
                    cpu: r.cpu,
                    msr: name,
                    guest,
                    verdict: r.verdict.word(),
                }
            })
            .collect();
        SnapshotView {
            guest: self.fingerprint.guest.clone(),
            feature: self.fingerprint.feature.clone(),
            backend: self.fingerprint.backend,
            vcpus: {
                let mut v: Vec<String> = self
                    .vcpus
                    .iter()
                    .map(|e| match e {
                        VcpuEnd::Done { .. } => "done".to_owned(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                // A Linux guest picks the CPU its /init runs on (that vCPU ends "done"):
                // not part of what the snapshot pins.
                if self.fingerprint.guest == "linux" {
                    v.sort();
                }
                v
            },
            negotiation: self
                .negotiation
                .iter()
                .map(|s| format!("{}: {}", s.cap, s.enabled.as_deref().unwrap_or("checked")))
                .collect(),
            readings,
            kernel_ppin: self
                .kernel_ppin
                .iter()
                .map(|k| {
                    format!(
                        "cpu{}: {}",
                        k.cpu,
                        if k.seen.is_some() {
                            "ppin shown"
                        } else {
                            "no ppin"
                        }
                    ) + if k.ok { "" } else { " (MISMATCH)" }
                })
                .collect(),
            pass: self.ok(),
        }
    }
}

impl Document for Report {
    fn pass(&self) -> bool {
        self.ok()
    }

    fn exit_stats(&self) -> Vec<ExitStats> {
        self.stats.clone()
    }

    fn suites(&self) -> Vec<Suite> {
        let f = &self.fingerprint;
        let mut names = std::collections::HashMap::new();
        let mut cases = Vec::new();
        for r in &self.readings {
            let base = format!("cpu{} {} ({})", r.cpu, r.name, r.index);
            let n = names.entry(base.clone()).or_insert(0usize);
            *n += 1;
            let name = if *n == 1 {
                base
            } else {
                format!("{base} read {n}")
            };
            let status = match &r.verdict {
                Verdict::Unchecked { reason } => Status::Skip(reason.clone()),
                v if v.ok() => Status::Pass,
                v => Status::Fail(format!(
                    "{}: guest {}{}",
                    v.word(),
                    short(&r.guest),
                    r.expected
                        .as_ref()
                        .map(|e| format!(", model {}", short(e)))
                        .unwrap_or_default()
                )),
            };
            cases.push(Case::new(name, status));
        }
        let hex = |v: Option<u64>| v.map_or("none".to_owned(), |v| format!("{v:#x}"));
        for k in &self.kernel_ppin {
            cases.push(Case::new(
                format!("cpu{} kernel topology/ppin", k.cpu),
                if k.ok {
                    Status::Pass
                } else {
                    Status::Fail(format!(
                        "seen {}, expected {}",
                        hex(k.seen),
                        hex(k.expected)
                    ))
                },
            ));
        }
        vec![Suite {
            name: format!(
                "{} {} {} {}vcpu",
                if f.guest == "bare" { "probe" } else { "verify" },
                f.feature.as_deref().unwrap_or("none"),
                f.backend,
                f.vcpus
            ),
            time_ms: self.elapsed_ms,
            cases,
            error: None,
        }]
    }
}

fn short(r: &Reading) -> String {
    match r {
        Reading::Value(v) => format!("{v:#x}"),
        Reading::Fault(_) => "#GP".to_owned(),
        Reading::Unavailable(u) => format!("unavailable: {u}"),
    }
}

/// A report as snapshots store it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotView {
    /// Guest kind.
    pub guest: String,
    /// Feature.
    pub feature: Option<String>,
    /// Backend.
    pub backend: Backend,
    /// How each vCPU ended.
    pub vcpus: Vec<String>,
    /// Negotiation outcomes.
    pub negotiation: Vec<String>,
    /// Rows.
    pub readings: Vec<SnapshotRow>,
    /// The guest kernel's PPIN per CPU.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_ppin: Vec<String>,
    /// Overall.
    pub pass: bool,
}

/// One row of a snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotRow {
    /// vCPU.
    pub cpu: u32,
    /// The MSR's name or role.
    pub msr: String,
    /// The guest's reading or its relation to the host.
    pub guest: String,
    /// The verdict.
    pub verdict: String,
}
