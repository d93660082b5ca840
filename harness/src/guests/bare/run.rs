//! Running the bare probe guest: its memory image and operation lists, a vCPU thread per list
//! with the exit handler that serves the guest's ports, and the results read back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_mp_state, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{MsrOp, OpResult, ResultsError, DONE_PORT, FAULT_PORT, PASS_PORT, WAIT_PORT};
use crate::backend::Backend;
use crate::features::model::{ModelInputs, Oracle};
use crate::features::{Announce, FeatureSpec};
use crate::guests::bare;
use crate::host::HostSources;
use crate::kvm::KvmError;
use crate::negotiate::NegotiationStep;
use crate::vmm::error::{check_vcpus, Limits, VmmError};
use crate::vmm::machine::{
    create_irqchip, model_rdmsr, model_wrmsr, prepare_on, set_msrs, vcpu_err, FeatureRun, OpenVm,
    Prepared, VcpuModel,
};
use crate::vmm::vcpu::{run_vcpus, ExitHandler, Flow, VcpuEnd};
use crate::x86::cpuid::CpuVendor;
use msr_probe::{Fault, MsrIndex};

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
    /// Each vCPU's exits by reason and time in and out of `KVM_RUN`.
    pub stats: Vec<crate::vmm::stats::ExitStats>,
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
    /// The feature model in the starting state (copies judge the run).
    pub oracle: Option<Oracle>,
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
    bare::load_image(&mem).map_err(VmmError::Internal)?;
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
        stats: summary.stats,
        results,
        cycles,
        tsc_khz,
        stray_io,
        model_inputs: ctx.inputs,
        oracle: ctx.oracle,
        elapsed: start.elapsed(),
    })
}
