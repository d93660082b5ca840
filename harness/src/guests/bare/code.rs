//! The compiler from MSR operations to straight-line guest code, and the x86-64 encodings it
//! emits (checked by disassembly in the tests).

use super::*;

/// x86-64 encodings the compiler emits (checked by disassembly in the tests).
pub(super) mod enc {
    pub const LFENCE: [u8; 3] = [0x0f, 0xae, 0xe8];
    pub const RDTSC: [u8; 2] = [0x0f, 0x31];
    pub const RDMSR: [u8; 2] = [0x0f, 0x32];
    pub const WRMSR: [u8; 2] = [0x0f, 0x30];
    /// `mov %eax, %r11d`
    pub const MOV_R11D_EAX: [u8; 3] = [0x41, 0x89, 0xc3];
    /// `sub %r11d, %eax`
    pub const SUB_EAX_R11D: [u8; 3] = [0x44, 0x29, 0xd8];
    /// `shl $32, %rdx; or %rdx, %rax`: edx:eax as one 64-bit value in rax.
    pub const EDX_EAX_TO_RAX: [u8; 7] = [0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0];
    /// `mov $imm32, %ecx` / `%eax` / `%edx`
    pub const MOV_ECX_IMM: u8 = 0xb9;
    pub const MOV_EAX_IMM: u8 = 0xb8;
    pub const MOV_EDX_IMM: u8 = 0xba;
    /// `mov %rax, disp32(%rbx)`: the value store `probe.S`'s #GP handler looks for.
    pub const MOV_RAX_RBX: [u8; 3] = [0x48, 0x89, 0x83];
    /// `mov %eax, disp32(%rbx)`
    pub const MOV_EAX_RBX: [u8; 2] = [0x89, 0x83];
    /// `movl $imm32, disp32(%rbx)`
    pub const MOVL_IMM_RBX: [u8; 2] = [0xc7, 0x83];
    /// `lidt 2(%rip)` (the 10 zero bytes after the following `ud2`), then `ud2`.
    pub const LIDT_NULL_UD2: [u8; 9] = [0x0f, 0x01, 0x1d, 0x02, 0x00, 0x00, 0x00, 0x0f, 0x0b];
    /// `jmp .`
    pub const SPIN: [u8; 2] = [0xeb, 0xfe];
    /// `mov $imm16, %dx` (operand-size prefix)
    pub const MOV_DX_IMM: [u8; 2] = [0x66, 0xba];
    /// `mov %rbx, %rsi`
    pub const MOV_RSI_RBX: [u8; 3] = [0x48, 0x89, 0xde];
    /// `rep outsb (%rsi), (%dx)`
    pub const REP_OUTSB: [u8; 2] = [0xf3, 0x6e];
    /// `xor %eax, %eax`
    pub const XOR_EAX_EAX: [u8; 2] = [0x31, 0xc0];
    /// `out %eax, (%dx)`
    pub const OUT_DX_EAX: [u8; 1] = [0xef];
    /// `out %eax, (%dx)`, then `1: hlt; jmp 1b`
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

/// Compiles one vCPU's operations into straight-line long-mode code, what a selftest writes
/// by hand. `%rbx` is the results area. Each rdmsr/wrmsr is followed by exactly
/// `shl $32,%rdx; or %rdx,%rax; mov %rax,VALUE(%rbx)`, the store of its record's value: the
/// contract with `probe.S`'s #GP handler, which reads VALUE from that store, writes status 2
/// (#GP) in the record before it and resumes after the store. A completed access leaves its
/// status 0; the header's done count says how many operations completed, written before a
/// triple fault or spin and at the end. `timed` brackets each access with `lfence; rdtsc` and
/// stores the ticks (the value store and, on #GP, its delivery included). The code ends by
/// writing the done count to [`DONE_PORT`]. One store per access: on a host that emulates
/// guest code a store costs several times a register instruction.
pub fn compile_ops(ops: &[MsrOp], timed: bool) -> Vec<u8> {
    compile_ops_with(ops, timed, Epilogue::DonePort)
}

/// How compiled operations end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// Write the done count to [`DONE_PORT`] and halt: kvmcap's VMM reads guest memory.
    DonePort,
    /// Write the results area (`len` bytes) to the debug console port 0xe9, then 0 to the
    /// isa-debug-exit port 0xf4: another VMM (QEMU) prints it and exits.
    DumpAndExit {
        /// The results area's size.
        len: u32,
    },
}

/// [`compile_ops`] with a chosen ending.
pub fn compile_ops_with(ops: &[MsrOp], timed: bool, epilogue: Epilogue) -> Vec<u8> {
    let mut e = Emitter(Vec::with_capacity(ops.len() * 24 + EPILOGUE_CODE as usize));
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
                enc::RDMSR
            }
            MsrOp::Write { index, value } => {
                e.imm(enc::MOV_ECX_IMM, index.raw());
                e.imm(enc::MOV_EAX_IMM, *value as u32);
                e.imm(enc::MOV_EDX_IMM, (*value >> 32) as u32);
                enc::WRMSR
            }
            MsrOp::TripleFault => {
                e.movl(4, i as u32);
                e.bytes(&enc::LIDT_NULL_UD2);
                e.bytes(&[0; 10]);
                continue;
            }
            MsrOp::Spin => {
                e.movl(4, i as u32);
                e.bytes(&enc::SPIN);
                continue;
            }
            MsrOp::Wait(turn) | MsrOp::Pass(turn) => {
                let port = if matches!(op, MsrOp::Wait(_)) {
                    WAIT_PORT
                } else {
                    PASS_PORT
                };
                e.imm(enc::MOV_EAX_IMM, *turn);
                e.bytes(&enc::MOV_DX_IMM);
                e.bytes(&port.to_le_bytes());
                e.bytes(&enc::OUT_DX_EAX);
                continue;
            }
        };
        e.bytes(&insn);
        e.bytes(&enc::EDX_EAX_TO_RAX);
        e.store(&enc::MOV_RAX_RBX, record + 8);
        if timed {
            e.bytes(&enc::LFENCE);
            e.bytes(&enc::RDTSC);
            e.bytes(&enc::SUB_EAX_R11D);
            e.store(&enc::MOV_EAX_RBX, record + 4);
        }
    }
    let n = ops.len() as u32;
    e.movl(4, n);
    match epilogue {
        Epilogue::DonePort => {
            e.imm(enc::MOV_EAX_IMM, n);
            e.bytes(&enc::MOV_DX_IMM);
            e.bytes(&DONE_PORT.to_le_bytes());
        }
        Epilogue::DumpAndExit { len } => {
            e.bytes(&enc::MOV_RSI_RBX);
            e.imm(enc::MOV_ECX_IMM, len);
            e.bytes(&enc::MOV_DX_IMM);
            e.bytes(&DEBUGCON_PORT.to_le_bytes());
            e.bytes(&enc::REP_OUTSB);
            e.bytes(&enc::MOV_DX_IMM);
            e.bytes(&DEBUG_EXIT_PORT.to_le_bytes());
            e.bytes(&enc::XOR_EAX_EAX);
        }
    }
    e.bytes(&enc::OUT_HLT_LOOP);
    e.0
}
