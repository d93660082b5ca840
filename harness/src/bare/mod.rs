//! The bare probe guest: built into kvmcap, started on every vCPU directly in 64-bit long mode.
//!
//! The VMM writes page tables, a GDT and the probe's runtime (`probe.S`: entry, #GP handler)
//! into guest memory, compiles each vCPU's MSR operations into straight-line guest code
//! ([`compile_ops`]), sets each vCPU's registers for long mode, and reads each vCPU's results
//! area when the guest reports done on [`DONE_PORT`]. The results area is guest-written memory:
//! it is parsed with bounds checks and nothing in it is trusted.
//!
//! Why compiled code rather than an interpreter loop: on a host that emulates guest
//! instructions (this project's CI host runs KVM on a paravirtual backend), every guest
//! instruction costs about a microsecond, and an interpreter spent ~30 of them per MSR. The
//! compiled form is what a selftest writes by hand: `mov ecx, index; rdmsr` and the stores of
//! the result, five instructions per read.

use kvm_bindings::kvm_regs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::vmm::boot;
use msr_probe::{Fault, MsrIndex, Reading};

/// The probe's runtime, assembled from `probe.S` at build time.
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
const MAX_OP_CODE: u64 = 72;
/// The compiled code's epilogue (done count, done port, halt loop), in bytes.
const EPILOGUE_CODE: u64 = 24;
const RESULT_HEADER: u64 = 8;
const RESULT_SIZE: u64 = 16;
const MAGIC: u32 = 0x524d_564b; // "KVMR"
const STATUS_OK: u32 = 1;
const STATUS_GP: u32 = 2;

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

/// x86-64 encodings the compiler emits (checked by disassembly in the tests).
mod enc {
    pub const LFENCE: [u8; 3] = [0x0f, 0xae, 0xe8];
    pub const RDTSC: [u8; 2] = [0x0f, 0x31];
    pub const RDMSR: [u8; 2] = [0x0f, 0x32];
    pub const WRMSR: [u8; 2] = [0x0f, 0x30];
    /// `mov r11d, eax`
    pub const MOV_R11D_EAX: [u8; 3] = [0x41, 0x89, 0xc3];
    /// `mov r8d, eax`
    pub const MOV_R8D_EAX: [u8; 3] = [0x41, 0x89, 0xc0];
    /// `mov r9d, edx`
    pub const MOV_R9D_EDX: [u8; 3] = [0x41, 0x89, 0xd1];
    /// `sub eax, r11d`
    pub const SUB_EAX_R11D: [u8; 3] = [0x44, 0x29, 0xd8];
    /// `mov ecx, imm32` / `mov eax, imm32` / `mov edx, imm32`
    pub const MOV_ECX_IMM: u8 = 0xb9;
    pub const MOV_EAX_IMM: u8 = 0xb8;
    pub const MOV_EDX_IMM: u8 = 0xba;
    /// `movl $imm32, disp32(%rbx)`: the status store `probe.S`'s #GP handler looks for.
    pub const MOVL_IMM_RBX: [u8; 2] = [0xc7, 0x83];
    /// `mov %eax, disp32(%rbx)` / `mov %edx, disp32(%rbx)`
    pub const MOV_EAX_RBX: [u8; 2] = [0x89, 0x83];
    pub const MOV_EDX_RBX: [u8; 2] = [0x89, 0x93];
    /// `mov %r8d, disp32(%rbx)` / `mov %r9d, disp32(%rbx)`
    pub const MOV_R8D_RBX: [u8; 3] = [0x44, 0x89, 0x83];
    pub const MOV_R9D_RBX: [u8; 3] = [0x44, 0x89, 0x8b];
    /// `lidt 2(%rip)` (the 10 zero bytes after the following `ud2`), then `ud2`.
    pub const LIDT_NULL_UD2: [u8; 9] = [0x0f, 0x01, 0x1d, 0x02, 0x00, 0x00, 0x00, 0x0f, 0x0b];
    /// `jmp .`
    pub const SPIN: [u8; 2] = [0xeb, 0xfe];
    /// `mov dx, imm16` (operand-size prefix)
    pub const MOV_DX_IMM: [u8; 2] = [0x66, 0xba];
    /// `out dx, eax`, then `1: hlt; jmp 1b`
    pub const OUT_HLT_LOOP: [u8; 4] = [0xef, 0xf4, 0xeb, 0xfd];
}

struct Emitter(Vec<u8>);

impl Emitter {
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn imm(&mut self, op: u8, v: u32) {
        self.0.push(op);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A store to `disp(%rbx)`: opcode bytes, disp32.
    fn store(&mut self, op: &[u8], disp: u32) {
        self.bytes(op);
        self.0.extend_from_slice(&disp.to_le_bytes());
    }
    /// `movl $imm, disp(%rbx)`
    fn movl(&mut self, disp: u32, imm: u32) {
        self.store(&enc::MOVL_IMM_RBX, disp);
        self.0.extend_from_slice(&imm.to_le_bytes());
    }
}

/// Compiles one vCPU's operations into straight-line long-mode code. `%rbx` is the results
/// area; each rdmsr/wrmsr is followed by the store of its status (the contract with
/// `probe.S`'s #GP handler, which resumes after that store with eax = edx = 0). `timed`
/// brackets each access with `lfence; rdtsc` and stores the ticks (#GP delivery included).
/// The code ends by writing the done count to the header and to [`DONE_PORT`].
pub fn compile_ops(ops: &[MsrOp], timed: bool) -> Vec<u8> {
    let mut e = Emitter(Vec::with_capacity(ops.len() * 32 + EPILOGUE_CODE as usize));
    for (i, op) in ops.iter().enumerate() {
        let record = (RESULT_HEADER + RESULT_SIZE * i as u64) as u32;
        if timed && op.index().is_some() {
            e.bytes(&enc::LFENCE);
            e.bytes(&enc::RDTSC);
            e.bytes(&enc::MOV_R11D_EAX);
        }
        let insn = match op {
            MsrOp::Read { index } => {
                e.imm(enc::MOV_ECX_IMM, index.raw());
                Some(enc::RDMSR)
            }
            MsrOp::Write { index, value } => {
                e.imm(enc::MOV_ECX_IMM, index.raw());
                e.imm(enc::MOV_EAX_IMM, *value as u32);
                e.imm(enc::MOV_EDX_IMM, (*value >> 32) as u32);
                Some(enc::WRMSR)
            }
            MsrOp::TripleFault => {
                e.bytes(&enc::LIDT_NULL_UD2);
                e.bytes(&[0; 10]);
                None
            }
            MsrOp::Spin => {
                e.bytes(&enc::SPIN);
                None
            }
        };
        let Some(insn) = insn else { continue };
        e.bytes(&insn);
        e.movl(record, STATUS_OK);
        if timed {
            e.bytes(&enc::MOV_R8D_EAX);
            e.bytes(&enc::MOV_R9D_EDX);
            e.bytes(&enc::LFENCE);
            e.bytes(&enc::RDTSC);
            e.bytes(&enc::SUB_EAX_R11D);
            e.store(&enc::MOV_EAX_RBX, record + 4);
            e.store(&enc::MOV_R8D_RBX, record + 8);
            e.store(&enc::MOV_R9D_RBX, record + 12);
        } else {
            e.store(&enc::MOV_EAX_RBX, record + 8);
            e.store(&enc::MOV_EDX_RBX, record + 12);
        }
    }
    let n = ops.len() as u32;
    e.movl(4, n);
    e.imm(enc::MOV_EAX_IMM, n);
    e.bytes(&enc::MOV_DX_IMM);
    e.bytes(&DONE_PORT.to_le_bytes());
    e.bytes(&enc::OUT_HLT_LOOP);
    e.0
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
    let clear = vec![0u8; (RESULT_HEADER + RESULT_SIZE * ops.len() as u64) as usize];
    mem.write_slice(&clear, GuestAddress(results_addr(cpu)))
        .map_err(mem_err)
}

fn ops_addr(cpu: u8) -> u64 {
    CPU_BASE + u64::from(cpu) * CPU_STRIDE + OPS_OFFSET
}

fn results_addr(cpu: u8) -> u64 {
    CPU_BASE + u64::from(cpu) * CPU_STRIDE + RESULTS_OFFSET
}

/// The registers vCPU `cpu` starts with.
pub fn regs(cpu: u8) -> kvm_regs {
    kvm_regs {
        rip: CODE_ADDR,
        rsp: STACK_BASE + PAGE * (u64::from(cpu) + 1),
        rflags: 0x2,
        rdi: ops_addr(cpu),
        rsi: results_addr(cpu),
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
/// benchmarks only; 0 unless the operations were compiled timed). The completed operations
/// are the records before the first one whose status is still 0 (not reached); the header's
/// done count is the guest's claim and may not exceed the operations.
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
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let rec = base + RESULT_HEADER + RESULT_SIZE * i as u64;
        let status: u32 = mem.read_obj(GuestAddress(rec)).map_err(unreadable)?;
        let value: u64 = mem.read_obj(GuestAddress(rec + 8)).map_err(unreadable)?;
        let cycles: u32 = mem.read_obj(GuestAddress(rec + 4)).map_err(unreadable)?;
        out.push(match (status, op) {
            (0, _) => break,
            (STATUS_OK, MsrOp::Read { .. }) => (OpResult::Read(value), cycles),
            (STATUS_OK, MsrOp::Write { .. }) => (OpResult::Written, cycles),
            (STATUS_GP, MsrOp::Read { .. } | MsrOp::Write { .. }) => (OpResult::Fault, cycles),
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
        assert!(RESULTS_OFFSET - OPS_OFFSET >= MAX_OP_CODE * MAX_OPS as u64 + EPILOGUE_CODE);
        assert!(CPU_STRIDE - RESULTS_OFFSET >= RESULT_HEADER + RESULT_SIZE * MAX_OPS as u64);
    }

    /// The worst case (every operation a timed wrmsr) fits the layout's bound.
    #[test]
    fn compiled_code_stays_within_its_bounds() {
        let w = MsrOp::Write {
            index: MsrIndex::new(0xc000_0080),
            value: u64::MAX,
        };
        assert_eq!(
            compile_ops(&[w], true).len() as u64,
            MAX_OP_CODE - 3 + EPILOGUE_CODE - 1
        );
        let all = vec![w; MAX_OPS];
        assert!(
            compile_ops(&all, true).len() as u64 <= MAX_OP_CODE * MAX_OPS as u64 + EPILOGUE_CODE
        );
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), memory_size(1))]).unwrap();
        load_ops(&m, 0, &all, true).unwrap();
    }

    /// What objdump makes of compiled code (skipped when binutils' objdump is missing;
    /// the build needs binutils, so it is there wherever kvmcap builds).
    fn disassemble(code: &[u8]) -> Option<Vec<String>> {
        let dir = tempfile::tempdir().ok()?;
        let bin = dir.path().join("ops.bin");
        std::fs::write(&bin, code).ok()?;
        let out = std::process::Command::new("objdump")
            .args(["-D", "-b", "binary", "-m", "i386:x86-64", "-M", "att"])
            .arg(&bin)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        Some(
            text.lines()
                .filter_map(|l| {
                    let mut parts = l.splitn(3, '\t');
                    let (addr, _hex, insn) = (parts.next()?, parts.next()?, parts.next()?);
                    addr.trim()
                        .ends_with(':')
                        .then(|| insn.split_whitespace().collect::<Vec<_>>().join(" "))
                })
                .collect(),
        )
    }

    #[test]
    fn compiled_code_disassembles_to_the_documented_sequence() {
        let ops = [
            MsrOp::Read {
                index: MsrIndex::new(0x4f),
            },
            MsrOp::Write {
                index: MsrIndex::new(0x4e),
                value: 0x1_0000_0002,
            },
        ];
        let Some(plain) = disassemble(&compile_ops(&ops, false)) else {
            eprintln!("skipped: objdump not found");
            return;
        };
        assert_eq!(
            plain,
            [
                "mov $0x4f,%ecx",
                "rdmsr",
                "movl $0x1,0x8(%rbx)",
                "mov %eax,0x10(%rbx)",
                "mov %edx,0x14(%rbx)",
                "mov $0x4e,%ecx",
                "mov $0x2,%eax",
                "mov $0x1,%edx",
                "wrmsr",
                "movl $0x1,0x18(%rbx)",
                "mov %eax,0x20(%rbx)",
                "mov %edx,0x24(%rbx)",
                "movl $0x2,0x4(%rbx)",
                "mov $0x2,%eax",
                "mov $0x510,%dx",
                "out %eax,(%dx)",
                "hlt",
                "jmp 0x58", // the hlt at 0x58
            ]
        );
        let timed = disassemble(&compile_ops(&ops[..1], true)).unwrap_or_default();
        assert_eq!(
            timed[..15],
            [
                "lfence",
                "rdtsc",
                "mov %eax,%r11d",
                "mov $0x4f,%ecx",
                "rdmsr",
                "movl $0x1,0x8(%rbx)",
                "mov %eax,%r8d",
                "mov %edx,%r9d",
                "lfence",
                "rdtsc",
                "sub %r11d,%eax",
                "mov %eax,0xc(%rbx)",
                "mov %r8d,0x10(%rbx)",
                "mov %r9d,0x14(%rbx)",
                "movl $0x1,0x4(%rbx)",
            ]
        );
        let fault = disassemble(&compile_ops(&[MsrOp::TripleFault, MsrOp::Spin], false))
            .unwrap_or_default();
        assert_eq!(fault[..2], ["lidt 0x2(%rip) # 0x9", "ud2"]);
    }

    #[test]
    fn hostile_results_are_rejected() {
        let m = mem();
        let ops = [MsrOp::Read {
            index: MsrIndex::new(0x10),
        }];
        load_image(&m).unwrap();
        load_ops(&m, 0, &ops, false).unwrap();
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
        assert!(load_ops(&m, 0, &too_many, false).is_err());
    }
}
