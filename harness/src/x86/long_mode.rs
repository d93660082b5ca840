//! Long-mode entry state shared by the bare guest and Linux's 64-bit boot protocol: identity
//! page tables for the first 1 GiB, a flat GDT with the boot protocol's selectors, and the
//! matching segment and control registers.

use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use super::layout::{GDT_ADDR, TABLES_END};
use super::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// `__BOOT_CS` of Linux's 64-bit boot protocol (Documentation/arch/x86/boot.rst).
pub const CODE_SELECTOR: u16 = 0x10;
/// `__BOOT_DS`.
pub const DATA_SELECTOR: u16 = 0x18;

/// GDT: null, null, 64-bit code (0x10), flat data (0x18).
pub const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// Writes the GDT and page tables identity-mapping the first 1 GiB with 2 MiB pages.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | 0x3, GuestAddress(PDPT_ADDR))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + 8 * i))?;
    }
    Ok(())
}

/// Long-mode segment and control registers on top of the vCPU's current `sregs` (which keep
/// KVM's APIC base and the like).
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: DATA_SELECTOR,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr3 = PML4_ADDR;
    s.cr4 = 1 << 5; // PAE
    s.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
    s.efer = 0x500; // LMA | LME
    s
}
