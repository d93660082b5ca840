//! `msr-probe`: a better `rdmsr`, for the host and as a guest's `/init`.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use msr_probe::catalog::{BitRange, Catalog};
use msr_probe::format::{Radix, ValueFormat};
use msr_probe::init::{run_init, EndMode, InitConfig, InitSystem};
use msr_probe::reader::{DevMsr, MsrReader, Reading, Unavailable};
use msr_probe::report::{Fingerprint, ProbeReport};
use msr_probe::MsrIndex;

const HELP: &str = "\
msr-probe: read model-specific registers through /dev/cpu/N/msr, by number or by name.

USAGE:
    msr-probe [OPTIONS] MSR...      read MSRs (numbers like 0x4f or names like PPIN)
    msr-probe [OPTIONS] --catalog   read every MSR of the catalog
    msr-probe list [--json]         print the catalog
    msr-probe init                  guest /init mode (also chosen when running as PID 1)

CPU SELECTION (as rdmsr):
    -a, --all                 every online CPU
    -p, --processor N         CPU N (default 0)

VALUE FORMAT (as rdmsr; for a single MSR without --decode/--json):
    -x, --hexadecimal         lowercase hex (default)
    -X, --capital-hex         uppercase hex
    -d, --decimal             signed decimal
    -u, --unsigned            unsigned decimal
    -0, --zero-pad            pad to the field's full width
    -c, --c-language          C notation (0x prefix)
    -f, --bitfield HIGH:LOW   print only these bits

BEYOND RDMSR:
    --catalog                 read every catalog MSR
    --decode                  decode each value into its named fields
    --json                    one JSON document: machine fingerprint and every reading
    --catalog-file PATH       use this catalog instead of the built-in one
    --dev-root DIR            device root (default /dev/cpu)
    --sys-root DIR            sysfs CPU root (default /sys/devices/system/cpu)
    -h, --help                this help
    -V, --version             the version

The PPIN MSRs are shown next to the kernel's own cpuN/topology/ppin.

EXIT CODES (2-4 as rdmsr):
    0 success   1 usage   2 no such CPU   3 no MSR support (no msr driver)
    4 read failed (the CPU raised #GP)   5 permission denied   6 bad catalog   7 other I/O error
";

#[derive(Default)]
struct Args {
    all: bool,
    cpu: Option<u32>,
    format: ValueFormat,
    decode: bool,
    json: bool,
    catalog_all: bool,
    catalog_file: Option<PathBuf>,
    dev_root: Option<PathBuf>,
    sys_root: Option<PathBuf>,
    msrs: Vec<String>,
}

enum Command {
    Read(Args),
    List {
        json: bool,
        catalog_file: Option<PathBuf>,
    },
    Init,
    Help,
    Version,
}

struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: format!("{} (see msr-probe --help)", message.into()),
    }
}

fn parse_args(argv: &[String]) -> Result<Command, Failure> {
    let mut a = Args::default();
    let mut list = false;
    let mut it = argv.iter();
    let value = |it: &mut std::slice::Iter<'_, String>, flag: &str| {
        it.next()
            .cloned()
            .ok_or_else(|| usage(format!("{flag} needs a value")))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "init" if a.msrs.is_empty() && !list => return Ok(Command::Init),
            "list" if a.msrs.is_empty() => list = true,
            "-a" | "--all" => a.all = true,
            "-p" | "--processor" => {
                let v = value(&mut it, "-p")?;
                a.cpu = Some(
                    v.parse()
                        .map_err(|_| usage(format!("-p `{v}`: not a CPU number")))?,
                );
            }
            "-f" | "--bitfield" => {
                let v = value(&mut it, "-f")?;
                a.format.field = Some(BitRange::parse(&v).ok_or_else(|| {
                    usage(format!(
                        "-f `{v}`: expected HIGH:LOW with 63 >= HIGH >= LOW"
                    ))
                })?);
            }
            "-x" | "--hexadecimal" => a.format.radix = Radix::Hex,
            "-X" | "--capital-hex" => a.format.radix = Radix::HexUpper,
            "-d" | "--decimal" => a.format.radix = Radix::Signed,
            "-u" | "--unsigned" => a.format.radix = Radix::Unsigned,
            "-0" | "--zero-pad" => a.format.zero_pad = true,
            "-c" | "--c-language" => a.format.c_style = true,
            "--decode" => a.decode = true,
            "--json" => a.json = true,
            "--catalog" => a.catalog_all = true,
            "--catalog-file" => a.catalog_file = Some(value(&mut it, "--catalog-file")?.into()),
            "--dev-root" => a.dev_root = Some(value(&mut it, "--dev-root")?.into()),
            "--sys-root" => a.sys_root = Some(value(&mut it, "--sys-root")?.into()),
            s if s.starts_with('-') && s.len() > 2 && !s.starts_with("--") => {
                // Bundled short flags, as rdmsr accepts: -ax0
                let expanded: Vec<String> = s[1..].chars().map(|c| format!("-{c}")).collect();
                if expanded.iter().any(|f| matches!(f.as_str(), "-p" | "-f")) {
                    return Err(usage(format!(
                        "`{s}`: -p and -f take a value; give them separately"
                    )));
                }
                match parse_args(&expanded)? {
                    Command::Read(b) => {
                        a.all |= b.all;
                        a.format.zero_pad |= b.format.zero_pad;
                        a.format.c_style |= b.format.c_style;
                        if b.format.radix != Radix::Hex || expanded.iter().any(|f| f == "-x") {
                            a.format.radix = b.format.radix;
                        }
                    }
                    other => return Ok(other),
                }
            }
            s if s.starts_with('-') => return Err(usage(format!("unknown option `{s}`"))),
            s => a.msrs.push(s.to_owned()),
        }
    }
    if list {
        return Ok(Command::List {
            json: a.json,
            catalog_file: a.catalog_file,
        });
    }
    if a.msrs.is_empty() && !a.catalog_all {
        return Err(usage(
            "no MSR given: name one (e.g. `msr-probe 0x10` or `msr-probe PPIN`) or use --catalog",
        ));
    }
    if a.all && a.cpu.is_some() {
        return Err(usage("-a and -p exclude each other"));
    }
    Ok(Command::Read(a))
}

fn load_catalog(file: &Option<PathBuf>) -> Result<Catalog, Failure> {
    match file {
        Some(p) => Catalog::load(p),
        None => Catalog::builtin(),
    }
    .map_err(|e| Failure {
        code: 6,
        message: e.to_string(),
    })
}

fn unavailable_code(u: &Unavailable) -> u8 {
    match u {
        Unavailable::NoSuchCpu => 2,
        Unavailable::NoDriver | Unavailable::CpuLacksMsr => 3,
        Unavailable::PermissionDenied => 5,
        Unavailable::Io(_) => 7,
    }
}

fn is_ppin(entry_name: &str) -> bool {
    matches!(entry_name, "MSR_PPIN" | "MSR_AMD_PPIN")
}

fn cmd_list(json: bool, catalog_file: &Option<PathBuf>) -> Result<(), Failure> {
    let catalog = load_catalog(catalog_file)?;
    let mut out = String::new();
    if json {
        out = serde_json::to_string_pretty(catalog.entries()).map_err(|e| Failure {
            code: 7,
            message: e.to_string(),
        })?;
        out.push('\n');
    } else {
        out.push_str(&format!(
            "{:<12} {:<28} {:<6} {:<8} {:<10} FIELDS\n",
            "INDEX", "NAME", "VENDOR", "SCOPE", "RULE"
        ));
        for e in catalog.entries() {
            let rule = match &e.rule {
                msr_probe::Rule::Equal => "equal".to_owned(),
                msr_probe::Rule::Mask { mask } => format!("mask {mask:#x}"),
                msr_probe::Rule::Monotonic => "monotonic".to_owned(),
                msr_probe::Rule::PerCpu => "per-cpu".to_owned(),
                msr_probe::Rule::Ignore { .. } => "ignore".to_owned(),
            };
            let fields: Vec<String> = e
                .fields
                .iter()
                .map(|f| format!("{}[{}]", f.name, f.bits))
                .collect();
            out.push_str(&format!(
                "{:<12} {:<28} {:<6} {:<8} {:<10} {}\n",
                e.index.to_string(),
                e.name,
                format!("{:?}", e.vendor).to_lowercase(),
                format!("{:?}", e.scope).to_lowercase(),
                rule,
                fields.join(" ")
            ));
        }
    }
    print_stdout(&out)
}

fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut so = std::io::stdout().lock();
    so.write_all(text.as_bytes())
        .and_then(|_| so.flush())
        .map_err(|e| Failure {
            code: 7,
            message: format!("writing stdout: {e}"),
        })
}

fn cmd_read(a: Args) -> Result<(), Failure> {
    let catalog = load_catalog(&a.catalog_file)?;
    let reader = DevMsr::new(
        a.dev_root.clone().unwrap_or_else(|| "/dev/cpu".into()),
        a.sys_root
            .clone()
            .unwrap_or_else(|| "/sys/devices/system/cpu".into()),
    );
    let mut msrs: Vec<MsrIndex> = Vec::new();
    for m in &a.msrs {
        msrs.push(catalog.resolve(m).map_err(|e| usage(e.to_string()))?);
    }
    if a.catalog_all {
        msrs.extend(catalog.indices());
    }
    let cpus = if a.all {
        reader.online_cpus()
    } else {
        vec![a.cpu.unwrap_or(0)]
    };
    let report = ProbeReport::collect(
        &reader,
        &catalog,
        &cpus,
        &msrs,
        Fingerprint::of_running_system(),
    );

    // Reasons a read could not be attempted: one line per reason, naming the CPUs.
    let mut reasons: BTreeMap<(u8, String), BTreeSet<u32>> = BTreeMap::new();
    for (cpu, r) in report.iter() {
        if let Reading::Unavailable(u) = &r.reading {
            reasons
                .entry((unavailable_code(u), u.to_string()))
                .or_default()
                .insert(cpu);
        }
    }
    let all_unavailable = report
        .iter()
        .all(|(_, r)| matches!(r.reading, Reading::Unavailable(_)));
    let rdmsr_mode = msrs.len() == 1 && !a.decode && !a.json;

    if a.json {
        let doc = serde_json::to_string_pretty(&report).map_err(|e| Failure {
            code: 7,
            message: e.to_string(),
        })?;
        print_stdout(&(doc + "\n"))?;
    } else if rdmsr_mode {
        let mut out = String::new();
        for (cpu, r) in report.iter() {
            match &r.reading {
                Reading::Value(v) => out.push_str(&(a.format.render(*v) + "\n")),
                Reading::Fault(_) => {
                    print_stdout(&out)?;
                    return Err(Failure {
                        code: 4,
                        message: format!(
                            "CPU {cpu} cannot read MSR {} ({}): the CPU raised #GP",
                            r.index, r.name
                        ),
                    });
                }
                Reading::Unavailable(u) => {
                    print_stdout(&out)?;
                    return Err(Failure {
                        code: unavailable_code(u),
                        message: format!("cpu {cpu}: {u}"),
                    });
                }
            }
        }
        return print_stdout(&out);
    } else if !all_unavailable {
        print_stdout(&table(&report, &catalog, a.decode))?;
    }
    let code = reasons.keys().map(|(c, _)| *c).max();
    match code {
        None => Ok(()),
        Some(code) => {
            let lines: Vec<String> = reasons
                .into_iter()
                .map(|((_, why), cpus)| {
                    let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
                    let noun = if cpus.len() == 1 { "cpu" } else { "cpus" };
                    format!("{noun} {}: {why}", list.join(","))
                })
                .collect();
            Err(Failure {
                code,
                message: lines.join("\nmsr-probe: "),
            })
        }
    }
}

fn table(report: &ProbeReport, catalog: &Catalog, decode: bool) -> String {
    let mut out = format!(
        "{:<4} {:<12} {:<28} {:<20} NOTE\n",
        "CPU", "MSR", "NAME", "VALUE"
    );
    for c in &report.cpus {
        for r in &c.readings {
            let note = if is_ppin(&r.name) {
                match c.sysfs_ppin {
                    Some(v) => format!("kernel topology/ppin: {v:#018x}"),
                    None => "kernel topology/ppin: none".to_owned(),
                }
            } else {
                String::new()
            };
            let value = match &r.reading {
                Reading::Value(v) => format!("{v:#018x}"),
                Reading::Fault(f) => f.to_string(),
                Reading::Unavailable(u) => format!("unavailable: {}", short(u)),
            };
            let row = format!(
                "{:<4} {:<12} {:<28} {:<20} {}",
                c.cpu,
                r.index.to_string(),
                r.name,
                value,
                note
            );
            out.push_str(row.trim_end());
            out.push('\n');
            if let (true, Some(v), Some(e)) = (decode, r.reading.value(), catalog.get(r.index)) {
                for f in e.decode(v) {
                    out.push_str(&format!(
                        "{:<4} {:<12}   {:<26} {:#x}  [bits {}]\n",
                        "", "", f.name, f.value, f.bits
                    ));
                }
            }
        }
    }
    out
}

fn short(u: &Unavailable) -> &'static str {
    match u {
        Unavailable::NoDriver => "no msr driver",
        Unavailable::NoSuchCpu => "no such CPU",
        Unavailable::CpuLacksMsr => "no MSR support",
        Unavailable::PermissionDenied => "permission denied",
        Unavailable::Io(_) => "I/O error",
    }
}

/// The real system for `/init`: mounts with nix, ends with reboot(2).
struct LinuxSystem {
    reader: DevMsr,
    console: std::io::Stdout,
    /// Only PID 1 mounts and ends the machine; `msr-probe init` run by hand on a host prints
    /// the framed report and returns, so trying it never reboots anyone's workstation.
    pid1: bool,
}

impl InitSystem for LinuxSystem {
    fn mount_filesystems(&mut self) -> Result<(), String> {
        use nix::mount::{mount, MsFlags};
        if !self.pid1 {
            return Ok(());
        }
        let mut problems = Vec::new();
        for (src, target, fstype) in [
            ("proc", "/proc", "proc"),
            ("sysfs", "/sys", "sysfs"),
            ("devtmpfs", "/dev", "devtmpfs"),
        ] {
            let _ = std::fs::create_dir_all(target);
            if let Err(e) = mount(
                Some(src),
                target,
                Some(fstype),
                MsFlags::empty(),
                None::<&str>,
            ) {
                if e != nix::errno::Errno::EBUSY {
                    problems.push(format!("{target}: {e}"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
    fn reader(&self) -> &dyn MsrReader {
        &self.reader
    }
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_running_system()
    }
    fn console(&mut self) -> &mut dyn Write {
        &mut self.console
    }
    fn write_memory(&mut self, addr: u64, bytes: &[u8]) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/mem")
            .map_err(|e| format!("/dev/mem: {e} (the guest kernel needs CONFIG_DEVMEM)"))?;
        mem.write_all_at(bytes, addr)
            .map_err(|e| format!("/dev/mem at {addr:#x}: {e}"))
    }
    fn end(&mut self, mode: EndMode) -> String {
        use nix::sys::reboot::{reboot, RebootMode};
        if !self.pid1 {
            return "not PID 1: the machine is left running".into();
        }
        nix::unistd::sync();
        let how = match mode {
            EndMode::Reboot => RebootMode::RB_AUTOBOOT,
            EndMode::PowerOff => RebootMode::RB_POWER_OFF,
            EndMode::Halt => RebootMode::RB_HALT_SYSTEM,
        };
        match reboot(how) {
            Ok(never) => match never {},
            Err(e) => format!("reboot: {e}"),
        }
    }
}

fn cmd_init() -> Result<(), Failure> {
    let pid1 = std::process::id() == 1;
    let mut sys = LinuxSystem {
        reader: DevMsr::default(),
        console: std::io::stdout(),
        pid1,
    };
    let catalog = load_catalog(&None)?;
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match InitConfig::from_env(&env, &catalog) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                sys.console,
                "msr-probe init: {e}; reading the whole catalog"
            );
            InitConfig {
                msrs: catalog.indices(),
                end: EndMode::Reboot,
                stream: "msr-probe".into(),
                report_window: None,
            }
        }
    };
    let why = run_init(&mut sys, &config, &catalog);
    if !pid1 {
        return Ok(());
    }
    let _ = writeln!(
        sys.console,
        "msr-probe init: could not end the machine: {why}"
    );
    // PID 1 must never exit (the kernel would panic); wait for the VMM's deadline.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = if std::process::id() == 1 {
        cmd_init()
    } else {
        parse_args(&argv).and_then(|cmd| match cmd {
            Command::Read(a) => cmd_read(a),
            Command::List { json, catalog_file } => cmd_list(json, &catalog_file),
            Command::Init => cmd_init(),
            Command::Help => print_stdout(HELP),
            Command::Version => {
                print_stdout(concat!("msr-probe ", env!("CARGO_PKG_VERSION"), "\n"))
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("msr-probe: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
