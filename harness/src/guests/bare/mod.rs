//! The bare probe guest: built into kvmcap, started on every vCPU directly in 64-bit long mode.
//!
//! The VMM writes page tables, a GDT, an IDT and the probe's exception handlers (`probe.S`)
//! into guest memory, compiles each vCPU's MSR operations into straight-line guest code
//! ([`compile_ops`]), starts each vCPU on its code in long mode, and reads each vCPU's results
//! area when the guest reports done on [`DONE_PORT`]. The results area is guest-written memory:
//! it is parsed with bounds checks and nothing in it is trusted.
//!
//! Why compiled code rather than an interpreter loop: on a host that emulates guest
//! instructions (this project's CI host runs KVM on a paravirtual backend), every guest
//! instruction costs about a microsecond, and an interpreter spent ~30 of them per MSR. The
//! compiled form is what a selftest writes by hand: `mov ecx, index; rdmsr` and the stores of
//! the result, five instructions per read.

mod code;
pub mod image;
pub mod run;

pub use code::{compile_ops, compile_ops_with, Epilogue};

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::x86::long_mode;
use msr_probe::{Fault, MsrIndex, Reading};

/// The probe's exception handlers, assembled from `probe.S` at build time.
pub const PROBE_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.bin"));

/// The guest writes the number of completed operations here when it is done.
pub const DONE_PORT: u16 = 0x510;
/// The guest writes an unexpected exception's vector here, then halts.
pub const FAULT_PORT: u16 = 0x511;
/// The guest writes a turn number here and the VMM holds the vCPU until that turn comes:
/// cross-vCPU steps run in the order a scenario gives them.
pub const WAIT_PORT: u16 = 0x512;
/// The guest writes the next turn number here when its segment of steps is done.
pub const PASS_PORT: u16 = 0x513;
/// QEMU's debug console (`-debugcon`), where a multiboot probe dumps its results.
pub const DEBUGCON_PORT: u16 = 0xe9;
/// QEMU's isa-debug-exit device, which a multiboot probe writes to end the VM.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

const CODE_ADDR: u64 = 0x8000;
const CODE_MAX: usize = 0x8000;
/// The IDT all vCPUs share (read only to the guest): 32 gates.
const IDT_BASE: u64 = 0x2_0000;
const IDT_VECTORS: u64 = 32;
/// Where `probe.S` puts its handlers (its `.org` directives).
const GP_HANDLER: u64 = 0x000;
const VECTOR_STUBS: u64 = 0x100;
const VECTOR_STUB_SIZE: u64 = 16;
const GP_VECTOR: u64 = 13;
const STACK_BASE: u64 = 0x6_0000;
const PAGE: u64 = 0x1000;
/// Per-vCPU blocks start here: the vCPU's compiled operations, then its results area.
const CPU_BASE: u64 = 0x10_0000;
const CPU_STRIDE: u64 = 0x1_8000;
const OPS_OFFSET: u64 = 0;
const RESULTS_OFFSET: u64 = 0x1_3000;

/// The most operations one probe may carry.
pub const MAX_OPS: usize = 1024;
/// The most vCPUs the bare layout has room for (IDT and stack pages below 1 MiB).
pub const MAX_VCPUS: u8 = 64;
/// The longest compiled operation (a timed wrmsr), in bytes.
#[cfg(test)]
const MAX_OP_CODE: u64 = 56;
/// The compiled code's epilogue (done count, done port, halt loop), in bytes.
const EPILOGUE_CODE: u64 = 24;
const RESULT_HEADER: u64 = 8;
const RESULT_SIZE: u64 = 16;
const MAGIC: u32 = 0x524d_564b; // "KVMR"
/// A record's status: the access completed (the VMM clears records to this).
const STATUS_DONE: u32 = 0;
const STATUS_GP: u32 = 2;

/// One MSR operation of the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum MsrOp {
    /// `rdmsr`.
    Read {
        /// The MSR.
        #[serde(serialize_with = "crate::json::msr_index")]
        index: MsrIndex,
    },
    /// `wrmsr`.
    Write {
        /// The MSR.
        #[serde(serialize_with = "crate::json::msr_index")]
        index: MsrIndex,
        /// The value written.
        #[serde(serialize_with = "crate::json::u64_hex")]
        value: u64,
    },
    /// Load an empty IDT and execute `ud2`: the vCPU triple-faults (tests SHUTDOWN handling).
    TripleFault,
    /// Spin forever (tests the deadline).
    Spin,
    /// Wait until the VM's turn is this one ([`WAIT_PORT`]).
    Wait(u32),
    /// Hand the VM's turn to this one ([`PASS_PORT`]).
    Pass(u32),
}

impl MsrOp {
    /// The MSR the operation touches, if any.
    pub fn index(&self) -> Option<MsrIndex> {
        match self {
            Self::Read { index } | Self::Write { index, .. } => Some(*index),
            Self::TripleFault | Self::Spin | Self::Wait(_) | Self::Pass(_) => None,
        }
    }
}

/// What the guest reported for one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// `rdmsr` read this value.
    Read(u64),
    /// `wrmsr` completed.
    Written,
    /// The instruction raised #GP.
    Fault,
}

impl OpResult {
    /// The result as a reading (a completed write reads as its value).
    pub fn reading(self, op: &MsrOp) -> Reading {
        match (self, op) {
            (Self::Read(v), _) => Reading::Value(v),
            (Self::Written, MsrOp::Write { value, .. }) => Reading::Value(*value),
            (Self::Written, _) => Reading::Value(0),
            (Self::Fault, _) => Reading::Fault(Fault::Gp),
        }
    }
}

/// Why a vCPU's results area cannot be believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultsError {
    /// the results area could not be read from guest memory
    #[error("vCPU {cpu}: results area unreadable: {reason}")]
    Unreadable {
        /// The vCPU.
        cpu: u8,
        /// Why.
        reason: String,
    },
    /// the guest overwrote the results header
    #[error("vCPU {cpu}: results area has magic {found:#010x}, not the {MAGIC:#010x} the VMM wrote: the guest overwrote it")]
    BadMagic {
        /// The vCPU.
        cpu: u8,
        /// What was there.
        found: u32,
    },
    /// the guest claims more results than there were operations
    #[error("vCPU {cpu}: guest claims {claimed} results for {ops} operations")]
    TooMany {
        /// The vCPU.
        cpu: u8,
        /// The count the guest wrote.
        claimed: u32,
        /// The number of operations.
        ops: usize,
    },
    /// a result record has an unknown status
    #[error("vCPU {cpu}: result {index} has unknown status {status}")]
    BadStatus {
        /// The vCPU.
        cpu: u8,
        /// The record.
        index: usize,
        /// The status found.
        status: u32,
    },
}

/// Guest memory size the bare layout needs for `vcpus` vCPUs (2 MiB multiples).
pub fn memory_size(vcpus: u8) -> usize {
    let need = CPU_BASE + u64::from(vcpus) * CPU_STRIDE;
    let two_mib = 2u64 << 20;
    (need.div_ceil(two_mib) * two_mib) as usize
}

fn mem_err(e: vm_memory::GuestMemoryError) -> String {
    e.to_string()
}

/// A 64-bit interrupt gate to `handler` (present, DPL 0, the boot code segment).
fn idt_gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&long_mode::CODE_SELECTOR.to_le_bytes());
    g[4..6].copy_from_slice(&0x8e00u16.to_le_bytes());
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// Writes the long-mode tables (see [`crate::x86::long_mode`]), the exception handlers and the IDT
/// pointing at them.
pub fn load_image(mem: &GuestMemoryMmap) -> Result<(), String> {
    if PROBE_IMAGE.len() > CODE_MAX {
        return Err("probe image too large".into());
    }
    long_mode::write_tables(mem).map_err(mem_err)?;
    mem.write_slice(PROBE_IMAGE, GuestAddress(CODE_ADDR))
        .map_err(mem_err)?;
    mem.write_slice(&idt(CODE_ADDR), GuestAddress(IDT_BASE))
        .map_err(mem_err)
}

/// The IDT's 32 gates for [`PROBE_IMAGE`] loaded at `handlers`.
fn idt(handlers: u64) -> Vec<u8> {
    let mut idt = Vec::with_capacity((IDT_VECTORS * 16) as usize);
    for v in 0..IDT_VECTORS {
        let handler = if v == GP_VECTOR {
            GP_HANDLER
        } else {
            VECTOR_STUBS + VECTOR_STUB_SIZE * v
        };
        idt.extend_from_slice(&idt_gate(handlers + handler));
    }
    idt
}

/// The long-mode segment state (see [`long_mode::long_mode_sregs`]) with the probe's IDT.
pub fn sregs(s: kvm_sregs) -> kvm_sregs {
    let mut s = long_mode::long_mode_sregs(s);
    s.idt.base = IDT_BASE;
    s.idt.limit = (IDT_VECTORS * 16 - 1) as u16;
    s
}

/// Compiles and writes vCPU `cpu`'s operations and clears its results area.
pub fn load_ops(mem: &GuestMemoryMmap, cpu: u8, ops: &[MsrOp], timed: bool) -> Result<(), String> {
    if ops.len() > MAX_OPS {
        return Err(format!(
            "{} operations exceed the bare guest's {MAX_OPS}",
            ops.len()
        ));
    }
    let code = compile_ops(ops, timed);
    if code.len() as u64 > RESULTS_OFFSET - OPS_OFFSET {
        return Err(format!(
            "{} operations compile to {} bytes, more than the bare layout's {RESULTS_OFFSET:#x}",
            ops.len(),
            code.len()
        ));
    }
    mem.write_slice(&code, GuestAddress(ops_addr(cpu)))
        .map_err(mem_err)?;
    // The header's magic and done = 0; every record zero.
    let mut area = vec![0u8; results_len(ops.len())];
    area[..4].copy_from_slice(&MAGIC.to_le_bytes());
    mem.write_slice(&area, GuestAddress(results_addr(cpu)))
        .map_err(mem_err)
}

fn ops_addr(cpu: u8) -> u64 {
    CPU_BASE + u64::from(cpu) * CPU_STRIDE + OPS_OFFSET
}

fn results_addr(cpu: u8) -> u64 {
    CPU_BASE + u64::from(cpu) * CPU_STRIDE + RESULTS_OFFSET
}

/// The registers vCPU `cpu` starts with: on its compiled operations, `%rbx` = its results
/// area, its own stack (for exception frames).
pub fn regs(cpu: u8) -> kvm_regs {
    kvm_regs {
        rip: ops_addr(cpu),
        rsp: STACK_BASE + PAGE * (u64::from(cpu) + 1),
        rflags: 0x2,
        rbx: results_addr(cpu),
        ..Default::default()
    }
}

/// Reads and validates vCPU `cpu`'s results for `ops`. Returns one entry per operation the
/// guest completed (possibly fewer than `ops` if it stopped early).
pub fn read_results(
    mem: &GuestMemoryMmap,
    cpu: u8,
    ops: &[MsrOp],
) -> Result<Vec<OpResult>, ResultsError> {
    read_timed_results(mem, cpu, ops).map(|v| v.into_iter().map(|(r, _)| r).collect())
}

/// [`read_results`] with the TSC ticks each operation took (guest-measured: untrusted, for
/// benchmarks only; 0 unless the operations were compiled timed). The header's done count is
/// the guest's claim of how many operations completed (it may not exceed them); a completed
/// record's status is 0 (the access completed) or 2 (#GP).
pub fn read_timed_results(
    mem: &GuestMemoryMmap,
    cpu: u8,
    ops: &[MsrOp],
) -> Result<Vec<(OpResult, u32)>, ResultsError> {
    let unreadable = |e: vm_memory::GuestMemoryError| ResultsError::Unreadable {
        cpu,
        reason: e.to_string(),
    };
    let mut area = vec![0u8; results_len(ops.len())];
    mem.read_slice(&mut area, GuestAddress(results_addr(cpu)))
        .map_err(unreadable)?;
    parse_results(cpu, &area, ops)
}

/// The size of a results area for `ops` operations.
pub fn results_len(ops: usize) -> usize {
    (RESULT_HEADER + RESULT_SIZE * ops as u64) as usize
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Validates a results area (`area`, as the guest left it, [`results_len`] bytes) for `ops`:
/// see [`read_timed_results`].
pub fn parse_results(
    cpu: u8,
    area: &[u8],
    ops: &[MsrOp],
) -> Result<Vec<(OpResult, u32)>, ResultsError> {
    if area.len() < results_len(ops.len()) {
        return Err(ResultsError::Unreadable {
            cpu,
            reason: format!(
                "{} bytes, {} expected for {} operations",
                area.len(),
                results_len(ops.len()),
                ops.len()
            ),
        });
    }
    let magic = le32(area, 0);
    if magic != MAGIC {
        return Err(ResultsError::BadMagic { cpu, found: magic });
    }
    let done = le32(area, 4);
    if done as usize > ops.len() {
        return Err(ResultsError::TooMany {
            cpu,
            claimed: done,
            ops: ops.len(),
        });
    }
    let mut out = Vec::with_capacity(done as usize);
    for (i, op) in ops.iter().enumerate().take(done as usize) {
        let rec = (RESULT_HEADER + RESULT_SIZE * i as u64) as usize;
        let status = le32(area, rec);
        let cycles = le32(area, rec + 4);
        let value = u64::from(le32(area, rec + 8)) | u64::from(le32(area, rec + 12)) << 32;
        out.push(match (status, op) {
            (STATUS_DONE, MsrOp::Read { .. }) => (OpResult::Read(value), cycles),
            (STATUS_DONE, MsrOp::Write { .. }) => (OpResult::Written, cycles),
            (STATUS_GP, MsrOp::Read { .. } | MsrOp::Write { .. }) => (OpResult::Fault, cycles),
            // A turn the vCPU got past: its record is never written.
            (STATUS_DONE, MsrOp::Wait(_) | MsrOp::Pass(_)) => (OpResult::Written, 0),
            (status, _) => {
                return Err(ResultsError::BadStatus {
                    cpu,
                    index: i,
                    status,
                })
            }
        });
    }
    Ok(out)
}

/// Writes raw bytes into a vCPU's results area (for tests of hostile guests).
pub fn poke_results(
    mem: &GuestMemoryMmap,
    cpu: u8,
    offset: u64,
    bytes: &[u8],
) -> Result<(), String> {
    mem.write_slice(bytes, GuestAddress(results_addr(cpu) + offset))
        .map_err(mem_err)
}

#[cfg(test)]
mod tests;
