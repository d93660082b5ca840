/*
 * The bare probe's multiboot entry, so that another VMM runs the same probe kvmcap runs:
 * `qemu-system-x86_64 -accel kvm -kernel IMAGE`, as kvm-unit-tests are run (see bare/image.rs,
 * which builds the image around this code and fills in the slots below). The multiboot
 * loader enters here in 32-bit protected mode without paging; this code does what kvmcap's
 * VMM does through KVM_SET_SREGS/KVM_SET_REGS: loads the GDT, enables PAE, long mode and
 * paging with the image's identity-mapped page tables, loads the IDT, sets %rsp and %rbx
 * (the results area) and jumps to the compiled operations.
 *
 * Layout (offsets from the image start; image.rs writes the slots):
 *   0x00  multiboot header (a.out kludge: load and entry addresses)
 *   0x20  GDTR (limit, 32-bit base)
 *   0x28  IDTR (limit, 64-bit base)
 *   0x38  page-table root (32-bit)
 *   0x40  stack top, 0x48 results area, 0x50 compiled operations (64-bit each)
 *   0x60  entry
 */
	.text
	.code32
	.globl kvmcap_multiboot_start
kvmcap_multiboot_start:
	.org	0x60
entry:
	cli
	call	1f
1:	pop	%ebp				/* %ebp = the address of 1b */
	lgdt	0x20 - (1b - kvmcap_multiboot_start)(%ebp)
	mov	%cr4, %eax
	or	$0x20, %eax			/* PAE */
	mov	%eax, %cr4
	mov	0x38 - (1b - kvmcap_multiboot_start)(%ebp), %eax
	mov	%eax, %cr3
	mov	$0xc0000080, %ecx		/* EFER */
	rdmsr
	or	$0x100, %eax			/* LME */
	wrmsr
	mov	%cr0, %eax
	or	$0x80000001, %eax		/* PG, PE */
	mov	%eax, %cr0
	lea	long_mode - 1b(%ebp), %eax
	push	$0x10				/* the 64-bit code segment, as in vmm/boot.rs */
	push	%eax
	lret

	.code64
long_mode:
	mov	$0x18, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	mov	%ebp, %ebp			/* zero-extend: upper halves are undefined */
	lidt	0x28 - (1b - kvmcap_multiboot_start)(%rbp)
	mov	0x40 - (1b - kvmcap_multiboot_start)(%rbp), %rsp
	mov	0x48 - (1b - kvmcap_multiboot_start)(%rbp), %rbx
	cld
	jmp	*0x50 - (1b - kvmcap_multiboot_start)(%rbp)
