//! The fuzz targets' bodies, one function per target: each turns raw bytes into a call of one
//! library entry point and checks the invariants that must hold whatever the bytes are.
//!
//! This file is shared: the cargo-fuzz crate (`fuzz/`) exports it, and the stable smoke test
//! (`harness/tests/fuzz_smoke.rs`) includes it by path, so CI runs exactly what libFuzzer runs.
//! It must therefore only use crates both have: kvmcap, msr-probe, guest-tools, serde_json.
//! [`examples`] gives valid inputs per target (the smoke test's mutation bases and libFuzzer's
//! seeds).

use std::sync::OnceLock;

use kvmcap::guests::bare::{MsrOp, OpResult};
use msr_probe::frame::{self, Decoder, Progress};
use msr_probe::{Catalog, MsrIndex, ProbeReport};

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[&str] = &[
    "frame", "catalog", "feature", "scenario", "profile", "results", "console", "bare_io",
    "bzimage", "cpio", "report", "msr",
];

/// Runs target `name` on `data`: `None` if there is no such target, else whether the input
/// went the whole way (parsed, loaded, settled: see each target).
pub fn run(name: &str, data: &[u8]) -> Option<bool> {
    let f: fn(&[u8]) -> bool = match name {
        "frame" => frame,
        "catalog" => catalog,
        "feature" => feature,
        "scenario" => scenario,
        "profile" => profile,
        "results" => results,
        "console" => console,
        "bare_io" => bare_io,
        "bzimage" => bzimage,
        "cpio" => cpio,
        "report" => report,
        "msr" => msr,
        _ => return None,
    };
    Some(f(data))
}

/// The built-in catalog, parsed once (feature, scenario and profile specs resolve names in it).
fn builtin_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::builtin().expect("the built-in catalog parses"))
}

/// Console frames: [`frame::decode_all`] and [`frame::decode_first`] over the input as text
/// and the incremental [`Decoder`] line by line (they must agree), and the encoder's round
/// trip of the input's printable characters as a document. Accepted: a complete frame was found.
pub fn frame(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let all = frame::decode_all(&text);
    let mut d = Decoder::new();
    let mut complete = Vec::new();
    for line in text.lines() {
        match d.feed(line) {
            Ok(Progress::Complete(f)) => complete.push(f),
            Ok(_) => {}
            Err(_) => d = Decoder::new(),
        }
    }
    let _ = d.finish();
    // decode_first (the report window's path) stops at the first break; what it finds is
    // decode_all's first result.
    if let Ok(f) = frame::decode_first(&text) {
        assert_eq!(
            all.first(),
            Some(&Ok(f)),
            "decode_first and decode_all disagree"
        );
    }
    let ok: Vec<_> = all.into_iter().filter_map(Result::ok).collect();
    assert_eq!(
        ok, complete,
        "decode_all and the line-by-line decoder disagree"
    );
    for f in &ok {
        assert!(f.payloads.len() <= frame::MAX_LINES);
        assert!(f.payloads.iter().all(|p| p.len() <= frame::MAX_PAYLOAD));
    }
    let printable: String = text.chars().filter(|c| !c.is_control()).collect();
    if printable.len() <= frame::MAX_PAYLOAD * frame::MAX_LINES / 2 {
        let lines = frame::encode_document("fuzz", &printable).expect("printable text frames");
        let back = frame::decode_first(&lines.join("\r\n")).expect("an encoded frame decodes");
        assert_eq!(back.document(), printable, "frame round trip");
    }
    !ok.is_empty()
}

/// The MSR catalog parser; a catalog that loads finds each entry by index and by name.
pub fn catalog(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(c) = Catalog::parse(&text, "fuzz") else {
        return false;
    };
    for e in c.entries() {
        assert_eq!(c.get(e.index).map(|x| &x.name), Some(&e.name));
        assert_eq!(c.by_name(&e.name).map(|x| x.index), Some(e.index));
        for f in &e.fields {
            assert!(f.bits.low <= f.bits.high && f.bits.high <= 63);
        }
    }
    true
}

/// Feature specs, against the built-in catalog.
pub fn feature(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(f) = kvmcap::features::FeatureSpec::parse(&text, "fuzz", builtin_catalog()) else {
        return false;
    };
    for p in &f.pairs {
        assert!(p.cpuid.bit <= 31);
        assert!(p.lockout != 0 && p.enable != 0);
    }
    !f.msrs().is_empty()
}

/// Scenarios, against the built-in catalog.
pub fn scenario(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(s) = kvmcap::commands::scenario::Scenario::parse(&text, "fuzz", builtin_catalog())
    else {
        return false;
    };
    assert!(!s.cases.is_empty());
    true
}

/// Host profiles, against the built-in catalog.
pub fn profile(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    kvmcap::host::parse_profile(&text, "fuzz", builtin_catalog()).is_ok()
}

/// The bare guest's results area. Input: the vCPU (byte 0), the operation count (byte 1, modulo
/// 33; 255 means one more than the guest takes), one byte per operation choosing read, write,
/// triple fault or spin, then the bytes the guest left in its results area. Accepted: the
/// results validate.
pub fn results(data: &[u8]) -> bool {
    let (cpu, ops, area) = results_input(data);
    let Ok(Ok(r)) = kvmcap::guests::bare::run::fuzz_bare_results(cpu, &ops, area) else {
        return false;
    };
    assert!(r.len() <= ops.len());
    for (res, op) in r.iter().zip(&ops) {
        if let OpResult::Read(_) | OpResult::Written = res {
            assert!(matches!(op, MsrOp::Read { .. } | MsrOp::Write { .. }));
        }
    }
    true
}

fn results_input(data: &[u8]) -> (u8, Vec<MsrOp>, &[u8]) {
    let cpu = data.first().copied().unwrap_or(0);
    let count = match data.get(1).copied().unwrap_or(0) {
        255 => kvmcap::guests::bare::MAX_OPS + 1,
        n => usize::from(n) % 33,
    };
    let rest = data.get(2..).unwrap_or_default();
    let ops = (0..count)
        .map(|i| {
            let index = MsrIndex::new(0x10 + i as u32);
            match rest.get(i).copied().unwrap_or(0) % 4 {
                0 => MsrOp::Read { index },
                1 => MsrOp::Write {
                    index,
                    value: i as u64,
                },
                2 => MsrOp::TripleFault,
                _ => MsrOp::Spin,
            }
        })
        .collect();
    let area = rest.get(count..).unwrap_or_default();
    (cpu, ops, area)
}

/// The most exits one input may expand to (enough to flood a 64 KiB console).
pub const MAX_EXITS: usize = 100_000;
/// The most exits the bare guest's target expands an input to (its handler keeps 32 notes).
pub const MAX_BARE_EXITS: usize = 2_000;

/// Decodes port I/O exits. Each record is a flags byte, two port bytes (little-endian) and
/// 1..=8 data bytes (zero-padded when the input ends). Flags: bit 0 a write (`OUT`), bits 1-3
/// the size minus one, bit 4 the port is `near + (low byte & 7)` (the device under test)
/// instead of the two bytes, bits 5-7: 6 repeats the exit 16 times, 7 1024 times, else once.
/// At most `max` exits.
pub fn decode_exits(data: &[u8], near: u16, max: usize) -> Vec<(u16, bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() && out.len() < max {
        let flags = data[at];
        let byte = |i: usize| data.get(at + i).copied().unwrap_or(0);
        let (lo, hi) = (byte(1), byte(2));
        let port = if flags & 0x10 != 0 {
            near.wrapping_add(u16::from(lo & 7))
        } else {
            u16::from_le_bytes([lo, hi])
        };
        let size = usize::from((flags >> 1) & 7) + 1;
        let bytes: Vec<u8> = (0..size).map(|i| byte(3 + i)).collect();
        let repeat = match flags >> 5 {
            6 => 16,
            7 => 1024,
            _ => 1,
        };
        for _ in 0..repeat.min(max - out.len()) {
            out.push((port, flags & 1 != 0, bytes.clone()));
        }
        at += 3 + size;
    }
    out
}

/// Encodes exits as [`decode_exits`] reads them (every port given in full, no repeats).
pub fn encode_exits(exits: &[(u16, bool, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (port, write, data) in exits {
        let size = data.len().clamp(1, 8);
        out.push(((size as u8 - 1) << 1) | u8::from(*write));
        out.extend_from_slice(&port.to_le_bytes());
        out.extend((0..size).map(|i| data.get(i).copied().unwrap_or(0)));
    }
    out
}

const SERIAL: u16 = 0x3f8;

/// The Linux guest's port I/O: the 16550 console and the frame scanner behind it. Accepted:
/// the console settled (a frame arrived or broke).
pub fn console(data: &[u8]) -> bool {
    let exits = decode_exits(data, SERIAL, MAX_EXITS);
    let (bytes, settled) = kvmcap::guests::linux::fuzz_io_exits(&exits);
    let serial_writes = exits
        .iter()
        .filter(|(p, w, _)| *w && (SERIAL..=SERIAL + 7).contains(p))
        .count() as u64;
    assert!(
        bytes <= serial_writes,
        "{bytes} console bytes from {serial_writes} writes"
    );
    settled
}

/// The bare guest's port I/O. Accepted: the vCPU ended.
pub fn bare_io(data: &[u8]) -> bool {
    let exits = decode_exits(data, kvmcap::guests::bare::DONE_PORT, MAX_BARE_EXITS);
    let (stray, end) = kvmcap::guests::bare::run::fuzz_bare_io(&exits);
    assert!(stray <= 32);
    end.is_some()
}

/// Kernel image loading (linux-loader's bzImage loader and our boot parameters).
pub fn bzimage(data: &[u8]) -> bool {
    let Ok(entry) = kvmcap::guests::linux::fuzz_load_bzimage(data) else {
        return false;
    };
    assert_eq!(entry, 0x10_0200);
    true
}

/// The newc cpio reader.
pub fn cpio(data: &[u8]) -> bool {
    let Ok(entries) = guest_tools::cpio::read(data) else {
        return false;
    };
    let total: usize = entries.iter().map(|e| e.data.len() + e.name.len()).sum();
    assert!(total <= data.len());
    true
}

/// A guest's JSON report: parse, validate as `verify` does, and serialize back. Accepted: it
/// validates as a two-CPU report of PPIN and the TSC.
pub fn report(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(r) = serde_json::from_str::<ProbeReport>(&text) else {
        return false;
    };
    let msrs = [MsrIndex::new(0x4f), MsrIndex::new(0x10)];
    let valid = kvmcap::commands::verify::validate(&r, 2, &msrs).is_ok();
    if let (Ok(n), Some(first)) = (u8::try_from(r.cpus.len()), r.cpus.first()) {
        let own: Vec<MsrIndex> = first.readings.iter().map(|x| x.index).collect();
        let _ = kvmcap::commands::verify::validate(&r, n, &own);
    }
    let json = serde_json::to_string(&r).expect("a parsed report serializes");
    let again: ProbeReport = serde_json::from_str(&json).expect("a serialized report parses");
    assert_eq!(again, r, "report JSON round trip");
    valid
}

/// Guest `rdmsr`/`wrmsr` exits served by a feature model, as the `user` backend's exit
/// handlers serve them (`model_rdmsr`/`model_wrmsr`), checked against design.md's PPIN rules.
/// Input: byte 0 picks the feature (bit 0: ppin or platform-info), the guest vendor (bits 1-2)
/// and whether the feature is on (bit 3); byte 1 is the initial PPIN_CTL; bytes 2..10 the PPIN
/// or PLATFORM_INFO value; then 10-byte operations: a kind byte (bit 0 a write, bit 1 instead
/// run the guest kernel's `ppin_init()` on the announced pair), an MSR selector (one of the
/// feature's MSRs, or from 0xf0 up an MSR it does not have) and a little-endian value.
/// Accepted: some access did not fault.
pub fn msr(data: &[u8]) -> bool {
    use kvmcap::features::model::{build_shared, simulate_ppin_init, with_model, ModelInputs};
    use kvmcap::features::FeatureSpec;
    use kvmcap::vmm::machine::{model_rdmsr, model_wrmsr};
    use kvmcap::x86::cpuid::CpuVendor;

    static SPECS: OnceLock<[FeatureSpec; 2]> = OnceLock::new();
    let specs = SPECS.get_or_init(|| {
        ["ppin", "platform-info"]
            .map(|n| FeatureSpec::find(n, builtin_catalog()).expect("the built-in features parse"))
    });
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let word = |at: usize| {
        let mut b = [0u8; 8];
        for (i, x) in b.iter_mut().enumerate() {
            *x = byte(at + i);
        }
        u64::from_le_bytes(b)
    };
    let spec = &specs[usize::from(byte(0) & 1)];
    let vendor = [
        CpuVendor::Intel,
        CpuVendor::Amd,
        CpuVendor::Other,
        CpuVendor::Amd,
    ][usize::from((byte(0) >> 1) & 3)];
    let enabled = byte(0) & 8 != 0;
    let msrs = spec.msrs();
    let announced = spec.pair_for(vendor).filter(|_| enabled);
    // The initial state as the VMM writes it; one the model refuses (reserved bits, 11b) is
    // an input the VMM rejects before any guest runs.
    let ctls: Vec<MsrIndex> = spec.pairs.iter().map(|p| p.ctl).collect();
    let mut writes: Vec<(MsrIndex, u64)> = msrs
        .iter()
        .filter(|m| !ctls.contains(m))
        .map(|&m| (m, word(2)))
        .collect();
    if let Some(p) = announced {
        writes.push((p.ctl, u64::from(byte(1))));
    }
    let inputs = ModelInputs {
        announced: if enabled { vec![vendor] } else { Vec::new() },
        enabled,
        writes: if enabled { writes } else { Vec::new() },
    };
    let Ok(shared) = build_shared(spec, &inputs) else {
        return false;
    };
    let mut model = Some(shared);
    let mut served = false;
    for op in data.get(10..).unwrap_or_default().chunks(10) {
        let kind = op[0];
        let sel = op.get(1).copied().unwrap_or(0);
        let mut v = [0u8; 8];
        for (i, x) in v.iter_mut().enumerate() {
            *x = op.get(2 + i).copied().unwrap_or(0);
        }
        let value = u64::from_le_bytes(v);
        let index = if sel >= 0xf0 || msrs.is_empty() {
            MsrIndex::new(0x4000_0000 | u32::from(sel))
        } else {
            msrs[usize::from(sel) % msrs.len()]
        };
        if kind & 2 != 0 {
            if let (Some(m), Some(pair)) = (model.as_ref(), announced) {
                let _ = with_model(m, |m| simulate_ppin_init(m, pair));
            }
            continue;
        }
        // What PPIN_CTL says before the access (for the rules below).
        let pair = spec
            .pairs
            .iter()
            .find(|p| p.ctl == index || p.value == index);
        let ctl_before = pair.and_then(|p| model_rdmsr(&mut model, p.ctl).ok());
        if kind & 1 != 0 {
            let r = model_wrmsr(&mut model, index, value);
            served |= r.is_ok();
            if let Some(p) = pair {
                // PPIN is read-only; PPIN_CTL #GPs once locked, with reserved bits, or
                // with LockOut and Enable both set.
                let locked = ctl_before.is_some_and(|c| c & p.lockout != 0);
                let both = p.lockout | p.enable;
                if index == p.value || locked || value & !both != 0 || value == both {
                    assert!(r.is_err(), "guest wrmsr {index} = {value:#x} must #GP");
                }
                if r.is_ok() {
                    assert_eq!(model_rdmsr(&mut model, p.ctl), Ok(value));
                }
            } else {
                // platform-info's MSRs, and MSRs no model has, are read-only to the guest.
                assert!(r.is_err(), "guest wrmsr {index} must #GP");
            }
        } else {
            let r = model_rdmsr(&mut model, index);
            served |= r.is_ok();
            match pair {
                // PPIN reads #GP while Enable is clear; pairs not announced do not exist.
                Some(p) if index == p.value && r.is_ok() => {
                    assert!(ctl_before.is_some_and(|c| c & p.enable != 0));
                }
                Some(p) if r.is_ok() => assert_eq!(announced.map(|a| a.ctl), Some(p.ctl)),
                _ => {}
            }
        }
    }
    served
}

#[path = "entries/samples.rs"]
mod samples;
pub use samples::*;
