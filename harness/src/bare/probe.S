/*
 * The bare probe guest: a few hundred bytes of 64-bit code that kvmcap starts on every vCPU
 * directly in long mode (the VMM provides page tables, GDT and segment state).
 *
 * Entry registers (set by the VMM):
 *   rdi = address of the operation list (shared by all vCPUs, read only)
 *   rsi = address of this vCPU's results area
 *   rdx = number of operations
 *   r8  = address of a 4 KiB page for this vCPU's IDT
 *   rsp = top of this vCPU's stack
 *
 * Operation (16 bytes):  u32 kind, u32 index, u64 value (for wrmsr). Kinds: 1 = rdmsr,
 *                        2 = wrmsr, 3 = triple fault (load an empty IDT, then ud2), 4 = spin
 *                        forever (for the VMM's SHUTDOWN and deadline paths)
 * Results area:          u32 magic 'KVMR', u32 done, then one 16-byte record per operation:
 *                        u32 status (1 = ok, 2 = #GP), u32 cycles (TSC ticks the rdmsr or
 *                        wrmsr took, #GP delivery included, measured with lfence; rdtsc),
 *                        u64 value (what rdmsr read, or what wrmsr wrote)
 *
 * A #GP on rdmsr/wrmsr is caught by the IDT's vector 13 handler, which records the fault and
 * skips the 2-byte instruction. Any other exception arrives as a #GP for a not-present IDT
 * entry (error code bit 1 set): the guest then reports it on the done port and halts.
 *
 * When every operation ran, the guest writes the count to the done port and halts.
 */
	.set DONE_PORT, 0x0510
	.set FAULT_PORT, 0x0511
	.set MAGIC, 0x524d564b	/* "KVMR" */

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
	mov	%rdx, %r12			/* count */
	xor	%r13, %r13			/* i */
	mov	%rdi, %r14			/* ops */
	lea	8(%rsi), %rbx			/* records */
next_op:
	cmp	%r12, %r13
	jae	all_done
	mov	%r13, %r9
	shl	$4, %r9
	mov	0(%r14,%r9), %r10d		/* kind */
	mov	4(%r14,%r9), %ecx		/* index */
	xor	%r15, %r15			/* fault flag, set by the #GP handler */
	cmp	$1, %r10d
	je	do_rdmsr
	cmp	$2, %r10d
	je	do_wrmsr
	cmp	$3, %r10d
	je	do_triple_fault
	cmp	$4, %r10d
	je	do_spin
	/* Unknown kind: record status 0 and stop. */
	jmp	all_done
do_triple_fault:
	sub	$16, %rsp
	movw	$0, (%rsp)
	movq	$0, 2(%rsp)
	lidt	(%rsp)
	ud2
do_spin:
	jmp	do_spin
do_rdmsr:
	lfence
	rdtsc
	mov	%eax, %r11d			/* start */
	rdmsr
	jmp	timed
do_wrmsr:
	lfence
	rdtsc
	mov	%eax, %r11d			/* start */
	mov	8(%r14,%r9), %rax
	mov	%rax, %rdx
	shr	$32, %rdx
	wrmsr
timed:
	mov	%eax, %edi			/* keep the MSR value */
	mov	%edx, %ebp
	lfence
	rdtsc
	sub	%r11d, %eax
	mov	%eax, 4(%rbx,%r9)		/* cycles */
	mov	%edi, %eax
	mov	%ebp, %edx
record:
	shl	$32, %rdx
	mov	%eax, %eax
	or	%rdx, %rax
	mov	%rax, 8(%rbx,%r9)
	movl	$1, (%rbx,%r9)
	test	%r15, %r15
	jz	1f
	movl	$2, (%rbx,%r9)
	movq	$0, 8(%rbx,%r9)
1:
	inc	%r13
	mov	%r13d, 4(%rsi)
	jmp	next_op
all_done:
	mov	$DONE_PORT, %dx
	mov	%r13d, %eax
	out	%eax, %dx
2:
	hlt
	jmp	2b

	/* #GP handler. Stack: error code, RIP, CS, RFLAGS, RSP, SS. */
gp_handler:
	testq	$2, (%rsp)			/* IDT bit: an exception without a handler */
	jnz	unexpected
	mov	$1, %r15
	addq	$2, 8(%rsp)			/* skip rdmsr/wrmsr (0f 32 / 0f 30) */
	add	$8, %rsp
	iretq
unexpected:
	mov	(%rsp), %rax
	shr	$3, %rax			/* the vector */
	mov	$FAULT_PORT, %dx
	out	%eax, %dx
3:
	hlt
	jmp	3b
kvmcap_probe_end:
