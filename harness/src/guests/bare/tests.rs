//! Tests of the bare guest's layout, code and results parsing.

use super::*;
use code::enc;

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
    assert!(compile_ops(&all, true).len() as u64 <= MAX_OP_CODE * MAX_OPS as u64 + EPILOGUE_CODE);
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
            "shl $0x20,%rdx",
            "or %rdx,%rax",
            "mov %rax,0x10(%rbx)",
            "mov $0x4e,%ecx",
            "mov $0x2,%eax",
            "mov $0x1,%edx",
            "wrmsr",
            "shl $0x20,%rdx",
            "or %rdx,%rax",
            "mov %rax,0x20(%rbx)",
            "movl $0x2,0x4(%rbx)",
            "mov $0x2,%eax",
            "mov $0x510,%dx",
            "out %eax,(%dx)",
            "hlt",
            "jmp 0x48", // the hlt
        ]
    );
    let timed = disassemble(&compile_ops(&ops[..1], true)).unwrap_or_default();
    assert_eq!(
        timed[..12],
        [
            "lfence",
            "rdtsc",
            "mov %eax,%r11d",
            "mov $0x4f,%ecx",
            "rdmsr",
            "shl $0x20,%rdx",
            "or %rdx,%rax",
            "mov %rax,0x10(%rbx)",
            "lfence",
            "rdtsc",
            "sub %r11d,%eax",
            "mov %eax,0xc(%rbx)",
        ]
    );
    let fault =
        disassemble(&compile_ops(&[MsrOp::TripleFault, MsrOp::Spin], false)).unwrap_or_default();
    assert_eq!(
        fault[..3],
        ["movl $0x0,0x4(%rbx)", "lidt 0x2(%rip) # 0x13", "ud2"]
    );
}

/// The IDT sends #GP to the handler and every other vector to its own entry code, at the offsets
/// `probe.S` fixes with `.org`.
#[test]
fn idt_points_at_the_handlers() {
    let m = mem();
    load_image(&m).unwrap();
    let gate = |v: u64| -> u64 {
        let lo: u16 = m.read_obj(GuestAddress(IDT_BASE + 16 * v)).unwrap();
        let mid: u16 = m.read_obj(GuestAddress(IDT_BASE + 16 * v + 6)).unwrap();
        let hi: u32 = m.read_obj(GuestAddress(IDT_BASE + 16 * v + 8)).unwrap();
        u64::from(lo) | u64::from(mid) << 16 | u64::from(hi) << 32
    };
    assert_eq!(gate(13), CODE_ADDR + GP_HANDLER);
    assert_eq!(gate(14), CODE_ADDR + VECTOR_STUBS + 14 * VECTOR_STUB_SIZE);
    // Each vector's entry code starts with `mov $vector, %eax` (b8 imm32).
    for v in [0u64, 6, 14, 31] {
        let at = (VECTOR_STUBS + v * VECTOR_STUB_SIZE) as usize;
        assert_eq!(PROBE_IMAGE[at], 0xb8, "vector {v}");
        assert_eq!(PROBE_IMAGE[at + 1..at + 5], (v as u32).to_le_bytes());
    }
    // The handler reads the value store's displacement where the compiler puts it.
    let handler = disassemble(&PROBE_IMAGE[..0x20]).unwrap_or_default();
    if !handler.is_empty() {
        assert_eq!(
            handler[..5],
            [
                "add $0x8,%rsp",
                "mov (%rsp),%rax",
                "movslq 0xc(%rax),%rax",
                "movl $0x2,-0x8(%rbx,%rax,1)",
                "addq $0x10,(%rsp)",
            ]
        );
    }
    let code = compile_ops(
        &[MsrOp::Read {
            index: MsrIndex::new(0x10),
        }],
        false,
    );
    assert_eq!(code[5..7], enc::RDMSR);
    assert_eq!(code[7 + 7..7 + 7 + 3], enc::MOV_RAX_RBX);
    assert_eq!(code[5 + 12..5 + 16], 16u32.to_le_bytes()); // record 0's value
    assert_eq!(code.len() - 5, 16 + EPILOGUE_CODE as usize - 1); // resumes at +16
}

#[test]
fn hostile_results_are_rejected() {
    let m = mem();
    let ops = [MsrOp::Read {
        index: MsrIndex::new(0x10),
    }];
    load_image(&m).unwrap();
    load_ops(&m, 0, &ops, false).unwrap();
    // As loaded: the VMM's header, nothing reached.
    assert_eq!(read_results(&m, 0, &ops).unwrap(), vec![]);
    poke_results(&m, 0, 0, b"evil").unwrap();
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
    poke_results(&m, 0, 8, &STATUS_GP.to_le_bytes()).unwrap();
    assert_eq!(read_results(&m, 0, &ops).unwrap(), vec![OpResult::Fault]);
    poke_results(&m, 0, 8, &STATUS_DONE.to_le_bytes()).unwrap();
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
