//! The fuzz targets' stable smoke, run by `cargo test`: every fuzz target (`fuzz/`, run with
//! `cargo xtask fuzz`) on every file of `fuzz/regressions/<target>/` (hand-made nasty inputs
//! and every crash libFuzzer ever found), then on 2,000 inputs per target mutated from the
//! target's valid examples and regressions by a deterministic xorshift generator seeded per
//! target. Each input must give a result or an error, never a panic, and keep the invariants
//! the target checks. The target bodies are `fuzz/src/entries.rs`, included here by path, so
//! this runs exactly what libFuzzer runs.
//!
//! `KVMCAP_FUZZ_WRITE_SEEDS=1` (re)writes each target's valid examples to `fuzz/seeds/<target>/`
//! (libFuzzer's seed corpus).

#[path = "../../fuzz/src/entries.rs"]
mod entries;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mutated inputs per target.
const ITERATIONS: usize = 2000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The regression inputs of `target`, sorted by name.
fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn seeded(name: &str) -> Self {
        // FNV-1a of the target's name: a fixed, distinct seed per target.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self(h | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&[u8]] = &[
    b"@kvmcap:",
    b"@kvmcap:B:0:",
    b"@kvmcap:E:",
    b"\n",
    b"\r\n",
    b":",
    b"=",
    b"'",
    b"\"",
    b"[[msr]]\n",
    b"[[case]]\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"0x",
    b"-1",
    b"0xffffffffffffffff",
    b"18446744073709551616",
    b"4294967295",
    b"99999999999999999999999",
    b"ffffffff",
    b"070701",
    b"TRAILER!!!",
    b"HdrS",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\xc3\xa9",
    b"\xf0\x9f\x92\xa9",
    b"\xe2\x80",
];

const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x8000_0000,
    0xffff_ffff,
    0x5372_6448,
    0x524d_564b,
    u64::MAX,
];

/// One mutated input: a base changed in one to four ways. Three times in four the base is
/// one of the first `valid` (the examples), else any (the regressions too).
fn mutate(rng: &mut Rng, bases: &[Vec<u8>], valid: usize) -> Vec<u8> {
    let pick = if rng.below(4) == 0 {
        bases.len()
    } else {
        valid
    };
    let mut v = bases[rng.below(pick)].clone();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        let at = rng.below(len + 1);
        match rng.below(10) {
            0 if len > 0 => v[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => v[at.min(len - 1)] = rng.next() as u8,
            2 => {
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 => {
                let end = (at + 1 + rng.below(32)).min(len);
                v.drain(at..end);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let end = (from + 1 + rng.below(64)).min(len);
                let piece = v[from..end].to_vec();
                v.splice(at..at, piece);
            }
            5 => v.truncate(at),
            6 => {
                let other = &bases[rng.below(bases.len())];
                let from = rng.below(other.len() + 1);
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            7 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, t.iter().copied());
            }
            8 => {
                // An interesting integer, little-endian, over the bytes at `at`.
                let x = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                for (i, b) in x[..width].iter().enumerate() {
                    if let Some(slot) = v.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            _ => {
                // An interesting integer as decimal or hex text.
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let t = if rng.below(2) == 0 {
                    x.to_string()
                } else {
                    format!("{x:#x}")
                };
                v.splice(at..at, t.into_bytes());
            }
        }
    }
    v
}

/// Runs `target` on `input` and says whether it was accepted. On a panic it fails naming the
/// input; a generated one (`save`) is first saved under `target/fuzz-smoke/` (copy it into
/// `fuzz/regressions/<target>/` once fixed).
fn check(target: &str, what: &str, input: &[u8], save: bool) -> bool {
    let outcome = catch_unwind(AssertUnwindSafe(|| entries::run(target, input)));
    match outcome {
        Ok(Some(accepted)) => accepted,
        Ok(None) => panic!("no fuzz target `{target}`"),
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let mut saved = String::new();
            if save {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-smoke");
                let file = dir.join(format!("{target}-{}", what.replace(' ', "-")));
                if std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::write(&file, input))
                    .is_ok()
                {
                    saved = format!(", saved as {}", file.display());
                }
            }
            panic!(
                "fuzz target `{target}` panicked on {what} ({} bytes{saved}): {msg}",
                input.len()
            );
        }
    }
}

fn smoke(target: &str) {
    let start = Instant::now();
    let regs = regressions(target);
    assert!(
        !regs.is_empty(),
        "fuzz/regressions/{target}/ needs at least one input"
    );
    for (path, bytes) in &regs {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        check(
            target,
            &format!("fuzz/regressions/{target}/{name}"),
            bytes,
            false,
        );
    }
    let examples = entries::examples(target);
    assert!(!examples.is_empty(), "target {target} has no examples");
    for (i, e) in examples.iter().enumerate() {
        assert!(
            check(target, &format!("example {i}"), e, true),
            "example {i} of target {target} is not accepted"
        );
    }
    if std::env::var("KVMCAP_FUZZ_WRITE_SEEDS").is_ok_and(|v| v == "1") {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, e) in examples.iter().enumerate() {
            std::fs::write(dir.join(format!("valid-{i}")), e).unwrap();
        }
    }
    let valid = examples.len();
    let mut bases = examples;
    // Regressions are mutated too, except the few that expand to many exits (a console
    // flood, a long line): run once above, they would dominate the time if mutated.
    bases.extend(
        regs.into_iter()
            .map(|(_, b)| b)
            .filter(|b| entries::decode_exits(b, 0, entries::MAX_EXITS).len() <= 1_000),
    );
    let mut rng = Rng::seeded(target);
    let mut accepted = 0;
    for i in 0..ITERATIONS {
        let input = mutate(&mut rng, &bases, valid);
        accepted += usize::from(check(target, &format!("mutation {i}"), &input, true));
    }
    eprintln!(
        "fuzz smoke {target}: {ITERATIONS} mutated inputs, {accepted} accepted, {:.2} s",
        start.elapsed().as_secs_f64()
    );
    // The mutations must reach past the first checks, and must not all pass them.
    assert!(
        accepted > 0 && accepted < ITERATIONS,
        "target {target}: {accepted} of {ITERATIONS} mutated inputs accepted"
    );
}

macro_rules! smoke_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                smoke(stringify!($name));
            }
        )*

        #[test]
        fn every_target_has_a_smoke_a_fuzz_target_and_regressions() {
            let smoked = [$(stringify!($name)),*];
            assert_eq!(smoked.as_slice(), entries::TARGETS);
            let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
            for t in entries::TARGETS {
                let body = std::fs::read_to_string(
                    fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")),
                )
                .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{t}.rs: {e}"));
                assert!(body.contains(&format!("entries::{t}(data)")), "{t}.rs");
                assert!(manifest.contains(&format!("name = \"{t}\"")), "fuzz/Cargo.toml: {t}");
            }
        }
    };
}

smoke_tests!(
    frame, catalog, feature, scenario, profile, results, console, bare_io, bzimage, cpio, report,
    msr,
);

#[test]
fn hand_checks_of_the_entry_points() {
    // A real framed report survives the console path and is settled.
    let text = entries::example_console_text();
    let exits: Vec<(u16, bool, Vec<u8>)> = text.bytes().map(|b| (0x3f8, true, vec![b])).collect();
    assert_eq!(
        kvmcap::guests::linux::fuzz_io_exits(&exits),
        (text.len() as u64, true)
    );
    // A flood ends the VM and is counted, memory bounded.
    let flood = vec![(0x3f8u16, true, vec![b'x']); 70_000];
    assert_eq!(
        kvmcap::guests::linux::fuzz_io_exits(&flood),
        (70_000, false)
    );
    // The bare guest's done port ends the vCPU.
    let (stray, end) = kvmcap::guests::bare::run::fuzz_bare_io(&[
        (0x80, true, vec![1]),
        (kvmcap::guests::bare::DONE_PORT, true, vec![3, 0, 0, 0]),
    ]);
    assert_eq!(stray, 1);
    assert_eq!(end, Some(kvmcap::vmm::vcpu::VcpuEnd::Done { ops: 3 }));
    // The example bzImage loads; the same image cut short does not.
    let image = entries::example_bzimage();
    assert_eq!(
        kvmcap::guests::linux::fuzz_load_bzimage(&image),
        Ok(0x10_0200)
    );
    let err = kvmcap::guests::linux::fuzz_load_bzimage(&image[..600]).unwrap_err();
    assert!(err.contains("not a loadable bzImage"), "{err}");
    // The example results area reads back as written.
    let ex = &entries::examples("results")[0];
    let ops = [
        kvmcap::guests::bare::MsrOp::Read {
            index: msr_probe::MsrIndex::new(0x10),
        },
        kvmcap::guests::bare::MsrOp::Write {
            index: msr_probe::MsrIndex::new(0x11),
            value: 1,
        },
        kvmcap::guests::bare::MsrOp::Read {
            index: msr_probe::MsrIndex::new(0x12),
        },
    ];
    use kvmcap::guests::bare::OpResult;
    assert_eq!(
        kvmcap::guests::bare::run::fuzz_bare_results(0, &ops, &ex[5..]),
        Ok(Ok(vec![
            OpResult::Read(0x1234),
            OpResult::Written,
            OpResult::Fault
        ]))
    );
    // The examples of the parsers are accepted (so mutations start from valid input).
    let catalog = msr_probe::Catalog::builtin().unwrap();
    for f in entries::examples("feature") {
        kvmcap::features::FeatureSpec::parse(std::str::from_utf8(&f).unwrap(), "ex", &catalog)
            .unwrap();
    }
    for s in entries::examples("scenario") {
        kvmcap::commands::scenario::Scenario::parse(
            std::str::from_utf8(&s).unwrap(),
            "ex",
            &catalog,
        )
        .unwrap();
    }
    let p = &entries::examples("profile")[0];
    assert_eq!(
        kvmcap::host::parse_profile(std::str::from_utf8(p).unwrap(), "ex", &catalog)
            .unwrap()
            .len(),
        3
    );
    let c = &entries::examples("cpio")[0];
    assert_eq!(guest_tools::cpio::read(c).unwrap().len(), 5);
}
