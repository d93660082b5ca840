//! The `kvmcap` command line: argument parsing and the exit-code contract.

use std::path::PathBuf;
use std::time::Duration;

use crate::backend::Backend;
use crate::vmm::error::Limits;

/// Exit codes (documented in README.md).
pub mod exit {
    /// Every verdict as expected.
    pub const OK: u8 = 0;
    /// At least one verdict is not as expected.
    pub const VERDICT: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// `/dev/kvm` missing, not permitted, or unusable.
    pub const KVM: u8 = 3;
    /// A required capability is missing.
    pub const CAP_MISSING: u8 = 4;
    /// `KVM_ENABLE_CAP` refused a required capability.
    pub const CAP_REFUSED: u8 = 5;
    /// A data file (catalog, feature, scenario, profile, kernel image) is bad.
    pub const INPUT: u8 = 6;
    /// The VMM failed (setup error, guest that broke its contract).
    pub const VMM: u8 = 7;
    /// A report file could not be written.
    pub const OUTPUT: u8 = 8;
    /// The guest gave no usable report (no frame, a broken or forged one, a flood).
    pub const NO_REPORT: u8 = 9;
}

/// The help text.
pub const HELP: &str = "\
kvmcap: negotiate KVM capabilities from data, run a guest, and show exactly what it sees.

USAGE:
    kvmcap caps [--json]
        every capability of the running KVM, asked on /dev/kvm and on a VM
    kvmcap probe --guest bare --feature F --backend none|user|kernel [--vcpus N]
                 [--msr M ...] [--catalog] [--host-value NAME=VALUE ...]
                 [--host-profile FILE] [--host-ppin] [--pair vendor|intel|amd|both]
                 [--repeat N] [--timed] [--irqchip] [--json] [--report PATH]
        read MSRs in the bare long-mode guest on every vCPU and judge each reading
        (default MSRs: the feature's); --timed measures each access in the guest
        (lfence; rdtsc) and reports its TSC ticks
    kvmcap image --out FILE [--feature F] [--msr M ...] [--catalog] [--vcpus N] [--timed]
        write the same bare probe as a multiboot image for another VMM and print the
        QEMU command that runs it (all vCPUs' reads run on the boot CPU, in turn)
    kvmcap image --dump FILE [--feature F] [--msr M ...] [--catalog] [--vcpus N] [--json]
        read what that image's guest wrote to QEMU's debug console
    kvmcap run SCENARIO [--backend B] [--vcpus N] [--pair P] [--json] [--report PATH]
        run a scenario (a name in fixtures/scenarios/ or a .toml path); without
        --backend, every backend the scenario supports
    kvmcap explore FEATURE --backend B [--vcpus 1|2] [--pair P] [--host-value ...]
                   [--out DIR] [--json] [--report PATH]
        generated cases: walk every state the feature's rules let a guest reach by its own
        writes, try every write class and read in each (with --vcpus 2 also from the other
        vCPU), run each case in its own VM and compare with the rules; every difference is
        printed with its shortest case as a scenario file (--out DIR writes them)
    kvmcap verify --guest linux --kernel BZIMAGE [--initramfs CPIO] --feature F
                  --backend B [--vcpus N] [--msr M ...] [--host-value NAME=VALUE ...]
                  [--host-ppin] [--pair P] [--json PATH] [--mem-mib N] [--console] [--console-limit BYTES]
                  [--cmdline WORDS]
        boot a Linux guest whose /init is msr-probe, judge what it read on every CPU
        (default MSRs: the whole catalog) and the guest kernel's topology/ppin
    kvmcap lab-init
        the lab host's /init (also chosen when kvmcap runs as PID 1): runs the jobs in
        KVMCAP_LAB_JOBS and prints each report framed on the console

COMMON OPTIONS:
    --kvm PATH          the KVM device (default /dev/kvm)
    --deadline-ms N     how long a guest may run (default 10000)
    --max-vcpus N       refuse more vCPUs than this (default 64)
    --pair P            which of the feature's vendor MSR pairs the guest's CPUID announces:
                        vendor (the guest CPU's, default), intel, amd, or both (they alias
                        one state); KVM gates the pairs on the guest's CPUID, so one host
                        exercises both vendors' paths
    --host-ppin         give the guest this host's own PPIN, read from
                        /sys/devices/system/cpu/cpu0/topology/ppin (root only: the kernel
                        keeps it 0400); never done unasked
    -h, --help          this help

FEATURES: ppin, platform-info (fixtures/features/), or a path to a feature .toml.

EXIT CODES:
    0 every verdict as expected      1 a verdict is not as expected
    2 usage                          3 /dev/kvm missing or not permitted
    4 required capability missing    5 KVM_ENABLE_CAP refused
    6 bad input file                 7 VMM failure      8 report not written
    9 the guest gave no usable report
";

/// Parsed options shared by the commands.
#[derive(Clone, Debug)]
pub struct Options {
    /// The subcommand.
    pub command: String,
    /// Positional arguments after it.
    pub positional: Vec<String>,
    /// `--json`.
    pub json: bool,
    /// `--kvm`.
    pub kvm: PathBuf,
    /// `--guest`.
    pub guest: Option<String>,
    /// `--feature`.
    pub feature: Option<String>,
    /// `--backend`.
    pub backend: Option<Backend>,
    /// `--vcpus`.
    pub vcpus: u8,
    /// `--msr`.
    pub msrs: Vec<String>,
    /// `--catalog`.
    pub catalog: bool,
    /// `--irqchip`: give the bare guest an in-kernel irqchip.
    pub irqchip: bool,
    /// `--timed`: bracket every access with `lfence; rdtsc` and report the ticks.
    pub timed: bool,
    /// `--repeat`: the MSR list read this many times (for measuring access cost).
    pub repeat: usize,
    /// `--host-value`.
    pub host_values: Vec<String>,
    /// `--host-profile`.
    pub host_profile: Option<PathBuf>,
    /// `--host-ppin`: the guest gets this host's own PPIN (root: sysfs `topology/ppin`).
    pub host_ppin: bool,
    /// `--pair`: which of the feature's vendor pairs the guest's CPUID announces.
    pub pair: crate::features::Announce,
    /// `--report`.
    pub report: Option<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// `--kernel`.
    pub kernel: Option<PathBuf>,
    /// `--initramfs`.
    pub initramfs: Option<PathBuf>,
    /// `--mem-mib`.
    pub mem_mib: u32,
    /// `--console`.
    pub console: bool,
    /// `--console-limit`.
    pub console_limit: u64,
    /// `--cmdline`.
    pub cmdline: String,
    /// `--out` (image).
    pub out: Option<PathBuf>,
    /// `--dump` (image).
    pub dump: Option<PathBuf>,
}

/// A usage error.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

/// Parses the command line (without the program name). `Ok(None)` means help was asked.
pub fn parse(args: &[String]) -> Result<Option<Options>, Usage> {
    let mut it = args.iter();
    let Some(command) = it.next() else {
        return Ok(None);
    };
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        return Ok(None);
    }
    if !matches!(
        command.as_str(),
        "caps" | "probe" | "image" | "run" | "explore" | "verify" | "lab-init"
    ) {
        return Err(Usage(format!(
            "unknown command `{command}` (expected caps, probe, image, run, explore, verify or lab-init)"
        )));
    }
    let mut o = Options {
        command: command.clone(),
        positional: Vec::new(),
        json: false,
        kvm: PathBuf::from("/dev/kvm"),
        guest: None,
        feature: None,
        backend: None,
        vcpus: 1,
        msrs: Vec::new(),
        catalog: false,
        irqchip: false,
        repeat: 1,
        timed: false,
        host_values: Vec::new(),
        host_profile: None,
        host_ppin: false,
        pair: crate::features::Announce::Vendor,
        report: None,
        limits: Limits::default(),
        kernel: None,
        initramfs: None,
        mem_mib: 256,
        console: false,
        console_limit: 1 << 20,
        cmdline: String::new(),
        out: None,
        dump: None,
    };
    let mut vcpus_given = false;
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| Usage(format!("{flag} needs a value")))
        };
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            // verify writes its JSON report to a file (`--json PATH`), as the issue asks.
            "--json" if o.command == "verify" => o.report = Some(value("--json")?.into()),
            "--json" => o.json = true,
            "--kernel" => o.kernel = Some(value("--kernel")?.into()),
            "--initramfs" => o.initramfs = Some(value("--initramfs")?.into()),
            "--console" => o.console = true,
            "--out" => o.out = Some(value("--out")?.into()),
            "--dump" => o.dump = Some(value("--dump")?.into()),
            "--cmdline" => o.cmdline = value("--cmdline")?,
            "--mem-mib" => {
                let v = value("--mem-mib")?;
                o.mem_mib = v
                    .parse()
                    .ok()
                    .filter(|n| (64..=65536).contains(n))
                    .ok_or_else(|| Usage(format!("--mem-mib `{v}`: expected 64..=65536")))?;
            }
            "--console-limit" => {
                let v = value("--console-limit")?;
                o.console_limit = v.parse().ok().filter(|n| *n >= 4096).ok_or_else(|| {
                    Usage(format!(
                        "--console-limit `{v}`: expected at least 4096 bytes"
                    ))
                })?;
            }
            "--catalog" => o.catalog = true,
            "--irqchip" => o.irqchip = true,
            "--timed" => o.timed = true,
            "--repeat" => {
                let v = value("--repeat")?;
                o.repeat = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| Usage(format!("--repeat `{v}`: expected 1..=1024")))?;
            }
            "--kvm" => o.kvm = value("--kvm")?.into(),
            "--guest" => o.guest = Some(value("--guest")?),
            "--feature" => o.feature = Some(value("--feature")?),
            "--backend" => o.backend = Some(value("--backend")?.parse().map_err(Usage)?),
            "--vcpus" => {
                let v = value("--vcpus")?;
                o.vcpus = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| Usage(format!("--vcpus `{v}`: expected 1..=255")))?;
                vcpus_given = true;
            }
            "--msr" => o.msrs.push(value("--msr")?),
            "--host-value" => o.host_values.push(value("--host-value")?),
            "--host-profile" => o.host_profile = Some(value("--host-profile")?.into()),
            "--host-ppin" => o.host_ppin = true,
            "--pair" => o.pair = value("--pair")?.parse().map_err(Usage)?,
            "--report" => o.report = Some(value("--report")?.into()),
            "--deadline-ms" => {
                let v = value("--deadline-ms")?;
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=3_600_000).contains(n))
                    .ok_or_else(|| Usage(format!("--deadline-ms `{v}`: expected 1..=3600000")))?;
                o.limits.deadline = Duration::from_millis(ms);
            }
            "--max-vcpus" => {
                let v = value("--max-vcpus")?;
                o.limits.max_vcpus = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| Usage(format!("--max-vcpus `{v}`: expected 1..=255")))?;
            }
            s if s.starts_with('-') => return Err(Usage(format!("unknown option `{s}`"))),
            s => o.positional.push(s.to_owned()),
        }
    }
    if vcpus_given && o.vcpus > o.limits.max_vcpus {
        return Err(Usage(format!(
            "--vcpus {} exceeds --max-vcpus {}",
            o.vcpus, o.limits.max_vcpus
        )));
    }
    match o.command.as_str() {
        "probe" => {
            if o.guest.as_deref().unwrap_or("bare") != "bare" {
                return Err(Usage("probe runs the bare guest (--guest bare); Linux guests run with `kvmcap verify`".into()));
            }
            if o.backend.is_none() {
                return Err(Usage("probe needs --backend none|user|kernel".into()));
            }
        }
        "image" if o.out.is_some() == o.dump.is_some() => {
            return Err(Usage(
                "image needs either --out FILE (write the image) or --dump FILE (read its output)"
                    .into(),
            ));
        }
        "run" if o.positional.len() != 1 => {
            return Err(Usage("run needs exactly one SCENARIO".into()));
        }
        "explore" => {
            if o.positional.len() != 1 {
                return Err(Usage("explore needs exactly one FEATURE".into()));
            }
            if o.backend.is_none() {
                return Err(Usage("explore needs --backend none|user|kernel".into()));
            }
            if o.vcpus > 2 {
                return Err(Usage("explore runs on 1 or 2 vCPUs".into()));
            }
        }
        "verify" => {
            if o.guest.as_deref().unwrap_or("linux") != "linux" {
                return Err(Usage("verify boots a Linux guest (--guest linux); the bare guest runs with `kvmcap probe`".into()));
            }
            if o.kernel.is_none() {
                return Err(Usage(
                    "verify needs --kernel BZIMAGE (build one with `cargo xtask kernel build`)"
                        .into(),
                ));
            }
            if o.backend.is_none() {
                return Err(Usage("verify needs --backend none|user|kernel".into()));
            }
        }
        _ => {}
    }
    Ok(Some(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<Options>, Usage> {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn parses_and_refuses() {
        let o = p("probe --guest bare --feature ppin --backend user --vcpus 2 --host-value MSR_PPIN=1 --json").unwrap().unwrap();
        assert_eq!((o.vcpus, o.backend, o.json), (2, Some(Backend::User), true));
        assert!(p("").unwrap().is_none());
        assert!(p("--help").unwrap().is_none());
        assert!(p("frobnicate").is_err());
        assert!(p("probe --feature ppin").is_err());
        assert!(p("probe --backend magic").is_err());
        assert!(p("probe --backend none --vcpus 0").is_err());
        assert!(p("probe --backend none --vcpus 9 --max-vcpus 4").is_err());
        assert!(p("probe --backend none --deadline-ms 0").is_err());
        assert!(p("probe --backend none --guest linux").is_err());
        assert!(p("run").is_err());
        assert!(p("caps --bogus").is_err());
        assert!(p("probe --backend none --msr").is_err());
    }
}
