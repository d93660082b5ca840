//! The bare probe guest: built into kvmcap, started on every vCPU directly in 64-bit long mode.
//!
//! The VMM writes page tables, a GDT, the probe code and the list of MSR operations into guest
//! memory, sets each vCPU's registers for long mode, and reads each vCPU's results area when
//! the guest reports done on [`DONE_PORT`]. The results area is guest-written memory: it is
//! parsed with bounds checks and nothing in it is trusted.

use kvm_bindings::kvm_regs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vmm::boot;
use msr_probe::{Fault, MsrIndex, Reading};

/// The probe's code, assembled from `probe.S` at build time.
pub const PROBE_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.bin"));

/// The guest writes the number of completed operations here when it is done.
pub const DONE_PORT: u16 = 0x510;
/// The guest writes an unexpected exception's vector here, then halts.
pub const FAULT_PORT: u16 = 0x511;

const CODE_ADDR: u64 = 0x8000;
const CODE_MAX: usize = 0x8000;
const IDT_BASE: u64 = 0x2_0000;
const STACK_BASE: u64 = 0x6_0000;
const PAGE: u64 = 0x1000;
/// Per-vCPU blocks start here: the vCPU's operation list, then its results area.
const CPU_BASE: u64 = 0x10_0000;
const CPU_STRIDE: u64 = 0x9000;
const OPS_OFFSET: u64 = 0;
const RESULTS_OFFSET: u64 = 0x4000;

/// The most operations one probe may carry.
pub const MAX_OPS: usize = 1024;
/// The most vCPUs the bare layout has room for (IDT and stack pages below 1 MiB).
pub const MAX_VCPUS: u8 = 64;
const OP_SIZE: u64 = 16;
const RESULT_HEADER: u64 = 8;
const RESULT_SIZE: u64 = 16;
const MAGIC: u32 = 0x524d_564b; // "KVMR"

/// One MSR operation of the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum MsrOp {
    /// `rdmsr`.
    Read {
        /// The MSR.
        index: MsrIndex,
    },
    /// `wrmsr`.
    Write {
        /// The MSR.
        index: MsrIndex,
        /// The value written.
        value: u64,
    },
    /// Load an empty IDT and execute `ud2`: the vCPU triple-faults (tests SHUTDOWN handling).
    TripleFault,
    /// Spin forever (tests the deadline).
    Spin,
}

impl MsrOp {
    /// The MSR the operation touches, if any.
    pub fn index(&self) -> Option<MsrIndex> {
        match self {
            Self::Read { index } | Self::Write { index, .. } => Some(*index),
            Self::TripleFault | Self::Spin => None,
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
    /// the guest did not write the results header
    #[error("vCPU {cpu}: results area has magic {found:#010x}, not {MAGIC:#010x}: the guest never started or overwrote it")]
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

/// Writes the long-mode tables (see [`crate::vmm::boot`]) and the probe code.
pub fn load_image(mem: &GuestMemoryMmap) -> Result<(), String> {
    if PROBE_IMAGE.len() > CODE_MAX {
        return Err("probe image too large".into());
    }
    boot::write_tables(mem).map_err(mem_err)?;
    mem.write_slice(PROBE_IMAGE, GuestAddress(CODE_ADDR))
        .map_err(mem_err)
}

/// Writes vCPU `cpu`'s operation list and clears its results header.
pub fn load_ops(mem: &GuestMemoryMmap, cpu: u8, ops: &[MsrOp]) -> Result<(), String> {
    if ops.len() > MAX_OPS {
        return Err(format!(
            "{} operations exceed the bare guest's {MAX_OPS}",
            ops.len()
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        let (kind, index, value) = match op {
            MsrOp::Read { index } => (1u32, index.raw(), 0u64),
            MsrOp::Write { index, value } => (2u32, index.raw(), *value),
            MsrOp::TripleFault => (3, 0, 0),
            MsrOp::Spin => (4, 0, 0),
        };
        let at = ops_addr(cpu) + OP_SIZE * i as u64;
        mem.write_obj(kind, GuestAddress(at)).map_err(mem_err)?;
        mem.write_obj(index, GuestAddress(at + 4))
            .map_err(mem_err)?;
        mem.write_obj(value, GuestAddress(at + 8))
            .map_err(mem_err)?;
    }
    mem.write_obj(0u64, GuestAddress(results_addr(cpu)))
        .map_err(mem_err)
}

fn ops_addr(cpu: u8) -> u64 {
    CPU_BASE + u64::from(cpu) * CPU_STRIDE + OPS_OFFSET
}

fn results_addr(cpu: u8) -> u64 {
    CPU_BASE + u64::from(cpu) * CPU_STRIDE + RESULTS_OFFSET
}

/// The registers vCPU `cpu` starts with.
pub fn regs(cpu: u8, nops: usize) -> kvm_regs {
    kvm_regs {
        rip: CODE_ADDR,
        rsp: STACK_BASE + PAGE * (u64::from(cpu) + 1),
        rflags: 0x2,
        rdi: ops_addr(cpu),
        rsi: results_addr(cpu),
        rdx: nops as u64,
        r8: IDT_BASE + PAGE * u64::from(cpu),
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
/// benchmarks only).
pub fn read_timed_results(
    mem: &GuestMemoryMmap,
    cpu: u8,
    ops: &[MsrOp],
) -> Result<Vec<(OpResult, u32)>, ResultsError> {
    let unreadable = |e: vm_memory::GuestMemoryError| ResultsError::Unreadable {
        cpu,
        reason: e.to_string(),
    };
    let base = results_addr(cpu);
    let magic: u32 = mem.read_obj(GuestAddress(base)).map_err(unreadable)?;
    if magic != MAGIC {
        return Err(ResultsError::BadMagic { cpu, found: magic });
    }
    let done: u32 = mem.read_obj(GuestAddress(base + 4)).map_err(unreadable)?;
    if done as usize > ops.len() {
        return Err(ResultsError::TooMany {
            cpu,
            claimed: done,
            ops: ops.len(),
        });
    }
    let mut out = Vec::with_capacity(done as usize);
    for (i, op) in ops.iter().enumerate().take(done as usize) {
        let rec = base + RESULT_HEADER + RESULT_SIZE * i as u64;
        let status: u32 = mem.read_obj(GuestAddress(rec)).map_err(unreadable)?;
        let value: u64 = mem.read_obj(GuestAddress(rec + 8)).map_err(unreadable)?;
        let cycles: u32 = mem.read_obj(GuestAddress(rec + 4)).map_err(unreadable)?;
        out.push(match (status, op) {
            (1, MsrOp::Read { .. }) => (OpResult::Read(value), cycles),
            (1, MsrOp::Write { .. }) => (OpResult::Written, cycles),
            (2, _) => (OpResult::Fault, cycles),
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
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), memory_size(2))]).unwrap()
    }

    #[test]
    fn image_is_position_independent_code_of_sane_size() {
        assert!(PROBE_IMAGE.len() > 64 && PROBE_IMAGE.len() < 1024);
        assert_eq!(memory_size(1), 2 << 20);
        assert!(memory_size(MAX_VCPUS) >= (CPU_BASE + 64 * CPU_STRIDE) as usize);
        assert!(RESULTS_OFFSET >= OP_SIZE * MAX_OPS as u64);
        assert!(CPU_STRIDE - RESULTS_OFFSET >= RESULT_HEADER + RESULT_SIZE * MAX_OPS as u64);
    }

    #[test]
    fn hostile_results_are_rejected() {
        let m = mem();
        let ops = [MsrOp::Read {
            index: MsrIndex::new(0x10),
        }];
        load_image(&m).unwrap();
        load_ops(&m, 0, &ops).unwrap();
        assert!(matches!(
            read_results(&m, 0, &ops),
            Err(ResultsError::BadMagic { .. })
        ));
        poke_results(&m, 0, 0, &MAGIC.to_le_bytes()).unwrap();
        poke_results(&m, 0, 4, &7u32.to_le_bytes()).unwrap();
        assert!(matches!(
            read_results(&m, 0, &ops),
            Err(ResultsError::TooMany { claimed: 7, .. })
        ));
        poke_results(&m, 0, 4, &1u32.to_le_bytes()).unwrap();
        poke_results(&m, 0, 8, &9u32.to_le_bytes()).unwrap();
        assert!(matches!(
            read_results(&m, 0, &ops),
            Err(ResultsError::BadStatus { status: 9, .. })
        ));
        poke_results(&m, 0, 8, &1u32.to_le_bytes()).unwrap();
        poke_results(&m, 0, 16, &42u64.to_le_bytes()).unwrap();
        assert_eq!(read_results(&m, 0, &ops).unwrap(), vec![OpResult::Read(42)]);
        // A vCPU beyond guest memory is unreadable, not a panic.
        assert!(matches!(
            read_results(&m, 200, &ops),
            Err(ResultsError::Unreadable { .. })
        ));
        let too_many = vec![ops[0]; MAX_OPS + 1];
        assert!(load_ops(&m, 0, &too_many).is_err());
    }
}
