/*
 * The bare probe guest's runtime: entry, #GP handler and the unexpected-exception report.
 * The operations themselves are not interpreted here: the VMM compiles each vCPU's operation
 * list into straight-line code (see bare/mod.rs, `compile_ops`), as a KVM selftest would
 * write it by hand, because every guest instruction costs an exit's worth of time on hosts
 * that emulate guest code. kvmcap starts every vCPU here directly in long mode (the VMM
 * provides page tables, GDT and segment state).
 *
 * Entry registers (set by the VMM):
 *   rdi = this vCPU's compiled operations
 *   rsi = this vCPU's results area
 *   r8  = address of a 4 KiB page for this vCPU's IDT
 *   rsp = top of this vCPU's stack
 *
 * Results area: u32 magic 'KVMR', u32 done (written by the compiled code at its end), then one
 * 16-byte record per operation: u32 status (0 = not reached, 1 = ok, 2 = #GP), u32 cycles
 * (timed runs only), u64 value.
 *
 * The contract with the compiled code: %rbx holds the results area throughout, and every
 * rdmsr/wrmsr (2 bytes) is immediately followed by `movl $1, disp32(%rbx)`, the store of its
 * record's status. On a #GP there, the handler reads that displacement, stores status 2
 * instead, zeroes eax/edx (the value) and resumes after the status store. Any other exception
 * arrives as a #GP for a not-present IDT entry (error code bit 1 set), or as a #GP whose next
 * instruction is not a status store: the guest reports the vector on the fault port and halts.
 */
	.set FAULT_PORT, 0x0511
	.set MAGIC, 0x524d564b		/* "KVMR" */
	.set STATUS_GP, 2
	.set STATUS_STORE, 0x83c7		/* c7 83: movl $imm32, disp32(%rbx) */
	.set STATUS_STORE_LEN, 10

	.text
	.code64
	.globl kvmcap_probe_start
	.globl kvmcap_probe_end
kvmcap_probe_start:
	/* IDT entry 13 (#GP): interrupt gate, present, DPL 0, selector 0x10. */
	lea	gp_handler(%rip), %rax
	mov	%ax, 13*16+0(%r8)		/* offset 15:0 */
	movw	$0x10, 13*16+2(%r8)		/* __BOOT_CS, see vmm/boot.rs */
	movw	$0x8e00, 13*16+4(%r8)		/* P=1, DPL=0, type 0xe */
	shr	$16, %rax
	mov	%ax, 13*16+6(%r8)		/* offset 31:16 */
	shr	$16, %rax
	mov	%eax, 13*16+8(%r8)		/* offset 63:32 */
	movl	$0, 13*16+12(%r8)
	/* IDT descriptor on the stack: limit (256 entries), base. */
	sub	$16, %rsp
	movw	$(256*16-1), (%rsp)
	mov	%r8, 2(%rsp)
	lidt	(%rsp)
	add	$16, %rsp

	movl	$MAGIC, (%rsi)
	movl	$0, 4(%rsi)
	mov	%rsi, %rbx
	jmp	*%rdi

	/* #GP handler. Stack: error code, RIP, CS, RFLAGS, RSP, SS. */
gp_handler:
	testq	$2, (%rsp)			/* IDT bit: an exception without a handler */
	jnz	unexpected
	add	$8, %rsp			/* drop the error code */
	mov	(%rsp), %rax			/* the faulting rdmsr/wrmsr */
	cmpw	$STATUS_STORE, 2(%rax)		/* followed by its status store? */
	jne	unexpected_gp
	movslq	4(%rax), %rax			/* the store's displacement: the record */
	movl	$STATUS_GP, (%rbx,%rax)
	addq	$(2 + STATUS_STORE_LEN), (%rsp)	/* resume after the status store */
	xor	%eax, %eax
	xor	%edx, %edx
	iretq
unexpected_gp:
	mov	$13, %eax
	jmp	report
unexpected:
	mov	(%rsp), %rax
	shr	$3, %rax			/* the vector */
report:
	mov	$FAULT_PORT, %dx
	out	%eax, %dx
3:
	hlt
	jmp	3b
kvmcap_probe_end:
