//! vCPU threads: one per vCPU, each looping on `KVM_RUN` and dispatching exits (the shape of
//! QEMU's `kvm_cpu_exec`), with a deadline enforced by kicks so no run can hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;
use vmm_sys_util::signal::Killable;

use crate::kvm::kick;
use crate::vmm::stats::ExitStats;
use msr_probe::{Fault, MsrIndex};

/// How one vCPU's run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "end", rename_all = "kebab-case")]
pub enum VcpuEnd {
    /// The bare guest reported done after `ops` operations.
    Done {
        /// Operations completed.
        ops: u32,
    },
    /// The bare guest took an exception it has no handler for.
    UnexpectedException {
        /// The vector.
        vector: u32,
    },
    /// `HLT` exited to userspace (no in-kernel irqchip).
    Hlt,
    /// `KVM_EXIT_SHUTDOWN`: the guest triple-faulted.
    Shutdown,
    /// `KVM_EXIT_FAIL_ENTRY`: hardware refused the guest state.
    FailEntry {
        /// The hardware's reason.
        reason: u64,
    },
    /// `KVM_EXIT_INTERNAL_ERROR` (e.g. an emulation failure).
    InternalError,
    /// `KVM_EXIT_SYSTEM_EVENT`: reset, shutdown or crash requested by the guest.
    SystemEvent {
        /// `KVM_SYSTEM_EVENT_*`.
        kind: u32,
    },
    /// The guest asked to reset the machine (e.g. keyboard controller reset).
    Reset,
    /// The guest's framed report arrived (or broke): the VM was ended early.
    Reported,
    /// The guest printed more than the console limit.
    ConsoleFlood {
        /// Bytes printed.
        bytes: u64,
    },
    /// The deadline passed and the vCPU was kicked out of `KVM_RUN`.
    Timeout,
    /// Another vCPU ended the VM.
    Stopped,
    /// `KVM_RUN` failed.
    RunError {
        /// The errno text.
        error: String,
    },
    /// An exit kvmcap does not handle.
    Unhandled {
        /// What it was.
        exit: String,
    },
}

impl std::fmt::Display for VcpuEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done { ops } => write!(f, "done after {ops} operation(s)"),
            Self::UnexpectedException { vector } => {
                write!(f, "unexpected exception, vector {vector}")
            }
            Self::Hlt => f.write_str("hlt"),
            Self::Shutdown => f.write_str("shutdown (triple fault)"),
            Self::FailEntry { reason } => write!(f, "entry failed, hardware reason {reason:#x}"),
            Self::InternalError => f.write_str("KVM internal error"),
            Self::SystemEvent { kind } => write!(f, "system event {kind}"),
            Self::Reset => f.write_str("reset"),
            Self::Reported => f.write_str("reported"),
            Self::ConsoleFlood { bytes } => write!(f, "console flood ({bytes} bytes)"),
            Self::Timeout => f.write_str("timeout (kicked at the deadline)"),
            Self::Stopped => f.write_str("stopped (another vCPU ended the VM)"),
            Self::RunError { error } => write!(f, "KVM_RUN failed: {error}"),
            Self::Unhandled { exit } => write!(f, "unhandled exit {exit}"),
        }
    }
}

/// What the run loop does after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Re-enter the guest.
    Continue,
    /// This vCPU is finished; others go on.
    End(VcpuEnd),
    /// The whole VM is finished: stop every vCPU.
    EndVm(VcpuEnd),
}

/// Serves one vCPU's exits. Implementations must treat everything the guest passes as
/// untrusted: ports, sizes and data are guest-chosen.
pub trait ExitHandler: Send {
    /// `OUT` to `port`.
    fn io_out(&mut self, port: u16, data: &[u8]) -> Flow;
    /// `IN` from `port`; fill `data`.
    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Flow;
    /// A read of unbacked guest-physical memory.
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) -> Flow {
        data.fill(0xff);
        Flow::Continue
    }
    /// A write to unbacked guest-physical memory.
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> Flow {
        Flow::Continue
    }
    /// `RDMSR` that KVM sent to userspace (MSR filter or unknown MSR).
    fn rdmsr(&mut self, index: MsrIndex) -> Result<u64, Fault>;
    /// `WRMSR` that KVM sent to userspace.
    fn wrmsr(&mut self, index: MsrIndex, value: u64) -> Result<(), Fault>;
    /// Called on the vCPU's own thread before its first `KVM_RUN`, so per-vCPU setup
    /// (CPUID, registers) of several vCPUs runs side by side; an error ends the vCPU with
    /// [`VcpuEnd::RunError`] before it runs.
    fn before_run(&mut self, _vcpu: &VcpuFd) -> Result<(), String> {
        Ok(())
    }
}

/// Runs until the guest or a handler ends it, or `stop` is set (kick), counting exits and
/// the time in and out of `KVM_RUN` into `stats`.
fn run_loop(
    vcpu: &mut VcpuFd,
    handler: &mut dyn ExitHandler,
    stop: &AtomicBool,
    vm_done: &AtomicBool,
    stats: &mut ExitStats,
) -> Flow {
    // When KVM_RUN last returned: the VMM's time runs from there to the next entry.
    let mut left: Option<Instant> = None;
    let flow = loop {
        if stop.load(Ordering::Acquire) {
            break Flow::End(if vm_done.load(Ordering::Acquire) {
                VcpuEnd::Stopped
            } else {
                VcpuEnd::Timeout
            });
        }
        let enter = Instant::now();
        if let Some(l) = left {
            stats.in_vmm += enter - l;
        }
        let result = vcpu.run();
        let back = Instant::now();
        stats.in_kvm_run += back - enter;
        left = Some(back);
        let n = &mut stats.exits;
        let flow = match result {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => {
                    n.io_out += 1;
                    handler.io_out(port, data)
                }
                VcpuExit::IoIn(port, data) => {
                    n.io_in += 1;
                    handler.io_in(port, data)
                }
                VcpuExit::MmioRead(addr, data) => {
                    n.mmio_read += 1;
                    handler.mmio_read(addr, data)
                }
                VcpuExit::MmioWrite(addr, data) => {
                    n.mmio_write += 1;
                    handler.mmio_write(addr, data)
                }
                VcpuExit::Hlt => {
                    n.hlt += 1;
                    Flow::End(VcpuEnd::Hlt)
                }
                VcpuExit::Shutdown => {
                    n.shutdown += 1;
                    Flow::EndVm(VcpuEnd::Shutdown)
                }
                VcpuExit::FailEntry(reason, _) => {
                    n.fail_entry += 1;
                    Flow::EndVm(VcpuEnd::FailEntry { reason })
                }
                VcpuExit::InternalError => {
                    n.internal_error += 1;
                    Flow::EndVm(VcpuEnd::InternalError)
                }
                VcpuExit::SystemEvent(kind, _) => {
                    n.system_event += 1;
                    Flow::EndVm(VcpuEnd::SystemEvent { kind })
                }
                VcpuExit::X86Rdmsr(exit) => {
                    n.msr_read += 1;
                    match handler.rdmsr(MsrIndex::new(exit.index)) {
                        Ok(v) => *exit.data = v,
                        Err(Fault::Gp) => *exit.error = 1,
                    }
                    Flow::Continue
                }
                VcpuExit::X86Wrmsr(exit) => {
                    n.msr_write += 1;
                    if handler.wrmsr(MsrIndex::new(exit.index), exit.data).is_err() {
                        *exit.error = 1;
                    }
                    Flow::Continue
                }
                VcpuExit::Intr => {
                    n.intr += 1;
                    Flow::Continue
                }
                other => {
                    n.other += 1;
                    Flow::EndVm(VcpuEnd::Unhandled {
                        exit: format!("{other:?}"),
                    })
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                n.signal += 1;
                if !stop.load(Ordering::Acquire) {
                    // A stray signal: clear the kick and go back in.
                    vcpu.set_kvm_immediate_exit(0);
                }
                Flow::Continue
            }
            Err(e) => {
                n.error += 1;
                Flow::EndVm(VcpuEnd::RunError {
                    error: e.to_string(),
                })
            }
        };
        if !matches!(flow, Flow::Continue) {
            break flow;
        }
    };
    if let Some(l) = left {
        stats.in_vmm += l.elapsed();
    }
    stats.total = stats.exits.total();
    flow
}

/// The result of running a set of vCPUs.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Per vCPU, in id order.
    pub ends: Vec<VcpuEnd>,
    /// Wall time from the first thread start to the last end.
    pub elapsed: Duration,
    /// Per vCPU, in id order: exits by reason, time in `KVM_RUN` and in the VMM (zero for a
    /// vCPU whose thread never reported).
    pub stats: Vec<ExitStats>,
}

/// The CPUs this process may run on (empty if they cannot be read).
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default()
}

/// Pins the calling thread to `cpu` (best effort: a refusal leaves it to the scheduler).
fn pin_this_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Holds vCPU threads until all of them are set up.
#[derive(Default)]
struct StartGate {
    /// (threads set up, threads started: known once every thread was spawned).
    state: std::sync::Mutex<(usize, Option<usize>)>,
    changed: std::sync::Condvar,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<usize>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A vCPU thread is set up; returns once every started thread is.
    fn ready_and_wait(&self) {
        let mut st = self.lock();
        st.0 += 1;
        self.changed.notify_all();
        while st.1.is_none_or(|n| st.0 < n) {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Every thread that will call [`StartGate::ready_and_wait`] has been started.
    fn expect(&self, started: usize) {
        self.lock().1 = Some(started);
        self.changed.notify_all();
    }
}

/// Runs every vCPU on its own thread until each ends or `deadline` passes, then kicks the
/// rest. Each vCPU thread is pinned to one of the CPUs the process may run on, round robin:
/// left to the scheduler, a new vCPU thread was measured waiting ~1 ms on the CPU of a vCPU
/// already in KVM_RUN instead of running beside it. Returns each vCPU's end with the handler
/// it ran with (so callers can read state the
/// handler gathered, such as console output).
pub fn run_vcpus<H: ExitHandler + 'static>(
    vcpus: Vec<(VcpuFd, H)>,
    deadline: Duration,
) -> (RunSummary, Vec<H>) {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let vm_done = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, VcpuEnd, ExitStats)>();
    let kick_ok = kick::install().is_ok();
    let mut handles: Vec<Option<JoinHandle<(VcpuFd, H)>>> = Vec::new();
    let count = vcpus.len();
    let allowed = allowed_cpus();
    // No vCPU enters KVM_RUN before every vCPU has set itself up: a setup writes VM-wide
    // state too (a VM-scoped MSR such as PPIN_CTL, set with KVM_SET_MSRS on each vCPU), and
    // must not land after another vCPU's guest already changed it.
    let gate = Arc::new(StartGate::default());
    for (id, (mut vcpu, mut handler)) in vcpus.into_iter().enumerate() {
        let (stop, vm_done, thread_tx) = (stop.clone(), vm_done.clone(), tx.clone());
        let gate = gate.clone();
        let pin_to = (!allowed.is_empty()).then(|| allowed[id % allowed.len()]);
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                if let Some(cpu) = pin_to {
                    pin_this_thread(cpu);
                }
                let setup = handler.before_run(&vcpu);
                gate.ready_and_wait();
                if let Err(error) = setup {
                    let _ = thread_tx.send((id, VcpuEnd::RunError { error }, ExitStats::default()));
                    return (vcpu, handler);
                }
                kick::arm(&mut vcpu);
                let mut stats = ExitStats::default();
                let flow = run_loop(&mut vcpu, &mut handler, &stop, &vm_done, &mut stats);
                kick::disarm();
                let end = match flow {
                    Flow::End(e) => e,
                    Flow::EndVm(e) => {
                        vm_done.store(true, Ordering::Release);
                        stop.store(true, Ordering::Release);
                        e
                    }
                    Flow::Continue => VcpuEnd::Stopped,
                };
                let _ = thread_tx.send((id, end, stats));
                (vcpu, handler)
            });
        match spawned {
            Ok(h) => handles.push(Some(h)),
            Err(e) => {
                let _ = tx.send((
                    id,
                    VcpuEnd::RunError {
                        error: format!("cannot start vCPU thread: {e}"),
                    },
                    ExitStats::default(),
                ));
                handles.push(None);
            }
        }
    }
    gate.expect(handles.iter().filter(|h| h.is_some()).count());
    drop(tx);
    let mut ends: Vec<Option<VcpuEnd>> = vec![None; count];
    let mut stats = vec![ExitStats::default(); count];
    let mut received = 0;
    let deadline_at = start + deadline;
    while received < count {
        let now = Instant::now();
        let timed_out = now >= deadline_at;
        let wait = if timed_out || stop.load(Ordering::Acquire) {
            // Deadline passed or the VM ended: kick everyone still running, again and again
            // until they leave KVM_RUN.
            stop.store(true, Ordering::Release);
            if kick_ok {
                for (id, h) in handles.iter().enumerate() {
                    if let (None, Some(h)) = (&ends[id], h) {
                        let _ = h.kill(kick::kick_signal());
                    }
                }
            }
            Duration::from_millis(10)
        } else {
            deadline_at - now
        };
        match rx.recv_timeout(wait) {
            Ok((id, end, s)) => {
                if id < count && ends[id].is_none() {
                    ends[id] = Some(end);
                    stats[id] = s;
                    received += 1;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() > deadline_at + Duration::from_secs(5) {
                    break; // a thread that ignores kicks: report it, do not hang
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let elapsed = start.elapsed();
    let mut handlers = Vec::with_capacity(count);
    let mut stuck = false;
    for (id, h) in handles.into_iter().enumerate() {
        if ends[id].is_some() {
            if let Some(Ok((_vcpu, handler))) = h.map(JoinHandle::join) {
                handlers.push(handler);
            }
        } else {
            stuck = true;
        }
    }
    let ends = ends
        .into_iter()
        .map(|e| e.unwrap_or(VcpuEnd::Timeout))
        .collect();
    if stuck {
        handlers.clear();
    }
    (
        RunSummary {
            ends,
            elapsed,
            stats,
        },
        handlers,
    )
}
