/*
 * The bare probe guest's exception handlers. Everything else the VMM does from outside: it
 * compiles each vCPU's operations into straight-line code (bare/mod.rs, `compile_ops`), as a
 * KVM selftest would write them by hand, writes the IDT that points here, and starts each
 * vCPU in long mode on its compiled code with %rbx = its results area. Every guest
 * instruction counts: on a host that emulates guest code (this project's CI host runs KVM on
 * a paravirtual backend) each one costs about a microsecond.
 *
 * Fixed layout (the VMM's IDT points at these offsets, see bare/mod.rs):
 *   0x000  #GP handler (vector 13)
 *   0x100  one 16-byte stub per other vector 0..31: report the vector and halt
 *
 * The contract with the compiled code: %rbx holds the results area throughout, and every
 * rdmsr/wrmsr (2 bytes) is immediately followed by `shl $32,%rdx; or %rdx,%rax` (7 bytes)
 * and `mov %rax, disp32(%rbx)` (48 89 83 disp32), the store of its record's value, 8 bytes
 * into the record. On a #GP there, the handler reads that displacement, writes status 2 into
 * the record's first word and resumes after the store. Nothing else in compiled code can
 * raise #GP (the compiler's tests disassemble it); any other exception reaches its stub,
 * which writes the vector to the fault port.
 */
	.set FAULT_PORT, 0x0511
	.set STATUS_GP, 2
	.set INSN_LEN, 2			/* rdmsr / wrmsr */
	.set SHL_OR_LEN, 7
	.set STORE_DISP, 3			/* 48 89 83, then disp32 */
	.set STORE_LEN, 7
	.set VALUE_IN_RECORD, 8

	.text
	.code64
	.globl kvmcap_probe_start
kvmcap_probe_start:
	/* #GP handler. Stack: error code, RIP, CS, RFLAGS, RSP, SS. */
gp_handler:
	add	$8, %rsp			/* drop the error code */
	mov	(%rsp), %rax			/* the faulting rdmsr/wrmsr */
	movslq	INSN_LEN + SHL_OR_LEN + STORE_DISP(%rax), %rax	/* its value store's disp */
	movl	$STATUS_GP, -VALUE_IN_RECORD(%rbx,%rax)
	addq	$(INSN_LEN + SHL_OR_LEN + STORE_LEN), (%rsp)	/* resume after the store */
	iretq

	.org	0x40
report:						/* %eax = the vector */
	mov	$FAULT_PORT, %dx
	out	%eax, %dx
1:
	hlt
	jmp	1b

	.org	0x100
	.irp	v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.org	0x100 + 16 * \v
	mov	$\v, %eax
	jmp	report
	.endr
	.org	0x300
