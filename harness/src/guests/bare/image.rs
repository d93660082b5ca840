//! The bare probe as a multiboot image, so another VMM runs exactly the probe kvmcap runs:
//! `qemu-system-x86_64 -accel kvm -M microvm -kernel IMAGE -debugcon file:DUMP
//! -device isa-debug-exit,iobase=0xf4,iosize=4`, as kvm-unit-tests are run. The image holds
//! the multiboot entry (`multiboot.S`), a GDT, page tables identity-mapping 1 GiB, the IDT and
//! exception handlers (`probe.S`), a stack, the compiled operations and their results area;
//! the operations end by writing the results area to the debug console and exiting. Only the
//! bootstrap processor runs: with N vCPUs, it runs the N vCPUs' operation lists one after the
//! other (other VMMs start application processors through INIT/SIPI, which the probe does
//! not implement).

use super::{compile_ops_with, idt, parse_results, results_len, Epilogue, MsrOp, OpResult};
use super::{ResultsError, MAGIC, PROBE_IMAGE};
use crate::x86::long_mode::GDT;

/// Where the multiboot loader puts the image (1 MiB, above the BIOS areas).
pub const IMAGE_BASE: u64 = 0x10_0000;
/// The multiboot entry, assembled from `multiboot.S`.
const ENTRY_IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/multiboot.bin"));

const ENTRY: u64 = 0x60;
const GDTR: usize = 0x20;
const IDTR: usize = 0x28;
const CR3: usize = 0x38;
const STACK_TOP: usize = 0x40;
const RESULTS: usize = 0x48;
const CODE: usize = 0x50;

const GDT_AT: u64 = 0x0800;
const PML4_AT: u64 = 0x1000;
const PDPT_AT: u64 = 0x2000;
const PD_AT: u64 = 0x3000;
const IDT_AT: u64 = 0x4000;
const HANDLERS_AT: u64 = 0x5000;
const STACK_END: u64 = 0x7000;
const CODE_AT: u64 = 0x8000;

const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// Flags: bit 16, the header's address fields are valid (a flat image, not ELF).
const MULTIBOOT_FLAGS: u32 = 1 << 16;

fn put(image: &mut Vec<u8>, at: u64, bytes: &[u8]) {
    let at = at as usize;
    if image.len() < at + bytes.len() {
        image.resize(at + bytes.len(), 0);
    }
    image[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put64(image: &mut Vec<u8>, at: usize, v: u64) {
    put(image, at as u64, &v.to_le_bytes());
}

/// Builds the image that runs `per_cpu` (one operation list per vCPU, run one after the other
/// on the bootstrap processor).
pub fn multiboot_image(per_cpu: &[Vec<MsrOp>], timed: bool) -> Vec<u8> {
    let ops: Vec<MsrOp> = per_cpu.iter().flatten().copied().collect();
    let len = results_len(ops.len());
    let code = compile_ops_with(&ops, timed, Epilogue::DumpAndExit { len: len as u32 });
    let results_at = (CODE_AT + code.len() as u64).next_multiple_of(0x1000);
    let abs = |off: u64| IMAGE_BASE + off;

    let mut image = Vec::new();
    put(&mut image, 0, ENTRY_IMAGE);
    // Multiboot header: magic, flags, checksum, header, load, load end (0: the whole file),
    // bss end (none), entry.
    for (i, v) in [
        MULTIBOOT_MAGIC,
        MULTIBOOT_FLAGS,
        0u32.wrapping_sub(MULTIBOOT_MAGIC.wrapping_add(MULTIBOOT_FLAGS)),
        abs(0) as u32,
        abs(0) as u32,
        0,
        0,
        abs(ENTRY) as u32,
    ]
    .iter()
    .enumerate()
    {
        put(&mut image, 4 * i as u64, &v.to_le_bytes());
    }
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    put(&mut image, GDT_AT, &gdt);
    let mut gdtr = ((gdt.len() - 1) as u16).to_le_bytes().to_vec();
    gdtr.extend_from_slice(&(abs(GDT_AT) as u32).to_le_bytes());
    put(&mut image, GDTR as u64, &gdtr);
    put64(&mut image, PML4_AT as usize, abs(PDPT_AT) | 0x3);
    put64(&mut image, PDPT_AT as usize, abs(PD_AT) | 0x3);
    for i in 0..512u64 {
        put64(&mut image, (PD_AT + 8 * i) as usize, (i << 21) | 0x83);
    }
    put(&mut image, CR3 as u64, &(abs(PML4_AT) as u32).to_le_bytes());
    let idt = idt(abs(HANDLERS_AT));
    put(&mut image, IDT_AT, &idt);
    let mut idtr = ((idt.len() - 1) as u16).to_le_bytes().to_vec();
    idtr.extend_from_slice(&abs(IDT_AT).to_le_bytes());
    put(&mut image, IDTR as u64, &idtr);
    put(&mut image, HANDLERS_AT, PROBE_IMAGE);
    put64(&mut image, STACK_TOP, abs(STACK_END));
    put64(&mut image, RESULTS, abs(results_at));
    put64(&mut image, CODE, abs(CODE_AT));
    put(&mut image, CODE_AT, &code);
    let mut area = vec![0u8; len];
    area[..4].copy_from_slice(&MAGIC.to_le_bytes());
    put(&mut image, results_at, &area);
    image
}

/// Reads what the image's guest wrote to the debug console: one result list per vCPU.
pub fn parse_dump(
    per_cpu: &[Vec<MsrOp>],
    dump: &[u8],
) -> Result<Vec<Vec<(OpResult, u32)>>, ResultsError> {
    let ops: Vec<MsrOp> = per_cpu.iter().flatten().copied().collect();
    let all = parse_results(0, dump, &ops)?;
    if all.len() < ops.len() {
        return Err(ResultsError::Unreadable {
            cpu: 0,
            reason: format!(
                "the guest completed {} of {} operations",
                all.len(),
                ops.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(per_cpu.len());
    let mut rest = all.as_slice();
    for list in per_cpu {
        let (mine, tail) = rest.split_at(list.len());
        out.push(mine.to_vec());
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::MsrIndex;

    #[test]
    fn header_and_slots() {
        let ops = vec![vec![MsrOp::Read {
            index: MsrIndex::new(0x10),
        }]];
        let img = multiboot_image(&ops, false);
        let w = |at: usize| u32::from_le_bytes([img[at], img[at + 1], img[at + 2], img[at + 3]]);
        assert_eq!(w(0), MULTIBOOT_MAGIC);
        assert_eq!(w(0).wrapping_add(w(4)).wrapping_add(w(8)), 0);
        assert_eq!(w(28), (IMAGE_BASE + ENTRY) as u32);
        // The entry is where multiboot.S put it: `cli`.
        assert_eq!(img[ENTRY as usize], 0xfa);
        assert_eq!(w(CR3), (IMAGE_BASE + PML4_AT) as u32);
        assert!(ENTRY_IMAGE.len() < GDT_AT as usize);
        assert!(PROBE_IMAGE.len() as u64 <= STACK_END - 0x1000 - HANDLERS_AT);
        // A fresh results area: the magic, nothing done.
        let dump = &img[img.len() - results_len(1)..];
        assert_eq!(parse_results(0, dump, &ops[0]).unwrap(), vec![]);
        assert!(parse_dump(&ops, dump).is_err());
        assert!(parse_dump(&ops, &dump[..10]).is_err());
    }
}
