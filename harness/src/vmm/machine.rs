//! Building and running a VM for the bare probe guest: negotiate, set up memory and vCPUs,
//! run every vCPU to its end or the deadline, and read back what the guest recorded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_mp_state, kvm_msr_entry, Msrs, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd};
use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::backend::model::{
    build_shared, model_for_vcpu, with_model, InitialRefused, ModelInputs, SharedModel,
};
use crate::backend::Backend;
use crate::bare::{
    self, MsrOp, OpResult, ResultsError, DONE_PORT, FAULT_PORT, PASS_PORT, WAIT_PORT,
};
use crate::feature::{Announce, CapSpec, FeatureSpec, ModelKind, Scope};
use crate::host::HostSources;
use crate::kvm::{KvmError, KvmSystem, VmSetup};
use crate::negotiate::{
    enable_errno_meaning, negotiate, CapRequest, NegotiationError, NegotiationStep,
};
use crate::vmm::cpuid::{self, CpuVendor, CpuidBit};
use crate::vmm::vcpu::{run_vcpus, ExitHandler, Flow, VcpuEnd};
use msr_probe::{Fault, MsrIndex};

/// `KVM_CAP_X86_USER_SPACE_MSR`.
pub const CAP_USER_SPACE_MSR: u32 = kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR;
/// `KVM_CAP_X86_MSR_FILTER`.
pub const CAP_MSR_FILTER: u32 = kvm_bindings::KVM_CAP_X86_MSR_FILTER;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM itself failed
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// negotiation failed
    #[error("{error}")]
    Negotiation {
        /// The steps up to the failure.
        steps: Vec<NegotiationStep>,
        /// The failure.
        error: NegotiationError,
    },
    /// the request is impossible
    #[error("{0}")]
    Request(String),
    /// a host-initiated write of the initial MSR state was refused (the same for every
    /// backend: KVM refused it, or the `user` model did as KVM would)
    #[error(transparent)]
    Initial(#[from] InitialRefused),
    /// a kernel or initramfs image is unusable
    #[error("{path}: {problem}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// a vCPU could not be set up
    #[error("vCPU {cpu}: {what}: {error}")]
    Vcpu {
        /// The vCPU.
        cpu: u8,
        /// Which step.
        what: String,
        /// The error.
        error: String,
    },
}

/// Resource limits of a run (each has a default and a command-line flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// The most vCPUs.
    pub max_vcpus: u8,
    /// The deadline for the guest.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_vcpus: bare::MAX_VCPUS,
            deadline: Duration::from_secs(10),
        }
    }
}

/// What to run on the bare guest.
pub struct BareRequest<'a> {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// The feature (its capability, MSRs, CPUID bits and model).
    pub feature: Option<&'a FeatureSpec>,
    /// How the feature reaches the guest.
    pub backend: Backend,
    /// The operations of each vCPU (the length is the vCPU count).
    pub ops: Vec<Vec<MsrOp>>,
    /// Host values (the PPIN value, PLATFORM_INFO, ...).
    pub host: &'a HostSources,
    /// Enable arguments overriding the feature spec's.
    pub cap_args: Option<[u64; 4]>,
    /// MSR state the VMM establishes before the guest runs (host-initiated writes).
    pub initial: Vec<(MsrIndex, u64)>,
    /// Which of the feature's pairs the guest's CPUID announces.
    pub announce: Announce,
    /// Limits.
    pub limits: Limits,
    /// Give the VM an in-kernel irqchip (local APICs, I/O APIC, PIC). The bare guest needs
    /// none, and without it x2APIC MSRs #GP; measured here, an irqchip adds ~14 ms of
    /// wall time to every VM (kernel-side setup and teardown), 6x the rest of a bare run.
    pub irqchip: bool,
    /// Bracket every MSR access with `lfence; rdtsc` and record the ticks (for benchmarks:
    /// adds ten guest instructions per access).
    pub timed: bool,
}

/// What a bare run produced.
#[derive(Debug)]
pub struct BareOutcome {
    /// Negotiation steps.
    pub negotiation: Vec<NegotiationStep>,
    /// The guest's CPU vendor.
    pub vendor: CpuVendor,
    /// Each vCPU's end.
    pub ends: Vec<VcpuEnd>,
    /// Each vCPU's results, validated.
    pub results: Vec<Result<Vec<OpResult>, ResultsError>>,
    /// TSC ticks per operation as the guest measured them (untrusted; for benchmarks; all 0
    /// unless the request was timed).
    pub cycles: Vec<Vec<u32>>,
    /// The vCPUs' TSC frequency (`KVM_GET_TSC_KHZ`), to turn ticks into time (timed runs).
    pub tsc_khz: Option<u32>,
    /// Unexpected guest I/O seen, bounded.
    pub stray_io: Vec<String>,
    /// The model inputs in force (for the oracle).
    pub model_inputs: Option<ModelInputs>,
    /// VM creation to last vCPU end.
    pub elapsed: Duration,
}

const MAX_STRAY: usize = 32;

/// The VM's turn, for scenarios whose steps alternate between vCPUs: a vCPU that writes its
/// turn number to [`WAIT_PORT`] is held (in userspace, not in KVM_RUN) until another vCPU
/// hands that turn over on [`PASS_PORT`]. Guest input: a turn is only ever passed forward by
/// one, and a wait ends at the run's deadline.
#[derive(Default)]
pub struct Turns {
    state: std::sync::Mutex<TurnState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct TurnState {
    turn: u32,
    /// A vCPU ended abnormally: no turn it owes will come.
    abandoned: bool,
}

impl Turns {
    fn lock(&self) -> std::sync::MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the caller until `turn` comes (`true`), or the deadline passes or the turn is
    /// abandoned (`false`).
    pub fn wait(&self, turn: u32, deadline: Instant) -> bool {
        let mut st = self.lock();
        loop {
            if st.turn == turn {
                return true;
            }
            let now = Instant::now();
            if st.abandoned || now >= deadline {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Hands the VM's turn to `next` if it is the one after the current; `false` otherwise.
    pub fn pass(&self, next: u32) -> bool {
        let mut st = self.lock();
        if st.turn.checked_add(1) != Some(next) {
            return false;
        }
        st.turn = next;
        self.changed.notify_all();
        true
    }

    /// Wakes every waiter for good: a vCPU ended without passing its turns.
    pub fn abandon(&self) {
        self.lock().abandoned = true;
        self.changed.notify_all();
    }
}

struct BareHandler {
    model: Option<VcpuModel>,
    turns: std::sync::Arc<Turns>,
    deadline: Instant,
    stray: Vec<String>,
    /// Per-vCPU setup, done on the vCPU's thread ([`ExitHandler::before_run`]).
    setup: Option<BareSetup>,
    /// Why that setup failed (the run then fails with it).
    setup_error: Option<VmmError>,
}

/// What a bare vCPU needs before it runs.
struct BareSetup {
    cpu: u8,
    cpuid: kvm_bindings::CpuId,
    msrs: Vec<(MsrIndex, u64)>,
    irqchip: bool,
}

impl BareSetup {
    fn apply(&self, vcpu: &VcpuFd) -> Result<(), VmmError> {
        let cpu = self.cpu;
        vcpu.set_cpuid2(&self.cpuid)
            .map_err(vcpu_err(cpu, "KVM_SET_CPUID2"))?;
        set_msrs(vcpu, cpu, &self.msrs)?;
        let sregs = vcpu.get_sregs().map_err(vcpu_err(cpu, "KVM_GET_SREGS"))?;
        vcpu.set_sregs(&bare::sregs(sregs))
            .map_err(vcpu_err(cpu, "KVM_SET_SREGS"))?;
        vcpu.set_regs(&bare::regs(cpu))
            .map_err(vcpu_err(cpu, "KVM_SET_REGS"))?;
        if self.irqchip {
            // With an in-kernel local APIC, application processors wait for INIT/SIPI.
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(vcpu_err(cpu, "KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }
}

impl BareHandler {
    fn note(&mut self, what: String) {
        if self.stray.len() < MAX_STRAY {
            self.stray.push(what);
        }
    }
}

fn le_u32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl ExitHandler for BareHandler {
    fn io_out(&mut self, port: u16, data: &[u8]) -> Flow {
        match port {
            DONE_PORT => Flow::End(VcpuEnd::Done { ops: le_u32(data) }),
            FAULT_PORT => {
                self.turns.abandon();
                Flow::End(VcpuEnd::UnexpectedException {
                    vector: le_u32(data),
                })
            }
            WAIT_PORT => {
                if self.turns.wait(le_u32(data), self.deadline) {
                    Flow::Continue
                } else {
                    self.turns.abandon();
                    Flow::End(VcpuEnd::Timeout)
                }
            }
            PASS_PORT => {
                if !self.turns.pass(le_u32(data)) {
                    self.note(format!("turn {} passed out of order", le_u32(data)));
                }
                Flow::Continue
            }
            _ => {
                self.note(format!("out {port:#x} ({} bytes)", data.len()));
                Flow::Continue
            }
        }
    }
    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Flow {
        self.note(format!("in {port:#x} ({} bytes)", data.len()));
        data.fill(0xff);
        Flow::Continue
    }
    fn rdmsr(&mut self, index: MsrIndex) -> Result<u64, Fault> {
        model_rdmsr(&mut self.model, index)
    }
    fn wrmsr(&mut self, index: MsrIndex, value: u64) -> Result<(), Fault> {
        model_wrmsr(&mut self.model, index, value)
    }
    fn before_run(&mut self, vcpu: &VcpuFd) -> Result<(), String> {
        let Some(setup) = self.setup.take() else {
            return Ok(());
        };
        setup.apply(vcpu).map_err(|e| {
            let text = e.to_string();
            self.setup_error = Some(e);
            text
        })
    }
}

/// The fuzzing entry point for the bare guest's port I/O: feeds each `(port, write, data)` exit
/// to a fresh [`BareHandler`] (as [`run_bare`] builds it, without a model) through `io_out`
/// (`write`) or `io_in`, as a vCPU's run loop would, but on past the first end. Returns the
/// stray I/O notes kept (at most 32) and the first end the handler asked for. Must never
/// panic.
pub fn fuzz_bare_io(exits: &[(u16, bool, Vec<u8>)]) -> (usize, Option<VcpuEnd>) {
    let mut handler = BareHandler {
        model: None,
        turns: std::sync::Arc::default(),
        deadline: Instant::now(),
        stray: Vec::new(),
        setup: None,
        setup_error: None,
    };
    let mut first_end = None;
    for (port, write, data) in exits {
        let flow = if *write {
            handler.io_out(*port, data)
        } else {
            let mut buf = data.clone();
            handler.io_in(*port, &mut buf)
        };
        if let (None, Flow::End(e) | Flow::EndVm(e)) = (&first_end, flow) {
            first_end = Some(e);
        }
    }
    (handler.stray.len(), first_end)
}

/// The fuzzing entry point for the bare guest's results area: guest memory for two vCPUs as
/// [`run_bare`] lays it out, the probe image, `ops` for vCPU `cpu`, then `area` written over
/// that vCPU's results area as a hostile guest might leave it, read back with
/// [`bare::read_results`]. `Err` when the setup itself is refused (too many operations, a vCPU
/// beyond memory); otherwise whatever validation says. Must never panic.
pub fn fuzz_bare_results(
    cpu: u8,
    ops: &[MsrOp],
    area: &[u8],
) -> Result<Result<Vec<OpResult>, ResultsError>, String> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bare::memory_size(2))])
        .map_err(|e| e.to_string())?;
    bare::load_image(&mem)?;
    bare::load_ops(&mem, cpu, ops, false)?;
    bare::poke_results(&mem, cpu, 0, area)?;
    Ok(bare::read_results(&mem, cpu, ops))
}

/// The capabilities a backend negotiates for `feature`.
pub fn cap_requests(
    feature: Option<&FeatureSpec>,
    backend: Backend,
    args: Option<[u64; 4]>,
) -> Vec<CapRequest> {
    match (backend, feature) {
        (Backend::None, _) | (_, None) => Vec::new(),
        (Backend::User, Some(_)) => vec![
            CapRequest {
                cap: CAP_USER_SPACE_MSR,
                enable: Some([u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0]),
                required: true,
            },
            CapRequest {
                cap: CAP_MSR_FILTER,
                enable: None,
                required: true,
            },
        ],
        (Backend::Kernel, Some(f)) if f.capability.is_none() => Vec::new(),
        (Backend::Kernel, Some(f)) => vec![CapRequest {
            cap: f.capability.number,
            enable: Some(args.unwrap_or(f.capability.args)),
            required: f.capability.required,
        }],
    }
}

/// What the VMM establishes for `feature` before the guest runs, the same for every backend
/// (design.md: `user` and `kernel` agree by construction): whether the feature is on, which
/// pairs the guest's CPUID announces, and the host-initiated writes in order: the feature's
/// own (the supplied PPIN, then the firmware PPIN_CTL; or KVM-served MSR values), then the
/// case's `initial` entries. `kernel` and `none` make the writes with `KVM_SET_MSRS`, `user`
/// feeds the ones its model serves to the model.
pub fn model_inputs(
    feature: &FeatureSpec,
    backend: Backend,
    vendor: CpuVendor,
    announce: Announce,
    host: &HostSources,
    args: [u64; 4],
    initial: &[(MsrIndex, u64)],
) -> Result<ModelInputs, VmmError> {
    // A feature with no capability is stock KVM's: on for every backend.
    let enabled =
        (backend != Backend::None || feature.capability.is_none()) && CapSpec::enables(&args);
    let announced = if enabled {
        announce.vendors(vendor)
    } else {
        Vec::new()
    };
    let mut writes = Vec::new();
    if enabled {
        match feature.model {
            ModelKind::Ppin => {
                let pair = announced
                    .iter()
                    .find_map(|v| feature.pair_for(*v))
                    .ok_or_else(|| {
                        VmmError::Request(format!(
                            "feature {} has no MSR pair for a {vendor:?} guest: choose one with --pair intel|amd",
                            feature.name
                        ))
                    })?;
                // The value the VMM supplies: the user's, never this machine's MSRs unasked.
                let mut order = vec![pair.value];
                order.extend(feature.pairs.iter().map(|p| p.value));
                let case_sets_value = initial.iter().any(|(i, _)| order.contains(i));
                match host.supplied_value(&order) {
                    Some((_, v, _)) => writes.push((pair.value, v)),
                    None if case_sets_value => {}
                    None => {
                        return Err(VmmError::Request(format!(
                            "backend {backend} needs a PPIN value for the guest: give --host-value {}=0x..., --host-ppin (root: this host's own, from sysfs) or a host profile",
                            pair.value
                        )))
                    }
                }
                writes.push((pair.ctl, feature.initial_ctl));
            }
            ModelKind::Stock => {
                for r in &feature.registers {
                    if let (Some(msr), Some(v)) = (r.msr, r.initial) {
                        writes.push((msr, v));
                    }
                }
            }
            ModelKind::KvmMsr => {
                for k in &feature.kvm_msrs {
                    let v = host.first_value(&[k.msr]).map_or(k.default, |(_, v, _)| v);
                    writes.push((k.msr, v));
                }
            }
        }
    }
    writes.extend_from_slice(initial);
    Ok(ModelInputs {
        announced,
        enabled,
        writes,
    })
}

fn cpuid_bits(
    feature: Option<&FeatureSpec>,
    announced: &[CpuVendor],
) -> (Vec<CpuidBit>, Vec<CpuidBit>) {
    let Some(f) = feature else {
        return (Vec::new(), Vec::new());
    };
    let mut on = Vec::new();
    let mut off = Vec::new();
    for p in &f.pairs {
        if announced.contains(&p.vendor) {
            on.push(p.cpuid);
        } else {
            off.push(p.cpuid);
        }
    }
    (on, off)
}

fn set_msrs(vcpu: &VcpuFd, cpu: u8, values: &[(MsrIndex, u64)]) -> Result<(), VmmError> {
    if values.is_empty() {
        return Ok(());
    }
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|(i, v)| kvm_msr_entry {
            index: i.raw(),
            data: *v,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmmError::Vcpu {
        cpu,
        what: "KVM_SET_MSRS".into(),
        error: format!("{e:?}"),
    })?;
    let n = vcpu.set_msrs(&msrs).map_err(|e| VmmError::Vcpu {
        cpu,
        what: "KVM_SET_MSRS".into(),
        error: e.to_string(),
    })?;
    if n < values.len() {
        let (msr, value) = values[n];
        return Err(VmmError::Initial(InitialRefused {
            msr,
            value,
            reason: None,
        }));
    }
    Ok(())
}

fn vcpu_err(cpu: u8, what: &str) -> impl Fn(vmm_sys_util::errno::Error) -> VmmError + '_ {
    move |e| VmmError::Vcpu {
        cpu,
        what: what.to_owned(),
        error: e.to_string(),
    }
}

/// A feature's model as one vCPU uses it (shared by every vCPU for a VM-scoped feature).
pub type VcpuModel = SharedModel;

/// How a feature is put into a VM, for any guest.
#[derive(Clone, Copy)]
pub struct FeatureRun<'a> {
    /// The feature.
    pub feature: Option<&'a FeatureSpec>,
    /// The backend.
    pub backend: Backend,
    /// Host values.
    pub host: &'a HostSources,
    /// Enable arguments overriding the feature spec's.
    pub cap_args: Option<[u64; 4]>,
    /// MSR state the VMM establishes before the guest runs (host-initiated writes).
    pub initial: &'a [(MsrIndex, u64)],
    /// Which of the feature's pairs the guest's CPUID announces.
    pub announce: Announce,
}

/// A VM with its capabilities negotiated and its feature wired, before any vCPU exists.
pub struct Prepared {
    /// The VM, still without vCPUs.
    pub vm: VmSetup,
    /// Everything else the vCPUs and the report need.
    pub ctx: VmContext,
}

/// What negotiation and feature wiring produced, besides the VM itself.
pub struct VmContext {
    /// The KVM system fd.
    pub kvm: KvmSystem,
    /// KVM's supported CPUID.
    pub supported: kvm_bindings::CpuId,
    /// The guest's vendor.
    pub vendor: CpuVendor,
    /// What negotiation did.
    pub negotiation: Vec<NegotiationStep>,
    /// The user backend's model in its starting state.
    pub model: Option<SharedModel>,
    /// Where the feature's state lives (whether vCPUs share the model).
    pub scope: Scope,
    /// The model inputs in force (the oracle's starting state).
    pub inputs: Option<ModelInputs>,
    /// Host-initiated writes KVM receives (`KVM_SET_MSRS` on every vCPU, in order): all of
    /// the initial state for `kernel` and `none`, what the model does not serve for `user`.
    pub kvm_values: Vec<(MsrIndex, u64)>,
    on: Vec<CpuidBit>,
    off: Vec<CpuidBit>,
}

/// Opens KVM, creates the VM, negotiates the feature's capabilities and installs the MSR
/// filter and model (backend user). Callers then register guest memory and call
/// [`create_irqchip`], in that order (see there).
pub fn prepare(kvm_path: &std::path::Path, run: FeatureRun<'_>) -> Result<Prepared, VmmError> {
    prepare_on(OpenVm::open(kvm_path)?, run)
}

/// The part of [`prepare`] that needs nothing from the request: `/dev/kvm` open, KVM's
/// supported CPUID, a new VM. A caller that has inputs to read first can open it on another
/// thread meanwhile (`kvmcap probe` does: on the CI host the two take about as long).
pub struct OpenVm {
    kvm: KvmSystem,
    supported: kvm_bindings::CpuId,
    vm: VmSetup,
}

impl OpenVm {
    /// Opens `kvm_path`, asks for the supported CPUID, creates a VM.
    /// KVM_GET_SUPPORTED_CPUID and KVM_CREATE_VM run side by side (both ~0.3 ms here).
    pub fn open(kvm_path: &std::path::Path) -> Result<Self, VmmError> {
        let kvm = KvmSystem::open(kvm_path)?;
        let (supported, vm) = std::thread::scope(|s| {
            let cpuid = s.spawn(|| kvm.supported_cpuid());
            let vm = kvm.create_vm();
            (cpuid.join(), vm)
        });
        let supported = supported.map_err(|_| {
            VmmError::Request("KVM_GET_SUPPORTED_CPUID: its thread panicked".into())
        })??;
        Ok(Self {
            supported,
            vm: vm?,
            kvm,
        })
    }

    /// [`OpenVm::open`] on a new thread; join the handle for the result.
    pub fn open_in_background(
        kvm_path: std::path::PathBuf,
    ) -> std::thread::JoinHandle<Result<Self, VmmError>> {
        std::thread::spawn(move || Self::open(&kvm_path))
    }
}

/// [`prepare`] on a VM already opened.
pub fn prepare_on(open: OpenVm, run: FeatureRun<'_>) -> Result<Prepared, VmmError> {
    let OpenVm { kvm, supported, vm } = open;
    let vendor = cpuid::vendor(&supported);
    let args = run
        .cap_args
        .or(run.feature.map(|f| f.capability.args))
        .unwrap_or([0; 4]);
    // The user backend emulates the capability's enable too: it refuses what KVM refuses,
    // with the same error.
    if let (Backend::User, Some(f)) = (run.backend, run.feature) {
        if f.capability.refused_arg(&args).is_some() {
            return Err(VmmError::Negotiation {
                steps: Vec::new(),
                error: NegotiationError::Refused {
                    cap: f.capability.name.clone(),
                    number: f.capability.number,
                    args,
                    reason: enable_errno_meaning(libc::EINVAL).to_owned(),
                },
            });
        }
    }
    let requests = cap_requests(run.feature, run.backend, run.cap_args);
    let negotiation = negotiate(&kvm, &vm, &requests)
        .map_err(|(steps, error)| VmmError::Negotiation { steps, error })?;

    let inputs = match run.feature {
        Some(f) => Some(model_inputs(
            f,
            run.backend,
            vendor,
            run.announce,
            run.host,
            args,
            run.initial,
        )?),
        None => None,
    };
    let mut kvm_values: Vec<(MsrIndex, u64)> = inputs
        .as_ref()
        .map_or_else(|| run.initial.to_vec(), |i| i.writes.clone());
    let model: Option<SharedModel> = match (run.backend, run.feature, &inputs) {
        (Backend::User, Some(f), Some(inp)) => {
            let m = build_shared(f, inp)?;
            kvm_values.retain(|(i, _)| !with_model(&m, |m| m.handles(*i)));
            let bitmap = [0u8; 1];
            let msrs = f.msrs();
            if msrs.len() > kvm_bindings::KVM_MSR_FILTER_MAX_RANGES as usize {
                return Err(VmmError::Request(format!(
                    "feature {} has more MSRs than MSR filter ranges",
                    f.name
                )));
            }
            let ranges: Vec<MsrFilterRange<'_>> = msrs
                .iter()
                .map(|m| MsrFilterRange {
                    flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                    base: m.raw(),
                    msr_count: 1,
                    bitmap: &bitmap,
                })
                .collect();
            vm.fd()
                .set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
                .map_err(|source| KvmError::Ioctl {
                    ioctl: "KVM_X86_SET_MSR_FILTER".into(),
                    source,
                })?;
            Some(m)
        }
        _ => None,
    };
    let announced = inputs.as_ref().map_or(&[][..], |i| &i.announced[..]);
    let (on, off) = cpuid_bits(run.feature, announced);
    Ok(Prepared {
        vm,
        ctx: VmContext {
            kvm,
            supported,
            vendor,
            negotiation,
            model,
            scope: run.feature.map_or(Scope::Vcpu, |f| f.scope),
            inputs,
            kvm_values,
            on,
            off,
        },
    })
}

/// A guest `rdmsr` that KVM sent to userspace: the vCPU's model answers, or #GP without one.
pub fn model_rdmsr(model: &mut Option<VcpuModel>, index: MsrIndex) -> Result<u64, Fault> {
    model
        .as_ref()
        .map_or(Err(Fault::Gp), |m| with_model(m, |m| m.read(index)))
}

/// A guest `wrmsr` that KVM sent to userspace.
pub fn model_wrmsr(
    model: &mut Option<VcpuModel>,
    index: MsrIndex,
    value: u64,
) -> Result<(), Fault> {
    model
        .as_ref()
        .map_or(Err(Fault::Gp), |m| with_model(m, |m| m.write(index, value)))
}

impl VmContext {
    /// The user backend's model for one vCPU.
    pub fn vcpu_model(&self) -> Option<VcpuModel> {
        self.model.as_ref().map(|m| model_for_vcpu(m, self.scope))
    }

    /// Per-vCPU state every guest needs: CPUID (APIC ID, feature bits) and the feature's MSRs.
    pub fn setup_vcpu(&self, vcpu: &VcpuFd, cpu: u8, count: u8) -> Result<(), VmmError> {
        vcpu.set_cpuid2(&self.cpuid_for(cpu, count)?)
            .map_err(vcpu_err(cpu, "KVM_SET_CPUID2"))?;
        set_msrs(vcpu, cpu, &self.kvm_values)
    }

    /// The CPUID table of vCPU `cpu` of `count`.
    pub fn cpuid_for(&self, cpu: u8, count: u8) -> Result<kvm_bindings::CpuId, VmmError> {
        cpuid::for_vcpu(&self.supported, cpu, count, &self.on, &self.off).map_err(|error| {
            VmmError::Vcpu {
                cpu,
                what: "CPUID".into(),
                error,
            }
        })
    }
}

/// Creates the TSS area and the in-kernel irqchip. Call it after registering guest memory:
/// measured on this project's CI host, a memory slot added after the irqchip exists costs
/// 5-12 ms (KVM then updates its internal memslots too), before it 0.04 ms.
pub fn create_irqchip(vm: &VmSetup) -> Result<(), VmmError> {
    vm.fd()
        .set_tss_address(0xfffb_d000)
        .map_err(|source| KvmError::Ioctl {
            ioctl: "KVM_SET_TSS_ADDR".into(),
            source,
        })?;
    vm.fd()
        .create_irq_chip()
        .map_err(|source| KvmError::Ioctl {
            ioctl: "KVM_CREATE_IRQCHIP".into(),
            source,
        })?;
    Ok(())
}

/// Checks a vCPU count against the limits and KVM.
pub fn check_vcpus(count: usize, limits: &Limits, layout_max: u8) -> Result<u8, VmmError> {
    let max = limits.max_vcpus.min(layout_max);
    if count == 0 || count > usize::from(max) {
        return Err(VmmError::Request(format!(
            "{count} vCPUs: expected 1..={max}"
        )));
    }
    Ok(count as u8)
}

/// Runs the bare probe guest as `req` says.
pub fn run_bare(req: &BareRequest<'_>) -> Result<BareOutcome, VmmError> {
    run_bare_on(OpenVm::open(&req.kvm_path)?, req)
}

/// [`run_bare`] on a VM already opened (`req.kvm_path` is then only its name).
pub fn run_bare_on(open: OpenVm, req: &BareRequest<'_>) -> Result<BareOutcome, VmmError> {
    let start = Instant::now();
    let count = check_vcpus(req.ops.len(), &req.limits, bare::MAX_VCPUS)?;
    let prep = prepare_on(
        open,
        FeatureRun {
            feature: req.feature,
            backend: req.backend,
            host: req.host,
            cap_args: req.cap_args,
            initial: &req.initial,
            announce: req.announce,
        },
    )?;
    let Prepared { vm, ctx } = prep;

    if usize::from(count) > ctx.kvm.max_vcpus() {
        return Err(VmmError::Request(format!(
            "{count} vCPUs: KVM allows {}",
            ctx.kvm.max_vcpus()
        )));
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bare::memory_size(count))])
        .map_err(|e| KvmError::Memory(e.to_string()))?;
    vm.register_memory(&mem)?;

    if req.irqchip {
        create_irqchip(&vm)?;
    }
    bare::load_image(&mem).map_err(VmmError::Request)?;
    for (cpu, ops) in req.ops.iter().enumerate() {
        bare::load_ops(&mem, cpu as u8, ops, req.timed).map_err(VmmError::Request)?;
    }
    let (vm_ready, vcpus) = vm.create_vcpus(count)?;

    let mut runnable = Vec::with_capacity(usize::from(count));
    let turns = std::sync::Arc::new(Turns::default());
    let deadline = Instant::now() + req.limits.deadline;
    let tsc_khz = vcpus
        .first()
        .filter(|_| req.timed)
        .and_then(|v| v.get_tsc_khz().ok());
    for (cpu, vcpu) in vcpus.into_iter().enumerate() {
        let cpu = cpu as u8;
        let setup = BareSetup {
            cpu,
            cpuid: ctx.cpuid_for(cpu, count)?,
            msrs: ctx.kvm_values.clone(),
            irqchip: req.irqchip,
        };
        runnable.push((
            vcpu,
            BareHandler {
                model: ctx.vcpu_model(),
                turns: std::sync::Arc::clone(&turns),
                deadline,
                stray: Vec::new(),
                setup: Some(setup),
                setup_error: None,
            },
        ));
    }
    let (summary, mut handlers) = run_vcpus(runnable, req.limits.deadline);
    if let Some(e) = handlers.iter_mut().find_map(|h| h.setup_error.take()) {
        return Err(e);
    }
    drop(vm_ready);

    let timed: Vec<_> = req
        .ops
        .iter()
        .enumerate()
        .map(|(cpu, ops)| bare::read_timed_results(&mem, cpu as u8, ops))
        .collect();
    let cycles = timed
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|v| v.iter().map(|(_, c)| *c).collect())
                .unwrap_or_default()
        })
        .collect();
    let results = timed
        .into_iter()
        .map(|r| r.map(|v| v.into_iter().map(|(o, _)| o).collect()))
        .collect();
    let stray_io = handlers
        .into_iter()
        .flat_map(|h| h.stray)
        .take(MAX_STRAY)
        .collect();
    Ok(BareOutcome {
        negotiation: ctx.negotiation,
        vendor: ctx.vendor,
        ends: summary.ends,
        results,
        cycles,
        tsc_khz,
        stray_io,
        model_inputs: ctx.inputs,
        elapsed: start.elapsed(),
    })
}
