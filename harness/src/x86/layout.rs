//! The guest-physical layout every guest here shares, one name per address (the values of
//! Linux's x86 boot protocol, Documentation/arch/x86/boot.rst, and of Firecracker's
//! `arch/x86_64/layout.rs`). A guest's own areas above [`HIMEM_START`] are its business.

/// The GDT (four descriptors, see [`crate::x86::long_mode::GDT`]).
pub const GDT_ADDR: u64 = 0x1000;
/// The page-map level-4 table of the identity map.
pub const PML4_ADDR: u64 = 0x2000;
/// The page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0x3000;
/// The page directory (512 entries of 2 MiB: the first 1 GiB).
pub const PD_ADDR: u64 = 0x4000;
/// The end of the low area these tables use.
pub const TABLES_END: u64 = 0x5000;
/// Linux's zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// The boot stack pointer handed to a 64-bit kernel.
pub const BOOT_STACK: u64 = 0x8ff0;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The longest command line, terminator included.
pub const CMDLINE_MAX: usize = 4096;
/// The MP floating pointer and table (the extended BIOS data area).
pub const MPTABLE_START: u64 = 0x9_fc00;
/// The start of high memory, where a kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// KVM's three-page TSS area (`KVM_SET_TSS_ADDR`), just below the 4 GiB boundary's BIOS area.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// The local APIC's MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// The I/O APIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
