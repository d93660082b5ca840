//! Example inputs for every target: the seeds the fuzzers start from and the inputs the smoke
//! test requires every target to accept.

use super::*;

/// A small but complete guest report: two CPUs, PPIN and the TSC, each kind of reading.
pub fn example_report() -> ProbeReport {
    use msr_probe::report::{CpuReadings, MsrReading};
    use msr_probe::{Fault, Fingerprint, Reading, Unavailable};
    let cpu = |n: u32| CpuReadings {
        cpu: n,
        readings: vec![
            MsrReading {
                index: MsrIndex::new(0x4f),
                name: "MSR_PPIN".into(),
                reading: if n == 0 {
                    Reading::Value(0x1122_3344_5566_7788)
                } else {
                    Reading::Fault(Fault::Gp)
                },
            },
            MsrReading {
                index: MsrIndex::new(0x10),
                name: "IA32_TIME_STAMP_COUNTER".into(),
                reading: if n == 0 {
                    Reading::Value(123_456_789)
                } else {
                    Reading::Unavailable(Unavailable::Io("EIO".into()))
                },
            },
        ],
        sysfs_ppin: (n == 0).then_some(0x1122_3344_5566_7788),
    };
    ProbeReport {
        tool: "msr-probe 0.1.0".into(),
        source: "devmsr".into(),
        fingerprint: Fingerprint {
            kernel: "6.12.0".into(),
            cpu_vendor: "AuthenticAMD".into(),
            cpu_model: "AMD EPYC".into(),
            cpu_fms: "25.1.1".into(),
            hypervisor: true,
        },
        cpus: vec![cpu(0), cpu(1)],
    }
}

/// The example report framed on a console among kernel messages, as a guest prints it.
pub fn example_console_text() -> String {
    let json = serde_json::to_string(&example_report()).expect("the example serializes");
    let mut out = String::from("[    0.000000] Linux version 6.12.0\r\n[    0.1] booting\r\n");
    for l in frame::encode_document("verify", &json).expect("the example frames") {
        out.push_str(&l);
        out.push_str("\r\n");
    }
    out.push_str("reboot: Restarting system\r\n");
    out
}

/// A minimal loadable bzImage: a boot protocol 2.15 setup header, one setup sector and a page
/// of "kernel".
pub fn example_bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 2 * 512 + 4096];
    b[0x1f1] = 1; // setup_sects
    b[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
    b[0x211] = 1; // loadflags: LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    b[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    b[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    b
}

/// Valid inputs for target `name`: the smoke test's mutation bases, libFuzzer's seeds.
pub fn examples(name: &str) -> Vec<Vec<u8>> {
    let report_json = serde_json::to_vec(&example_report()).expect("the example serializes");
    match name {
        "frame" => vec![example_console_text().into_bytes()],
        "catalog" => {
            // Slices of the built-in catalog, four entries each (cheap to mutate; libFuzzer
            // also gets the whole file as a seed). Each starts at an entry, so each is valid.
            let text = msr_probe::catalog::BUILTIN_CATALOG.as_bytes();
            let starts: Vec<usize> = msr_probe::catalog::BUILTIN_CATALOG
                .match_indices("\n[[msr]]\n")
                .map(|(i, _)| i + 1)
                .collect();
            starts
                .chunks(4)
                .take(3)
                .zip(starts.chunks(4).skip(1).map(|c| c[0]).chain([text.len()]))
                .map(|(c, end)| text[c[0]..end].to_vec())
                .collect()
        }
        "feature" => kvmcap::fixtures::FEATURES
            .iter()
            .map(|(_, t)| t.as_bytes().to_vec())
            .collect(),
        "scenario" => kvmcap::fixtures::SCENARIOS
            .iter()
            .map(|(_, t)| t.as_bytes().to_vec())
        .collect(),
        "profile" => vec![b"[fingerprint]\nkernel = '6.12.0'\ncpu_vendor = 'AuthenticAMD'\ncpu_model = 'AMD EPYC'\ncpu_fms = '25.1.1'\nhypervisor = false\n\n[msr]\nMSR_AMD_PPIN = 0x1122334455667788\nMSR_PLATFORM_INFO = 0x80000000\n0x4f = 5\n".to_vec()],
        "results" => {
            // vCPU 0, three operations (read, write, read); the guest completed all three:
            // a value, a write, a #GP.
            let mut v = vec![0u8, 3, 0, 1, 0];
            v.extend_from_slice(&0x524d_564bu32.to_le_bytes());
            v.extend_from_slice(&3u32.to_le_bytes());
            for (status, value) in [(0u32, 0x1234u64), (0, 0), (2, 0)] {
                v.extend_from_slice(&status.to_le_bytes());
                v.extend_from_slice(&40u32.to_le_bytes());
                v.extend_from_slice(&value.to_le_bytes());
            }
            vec![v]
        }
        "console" => {
            // What Linux's 8250 driver does, in short: set the line (DLAB, divisor, 8N1),
            // enable the FIFO and interrupts, poll LSR, then print the framed report.
            let mut exits: Vec<(u16, bool, Vec<u8>)> = vec![
                (SERIAL + 3, true, vec![0x80]),
                (SERIAL, true, vec![0x01]),
                (SERIAL + 1, true, vec![0x00]),
                (SERIAL + 3, true, vec![0x03]),
                (SERIAL + 2, true, vec![0xc7]),
                (SERIAL + 1, true, vec![0x0f]),
                (SERIAL + 5, false, vec![0]),
                (SERIAL + 7, true, vec![0x5a]),
                (SERIAL + 7, false, vec![0]),
                (0x80, true, vec![0x12]),
                (0x61, false, vec![0, 0]),
            ];
            let framed = frame::encode_document("verify", "{\"a\":1}").expect("frames");
            for l in framed {
                for b in l.bytes().chain(*b"\r\n") {
                    exits.push((SERIAL, true, vec![b]));
                }
            }
            let refs: Vec<(u16, bool, &[u8])> =
                exits.iter().map(|(p, w, d)| (*p, *w, d.as_slice())).collect();
            vec![encode_exits(&refs)]
        }
        "bare_io" => vec![encode_exits(&[
            (0x80, true, &[1]),
            (0x70, false, &[0, 0, 0, 0]),
            (kvmcap::guests::bare::FAULT_PORT, true, &[13, 0, 0, 0]),
            (kvmcap::guests::bare::DONE_PORT, true, &[3, 0, 0, 0]),
        ])],
        "bzimage" => vec![example_bzimage()],
        "cpio" => {
            let mut b = guest_tools::cpio::Builder::new();
            b.dir("dev")
                .char_dev("dev/console", 0o600, 5, 1)
                .file("init", 0o755, b"\x7fELF\x02\x01\x01".to_vec())
                .symlink("sbin", "/")
                .file("empty", 0o644, Vec::new());
            vec![b.finish().expect("the example archive builds")]
        }
        "report" => vec![report_json],
        "msr" => {
            // PPIN on an AMD guest, on, PPIN_CTL 0 (disabled, unlocked): read PPIN (#GP), run
            // ppin_init(), read PPIN, lock, try to unlock, write PPIN; then platform-info.
            let mut ppin = vec![0b1010, 0];
            ppin.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
            for (kind, sel, value) in [
                (0u8, 3u8, 0u64),
                (2, 0, 0),
                (0, 3, 0),
                (1, 2, 3),
                (1, 2, 2),
                (1, 3, 1),
                (0, 0xf5, 0),
            ] {
                ppin.extend_from_slice(&[kind, sel]);
                ppin.extend_from_slice(&value.to_le_bytes());
            }
            let mut pi = vec![0b1001, 0];
            pi.extend_from_slice(&0x8000_0000u64.to_le_bytes());
            pi.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            pi.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
            vec![ppin, pi]
        }
        _ => Vec::new(),
    }
}
