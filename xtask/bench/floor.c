// SPDX-License-Identifier: Apache-2.0 OR MIT
/*
 * The floor for kvmcap's bare probe benchmark: what a KVM selftest does with raw ioctls.
 * Create a VM with 2 MiB of memory and NR_VCPUS vCPUs, run a real-mode guest on each that
 * executes `rdmsr` of every MSR given (a #GP is caught by a real-mode IVT handler that skips
 * the instruction) and then `hlt`, one vCPU after the other on one thread, and exit. No
 * long mode, no MSR filter, no threads, no report: the minimum any harness must pay to get
 * the same reads out of a guest.
 *
 * Usage: floor NR_VCPUS MSR...   (MSR in hex)
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MEM_SIZE (2 << 20)

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	int nr_vcpus = argc > 1 ? atoi(argv[1]) : 2;
	int kvm, vm, run_size, i, cpu;
	unsigned char *mem, *p;

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
		.userspace_addr = (unsigned long)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	/* #GP handler at 0x800: push bp; mov bp,sp; add word [bp+2],2; pop bp; iret */
	static const unsigned char gp[] = { 0x55, 0x89, 0xe5, 0x83, 0x46, 0x02, 0x02, 0x5d, 0xcf };
	memcpy(mem + 0x800, gp, sizeof(gp));
	mem[13 * 4] = 0x00; mem[13 * 4 + 1] = 0x08; /* IVT[13] = 0000:0800 */
	mem[13 * 4 + 2] = 0; mem[13 * 4 + 3] = 0;
	/* Guest at 0x1000: for each MSR, mov ecx, imm32; rdmsr; then hlt. */
	p = mem + 0x1000;
	for (i = 2; i < argc; i++) {
		unsigned long idx = strtoul(argv[i], NULL, 16);

		*p++ = 0x66; *p++ = 0xb9; /* mov ecx, imm32 */
		*p++ = idx; *p++ = idx >> 8; *p++ = idx >> 16; *p++ = idx >> 24;
		*p++ = 0x0f; *p++ = 0x32; /* rdmsr */
	}
	*p++ = 0xf4; /* hlt */
	run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	for (cpu = 0; cpu < nr_vcpus; cpu++) {
		int vcpu = ioctl(vm, KVM_CREATE_VCPU, cpu);
		struct kvm_run *run;
		struct kvm_sregs sregs;
		struct kvm_regs regs;

		if (vcpu < 0)
			die("KVM_CREATE_VCPU");
		run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
		if (run == MAP_FAILED)
			die("mmap kvm_run");
		if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
			die("KVM_GET_SREGS");
		sregs.cs.base = 0;
		sregs.cs.selector = 0;
		sregs.ss.base = 0;
		sregs.ss.selector = 0;
		if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
			die("KVM_SET_SREGS");
		memset(&regs, 0, sizeof(regs));
		regs.rip = 0x1000;
		regs.rsp = 0x8000;
		regs.rflags = 0x2;
		if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
			die("KVM_SET_REGS");
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason != KVM_EXIT_HLT) {
			fprintf(stderr, "floor: vCPU %d: exit %u, not HLT\n", cpu, run->exit_reason);
			return 1;
		}
	}
	return 0;
}
