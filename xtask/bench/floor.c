// SPDX-License-Identifier: Apache-2.0 OR MIT
/*
 * The floor for kvmcap's bare probe benchmark: what a KVM selftest does with raw ioctls.
 * Create a VM with 2 MiB of memory and NR_VCPUS vCPUs, run a real-mode guest on each that
 * executes `rdmsr` of IA32_TIME_STAMP_COUNTER NR_READS times and then `hlt`, one vCPU after
 * the other on one thread, and exit. No MSR filter, no threads, no report: the minimum any
 * harness must pay to get an answer from a guest.
 *
 * Usage: floor NR_VCPUS NR_READS
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
	int nr_reads = argc > 2 ? atoi(argv[2]) : 1;
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
	/* Guest at 0x1000: nr_reads x (mov ecx, 0x10; rdmsr), then hlt. */
	p = mem + 0x1000;
	for (i = 0; i < nr_reads; i++) {
		*p++ = 0x66; *p++ = 0xb9; /* mov ecx, imm32 */
		*p++ = 0x10; *p++ = 0; *p++ = 0; *p++ = 0;
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
		if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
			die("KVM_SET_SREGS");
		memset(&regs, 0, sizeof(regs));
		regs.rip = 0x1000;
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
