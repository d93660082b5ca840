//! Guest `/init` mode: mount the kernel's filesystems, read MSRs on every online CPU, print the
//! framed report on the console, and end the machine.
//!
//! Configured by the kernel command line (the kernel hands unknown `KEY=VALUE` words to init as
//! environment variables):
//!
//! - `KVMCAP_MSRS=PPIN,0x4e,...`: what to read (default: the whole catalog);
//! - `KVMCAP_END=reboot|poweroff|halt`: how to end (default `reboot`, which a VMM or QEMU's
//!   `-no-reboot` turns into the end of the run; a kernel without ACPI cannot power off);
//! - `KVMCAP_STREAM=NAME`: the frame's stream name (default `msr-probe`);
//! - `KVMCAP_REPORT=mem:ADDR:LEN`: write the framed report (NUL-terminated) into guest
//!   physical memory at ADDR through `/dev/mem` instead of the console: no exit per character
//!   (in a nested lab each one costs about 0.1 ms). The VMM reserves that window in the e820
//!   map and reads it after the run; if writing fails, the report goes to the console.

use std::collections::HashMap;
use std::io::Write;

use crate::catalog::Catalog;
use crate::frame::encode_document;
use crate::index::MsrIndex;
use crate::reader::MsrReader;
use crate::report::{Fingerprint, ProbeReport};

/// How `/init` ends the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndMode {
    /// `reboot(RB_AUTOBOOT)`: a VMM sees a reset or triple fault; QEMU `-no-reboot` exits.
    Reboot,
    /// `reboot(RB_POWER_OFF)`: needs ACPI or another power-off method in the guest kernel.
    PowerOff,
    /// `reboot(RB_HALT_SYSTEM)`: stop the CPUs and wait for the VMM's deadline.
    Halt,
}

/// What `/init` was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    /// The MSRs to read.
    pub msrs: Vec<MsrIndex>,
    /// How to end.
    pub end: EndMode,
    /// The frame's stream name.
    pub stream: String,
    /// Where to put the report instead of the console: (guest physical address, length).
    pub report_window: Option<(u64, usize)>,
}

/// Why `/init` could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// KVMCAP_MSRS names an MSR that is neither a number nor in the catalog
    #[error("KVMCAP_MSRS: {0}")]
    UnknownMsr(#[from] crate::catalog::UnknownMsr),
    /// KVMCAP_REPORT is not `console` or `mem:ADDR:LEN`
    #[error("KVMCAP_REPORT=`{0}`: expected console or mem:ADDR:LEN")]
    BadWindow(String),
    /// KVMCAP_END is not one of reboot, poweroff, halt
    #[error("KVMCAP_END=`{0}`: expected reboot, poweroff or halt")]
    BadEnd(String),
    /// the report cannot be framed
    #[error("framing the report: {0}")]
    Frame(#[from] crate::frame::FrameError),
    /// the console cannot be written
    #[error("writing the console: {0}")]
    Console(#[from] std::io::Error),
    /// the report cannot be serialized
    #[error("serializing the report: {0}")]
    Json(#[from] serde_json::Error),
}

impl InitConfig {
    /// Reads the configuration from init's environment.
    pub fn from_env(env: &HashMap<String, String>, catalog: &Catalog) -> Result<Self, InitError> {
        let msrs = match env.get("KVMCAP_MSRS").map(|s| s.trim()) {
            None | Some("") | Some("catalog") => catalog.indices(),
            Some(list) => list
                .split(',')
                .map(|s| catalog.resolve(s.trim()))
                .collect::<Result<_, _>>()?,
        };
        let end = match env.get("KVMCAP_END").map(String::as_str) {
            None | Some("reboot") => EndMode::Reboot,
            Some("poweroff") => EndMode::PowerOff,
            Some("halt") => EndMode::Halt,
            Some(other) => return Err(InitError::BadEnd(other.to_owned())),
        };
        let stream = env
            .get("KVMCAP_STREAM")
            .cloned()
            .unwrap_or_else(|| "msr-probe".into());
        let report_window = match env.get("KVMCAP_REPORT").map(String::as_str) {
            None | Some("") | Some("console") => None,
            Some(w) => Some(parse_window(w).ok_or_else(|| InitError::BadWindow(w.to_owned()))?),
        };
        Ok(Self {
            msrs,
            end,
            stream,
            report_window,
        })
    }
}

/// Parses `mem:ADDR:LEN` (numbers as C literals).
pub fn parse_window(text: &str) -> Option<(u64, usize)> {
    let mut p = text.strip_prefix("mem:")?.split(':');
    let addr = crate::index::parse_u64(p.next()?)?;
    let len = usize::try_from(crate::index::parse_u64(p.next()?)?).ok()?;
    (p.next().is_none() && len > 0).then_some((addr, len))
}

/// The system services `/init` needs, so the whole path runs in a unit test.
pub trait InitSystem {
    /// Mounts proc, sysfs and devtmpfs; a failure is reported on the console but not fatal.
    fn mount_filesystems(&mut self) -> Result<(), String>;
    /// The MSR reader (after mounting).
    fn reader(&self) -> &dyn MsrReader;
    /// The machine's fingerprint (after mounting).
    fn fingerprint(&self) -> Fingerprint;
    /// The console.
    fn console(&mut self) -> &mut dyn Write;
    /// Ends the machine; returns only if that failed.
    fn end(&mut self, mode: EndMode) -> String;
    /// Writes `bytes` at guest physical `addr` (through `/dev/mem`).
    fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), String>;
}

/// Runs the whole `/init` job: mount, read, print the framed report, end.
///
/// Returns only when ending the machine failed (or, in tests, after the fake end), with the
/// reason; errors before that are printed on the console and the machine is ended anyway, so a
/// VMM never waits for a report that cannot come.
pub fn run_init(sys: &mut dyn InitSystem, config: &InitConfig, catalog: &Catalog) -> String {
    if let Err(e) = sys.mount_filesystems() {
        let _ = writeln!(sys.console(), "msr-probe init: mounting: {e}");
    }
    let report = ProbeReport::collect(
        sys.reader(),
        catalog,
        &sys.reader().online_cpus(),
        &config.msrs,
        sys.fingerprint(),
    );
    let in_memory = config.report_window.map(|(addr, len)| {
        let text = serde_json::to_string(&report)
            .map_err(|e| e.to_string())
            .and_then(|doc| encode_document(&config.stream, &doc).map_err(|e| e.to_string()))
            .map(|lines| lines.join("\n") + "\n\0")?;
        if text.len() > len {
            return Err(format!(
                "report of {} bytes exceeds the {len}-byte window",
                text.len()
            ));
        }
        sys.write_memory(addr, text.as_bytes())
            .map(|()| (addr, text.len()))
    });
    match in_memory {
        Some(Ok((addr, n))) => {
            let _ = writeln!(
                sys.console(),
                "{} at {addr:#x} ({n} bytes)",
                crate::frame::WINDOW_WRITTEN
            );
        }
        other => {
            if let Some(Err(e)) = other {
                let _ = writeln!(
                    sys.console(),
                    "msr-probe init: report window: {e}; using the console"
                );
            }
            if let Err(e) = print_framed(sys.console(), &config.stream, &report) {
                let _ = writeln!(sys.console(), "msr-probe init: {e}");
            }
        }
    }
    sys.end(config.end)
}

/// Prints `report` framed on `out`, one `write` per line so lines stay whole on the console.
pub fn print_framed(
    out: &mut dyn Write,
    stream: &str,
    report: &ProbeReport,
) -> Result<(), InitError> {
    let doc = serde_json::to_string(report)?;
    for line in encode_document(stream, &doc)? {
        out.write_all(format!("{line}\n").as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_first;
    use crate::reader::tests::FakeReader;
    use crate::reader::{Fault, Reading};

    struct FakeSystem {
        reader: FakeReader,
        console: Vec<u8>,
        mounted: bool,
        ended: Option<EndMode>,
        memory: Option<(u64, Vec<u8>)>,
    }

    impl InitSystem for FakeSystem {
        fn mount_filesystems(&mut self) -> Result<(), String> {
            self.mounted = true;
            Err("devtmpfs: EBUSY".into())
        }
        fn reader(&self) -> &dyn MsrReader {
            &self.reader
        }
        fn fingerprint(&self) -> Fingerprint {
            Fingerprint::from_cpuinfo("6.12.0-guest".into(), "vendor_id\t: AuthenticAMD\n")
        }
        fn console(&mut self) -> &mut dyn Write {
            &mut self.console
        }
        fn end(&mut self, mode: EndMode) -> String {
            self.ended = Some(mode);
            "fake end".into()
        }
        fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), String> {
            if addr == 0xdead {
                return Err("no /dev/mem".into());
            }
            self.memory = Some((addr, bytes.to_vec()));
            Ok(())
        }
    }

    #[test]
    fn init_reads_every_cpu_prints_a_frame_and_ends() {
        let catalog = Catalog::builtin().unwrap();
        let mut reader = FakeReader {
            cpus: vec![0, 1],
            ..Default::default()
        };
        let ppin = MsrIndex::new(0xc00102f1);
        for cpu in [0, 1] {
            reader
                .values
                .insert((cpu, ppin), Reading::Value(0x1122334455667788));
            reader.ppin.insert(cpu, 0x1122334455667788);
        }
        let mut sys = FakeSystem {
            reader,
            console: Vec::new(),
            mounted: false,
            ended: None,
            memory: None,
        };
        let env: HashMap<String, String> = [
            ("KVMCAP_MSRS".to_owned(), "AMD_PPIN,PPIN".to_owned()),
            ("KVMCAP_STREAM".to_owned(), "t1".to_owned()),
        ]
        .into();
        let config = InitConfig::from_env(&env, &catalog).unwrap();
        assert_eq!(config.end, EndMode::Reboot);
        assert_eq!(run_init(&mut sys, &config, &catalog), "fake end");
        assert!(sys.mounted);
        assert_eq!(sys.ended, Some(EndMode::Reboot));
        let out = String::from_utf8(sys.console).unwrap();
        assert!(out.starts_with("msr-probe init: mounting: devtmpfs: EBUSY\n"));
        let frame = decode_first(&out).unwrap();
        assert_eq!(frame.stream, "t1");
        let report: ProbeReport = serde_json::from_str(&frame.document()).unwrap();
        assert_eq!(report.cpus.len(), 2);
        for c in &report.cpus {
            assert_eq!(c.readings[0].reading, Reading::Value(0x1122334455667788));
            assert_eq!(c.readings[0].name, "MSR_AMD_PPIN");
            assert_eq!(c.readings[1].reading, Reading::Fault(Fault::Gp));
            assert_eq!(c.sysfs_ppin, Some(0x1122334455667788));
        }
    }

    #[test]
    fn report_goes_to_the_memory_window_or_falls_back_to_the_console() {
        let catalog = Catalog::builtin().unwrap();
        let sys = || FakeSystem {
            reader: FakeReader {
                cpus: vec![0],
                ..Default::default()
            },
            console: Vec::new(),
            mounted: false,
            ended: None,
            memory: None,
        };
        let env = |w: &str| -> HashMap<String, String> {
            [
                ("KVMCAP_MSRS".to_owned(), "PPIN".to_owned()),
                ("KVMCAP_REPORT".to_owned(), w.to_owned()),
            ]
            .into()
        };
        let mut s = sys();
        let c = InitConfig::from_env(&env("mem:0xa0000:65536"), &catalog).unwrap();
        run_init(&mut s, &c, &catalog);
        let (addr, bytes) = s.memory.clone().unwrap();
        assert_eq!(addr, 0xa0000);
        assert_eq!(bytes.last(), Some(&0));
        let text = String::from_utf8(bytes[..bytes.len() - 1].to_vec()).unwrap();
        assert!(decode_first(&text).is_ok());
        assert!(decode_first(&String::from_utf8(s.console).unwrap()).is_err());
        // Too small a window, or no /dev/mem: the console carries the report.
        for w in ["mem:0xa0000:16", "mem:0xdead:65536"] {
            let mut s = sys();
            run_init(
                &mut s,
                &InitConfig::from_env(&env(w), &catalog).unwrap(),
                &catalog,
            );
            assert!(
                decode_first(&String::from_utf8(s.console).unwrap()).is_ok(),
                "{w}"
            );
        }
        assert!(InitConfig::from_env(&env("mem:zz"), &catalog).is_err());
        assert_eq!(parse_window("mem:0x10:8"), Some((0x10, 8)));
        assert_eq!(parse_window("mem:0x10:0"), None);
    }

    #[test]
    fn init_config_defaults_and_errors() {
        let catalog = Catalog::builtin().unwrap();
        let c = InitConfig::from_env(&HashMap::new(), &catalog).unwrap();
        assert_eq!(c.msrs.len(), catalog.entries().len());
        let env: HashMap<String, String> = [("KVMCAP_END".to_owned(), "explode".to_owned())].into();
        assert!(matches!(
            InitConfig::from_env(&env, &catalog),
            Err(InitError::BadEnd(_))
        ));
        let env: HashMap<String, String> = [("KVMCAP_MSRS".to_owned(), "NOPE".to_owned())].into();
        assert!(matches!(
            InitConfig::from_env(&env, &catalog),
            Err(InitError::UnknownMsr(_))
        ));
    }
}
