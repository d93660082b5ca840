//! The `kvmcap` command line: clap definitions (help per subcommand, `--version`,
//! `--opt=value`, suggestions for typos, stray arguments refused), the exit-code contract
//! ([`exit`]), and the commands themselves ([`app`]).

pub mod app;
pub mod exit;
mod values;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::backend::Backend;
use crate::features::Announce;
use crate::report::style::ColorChoice;
use crate::report::{Format, OutputOptions};
use crate::vmm::error::{Limits, DEFAULT_MAX_VCPUS};

/// kvmcap: negotiate KVM capabilities from data, run a guest, and show exactly what it sees.
#[derive(Debug, Parser)]
#[command(
    name = "kvmcap",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The KVM device.
    #[arg(long, global = true, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm: PathBuf,
    /// Your own feature and scenario files (DIR/features/NAME.toml, DIR/scenarios/NAME.toml),
    /// found by name before the built-in ones.
    #[arg(long, global = true, value_name = "DIR", env = crate::fixtures::ENV)]
    pub fixtures: Option<PathBuf>,
    /// Show every row of a table (without it: the checks that decided, every failure, and
    /// a count of the rest).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Colour PASS and FAIL: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every capability of the running KVM, asked on /dev/kvm and on a VM.
    Caps(CapsArgs),
    /// Read MSRs in the bare long-mode guest on every vCPU and judge each reading.
    ///
    /// Default MSRs: the feature's. --timed measures each access in the guest
    /// (lfence; rdtsc) and reports its TSC ticks.
    Probe(ProbeArgs),
    /// Write the bare probe as a multiboot image for another VMM, or read what its guest wrote.
    ///
    /// --out prints the QEMU command that runs the image (all vCPUs' reads run on the boot CPU,
    /// in turn); --dump reads that guest's debug-console output back.
    Image(ImageArgs),
    /// Run a scenario: a built-in name, one of --fixtures DIR, or a .toml path.
    ///
    /// Without --backend, every backend the scenario supports (a backend this kernel cannot
    /// do is skipped, and said so).
    Run(RunArgs),
    /// Generated cases: every state the feature's rules let a guest reach, every write class
    /// and read in each, compared with the rules.
    ///
    /// Each case runs in its own VM; with --vcpus 2 also from the other vCPU. Every
    /// difference is printed with its shortest case as a scenario file (--out DIR writes them).
    Explore(ExploreArgs),
    /// Boot a Linux guest whose /init is msr-probe and judge what it read on every CPU.
    ///
    /// Default MSRs: the whole catalog; the guest kernel's topology/ppin is checked too.
    Verify(VerifyArgs),
    /// List the built-in and your own features and scenarios, or the catalog's MSRs.
    List(ListArgs),
    /// The lab host's /init (also chosen when kvmcap runs as PID 1): runs KVMCAP_LAB_JOBS.
    #[command(hide = true)]
    LabInit,
    /// One lab job, its result as JSON on standard output (the lab's /init runs each job so).
    #[command(hide = true)]
    LabJob {
        /// The job (KIND:SUBJECT:BACKEND:VCPUS[:PAIR]).
        job: String,
    },
    /// Check lab jobs (KIND:SUBJECT:BACKEND:VCPUS[:PAIR], comma-separated) on this host:
    /// `cargo xtask lab` runs it before building or booting anything.
    #[command(hide = true)]
    LabCheck {
        /// The jobs.
        jobs: String,
    },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Manpage,
}

/// Where a report goes.
#[derive(Clone, Debug, Default, Args)]
pub struct Output {
    /// Print the JSON document instead of the table (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// What standard output carries.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,
    /// Also write the JSON document to PATH (`-`: standard output, instead of the table).
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Also write JUnit XML to PATH (`-`: standard output, instead of the table).
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Add each vCPU's exit accounting (exits by reason, time in KVM_RUN and in the VMM).
    #[arg(long)]
    pub stats: bool,
}

impl Output {
    /// The report layer's options.
    pub fn options(&self) -> OutputOptions {
        OutputOptions {
            format: self.format.unwrap_or(if self.json {
                Format::Json
            } else {
                Format::Text
            }),
            report: self.report.clone(),
            junit: self.junit.clone(),
            stats: self.stats,
        }
    }
}

/// Resource limits.
#[derive(Clone, Debug, Args)]
pub struct LimitArgs {
    /// How long a guest may run, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub deadline_ms: u64,
    /// Refuse more vCPUs than this.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_VCPUS,
          value_parser = clap::value_parser!(u8).range(1..))]
    pub max_vcpus: u8,
}

impl LimitArgs {
    /// The limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_vcpus: self.max_vcpus,
            deadline: Duration::from_millis(self.deadline_ms),
        }
    }
}

/// Where host values come from.
#[derive(Clone, Debug, Default, Args)]
pub struct HostArgs {
    /// A host value, NAME=VALUE (an MSR name or index; repeatable).
    #[arg(long = "host-value", value_name = "NAME=VALUE")]
    pub host_values: Vec<String>,
    /// A host profile file (TOML).
    #[arg(long, value_name = "FILE")]
    pub host_profile: Option<PathBuf>,
    /// Give the guest this host's own PPIN, from /sys/devices/system/cpu/cpu0/topology/ppin
    /// (root only: the kernel keeps it 0400); never done unasked.
    #[arg(long)]
    pub host_ppin: bool,
}

/// Which of the feature's vendor MSR pairs the guest's CPUID announces.
#[derive(Clone, Debug, Args)]
pub struct PairArg {
    /// Which of the feature's vendor MSR pairs the guest's CPUID announces; KVM gates the
    /// pairs on the guest's CPUID, so one host exercises both vendors' paths.
    #[arg(long, value_enum, default_value_t = Announce::Vendor)]
    pub pair: Announce,
}

/// Which MSRs to read.
#[derive(Clone, Debug, Default, Args)]
pub struct MsrArgs {
    /// An MSR to read (a catalog name or an index; repeatable).
    #[arg(long = "msr", value_name = "MSR")]
    pub msrs: Vec<String>,
    /// Every MSR of the catalog.
    #[arg(long)]
    pub catalog: bool,
}

/// `kvmcap caps`.
#[derive(Debug, Args)]
pub struct CapsArgs {
    /// Output.
    #[command(flatten)]
    pub out: Output,
}

/// `kvmcap probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The guest: only `bare` (Linux guests run with `kvmcap verify`).
    #[arg(long, value_parser = ["bare"], default_value = "bare")]
    pub guest: String,
    /// The feature: a built-in name, one of --fixtures DIR, or a .toml path.
    #[arg(long, value_name = "F", default_value = "ppin")]
    pub feature: String,
    /// How the feature reaches the guest.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub vcpus: u8,
    /// Which MSRs.
    #[command(flatten)]
    pub msrs: MsrArgs,
    /// Host values.
    #[command(flatten)]
    pub host: HostArgs,
    /// The pair.
    #[command(flatten)]
    pub pair: PairArg,
    /// Read the MSR list this many times (for measuring access cost).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub repeat: u16,
    /// Bracket every access with lfence; rdtsc in the guest and report the ticks.
    #[arg(long)]
    pub timed: bool,
    /// Give the VM an in-kernel irqchip (local APICs, I/O APIC, PIC).
    #[arg(long)]
    pub irqchip: bool,
    /// Output.
    #[command(flatten)]
    pub out: Output,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `kvmcap image`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("mode").required(true).args(["out_file", "dump"]))]
pub struct ImageArgs {
    /// Write the multiboot image to FILE.
    #[arg(long = "out", value_name = "FILE")]
    pub out_file: Option<PathBuf>,
    /// Read what the image's guest wrote to QEMU's debug console.
    #[arg(long, value_name = "FILE")]
    pub dump: Option<PathBuf>,
    /// The feature whose MSRs are read (without --msr/--catalog).
    #[arg(long, value_name = "F", default_value = "ppin")]
    pub feature: String,
    /// Which MSRs.
    #[command(flatten)]
    pub msrs: MsrArgs,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub vcpus: u8,
    /// Time every access (lfence; rdtsc).
    #[arg(long)]
    pub timed: bool,
    /// Output (for --dump).
    #[command(flatten)]
    pub out: Output,
}

/// `kvmcap run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario: a built-in name, one of --fixtures DIR, or a .toml path.
    pub scenario: String,
    /// Only this backend (default: every backend the scenario supports).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub vcpus: u8,
    /// The pair.
    #[command(flatten)]
    pub pair: PairArg,
    /// Output.
    #[command(flatten)]
    pub out: Output,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `kvmcap explore`.
#[derive(Debug, Args)]
pub struct ExploreArgs {
    /// The feature: a built-in name, one of --fixtures DIR, or a .toml path.
    pub feature: String,
    /// The backend the cases run against.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// 1 (one vCPU) or 2 (also every probe from the other vCPU).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub vcpus: u8,
    /// The pair.
    #[command(flatten)]
    pub pair: PairArg,
    /// Host values.
    #[command(flatten)]
    pub host: HostArgs,
    /// Write each difference's scenario file into DIR.
    #[arg(long = "out", value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Output.
    #[command(flatten)]
    pub out: Output,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `kvmcap verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The guest: only `linux` (the bare guest runs with `kvmcap probe`).
    #[arg(long, value_parser = ["linux"], default_value = "linux")]
    pub guest: String,
    /// The guest kernel (a bzImage; build one with `cargo xtask kernel build`).
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: PathBuf,
    /// The guest initramfs (default: guest-initramfs.cpio beside kvmcap, else the one
    /// `cargo xtask initramfs` builds).
    #[arg(long, value_name = "CPIO")]
    pub initramfs: Option<PathBuf>,
    /// The feature: a built-in name, one of --fixtures DIR, or a .toml path.
    #[arg(long, value_name = "F", default_value = "ppin")]
    pub feature: String,
    /// How the feature reaches the guest.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub vcpus: u8,
    /// An MSR to read (repeatable; default: the whole catalog).
    #[arg(long = "msr", value_name = "MSR")]
    pub msrs: Vec<String>,
    /// Host values.
    #[command(flatten)]
    pub host: HostArgs,
    /// The pair.
    #[command(flatten)]
    pub pair: PairArg,
    /// Guest memory in MiB.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub mem_mib: u32,
    /// Echo the guest's console.
    #[arg(long)]
    pub console: bool,
    /// The most console bytes kept.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub console_limit: u64,
    /// Extra kernel command-line words.
    #[arg(long, value_name = "WORDS", default_value = "")]
    pub cmdline: String,
    /// Output.
    #[command(flatten)]
    pub out: Output,
    /// Limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What `kvmcap list` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListWhat {
    /// Feature files.
    Features,
    /// Scenario files.
    Scenarios,
    /// The catalog's MSRs.
    Msrs,
}

/// `kvmcap list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// What to list.
    #[arg(value_enum)]
    pub what: ListWhat,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The clap command, with the exit-code table after the help.
pub fn command() -> clap::Command {
    Cli::command().after_help(exit::help_table())
}

/// Parses the command line (with the program name). `Err` carries what clap would print and
/// whether it is help or a version (exit 0) rather than a usage error.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// A clap usage error as one line: its message, its tip if any, and where help is.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines
        .next()
        .unwrap_or("bad command line")
        .trim_start_matches("error: ")
        .to_owned();
    let tip = lines
        .find_map(|l| l.strip_prefix("tip: "))
        .map(|t| format!("; {t}"))
        .unwrap_or_default();
    let usage = text
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .and_then(|u| u.split_whitespace().nth(1))
        .filter(|w| !w.starts_with(['-', '<', '[']))
        .map(|sub| format!("kvmcap {sub} --help"))
        .unwrap_or_else(|| "kvmcap --help".into());
    format!("{first}{tip} (see {usage})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Cli, clap::Error> {
        parse(std::iter::once("kvmcap").chain(s.split_whitespace()))
    }

    #[test]
    fn the_definitions_are_consistent() {
        command().debug_assert();
    }

    #[test]
    fn parses_and_refuses() {
        let c = p("probe --feature=ppin --backend user --vcpus 2 --host-value MSR_PPIN=1 --json")
            .unwrap();
        let Command::Probe(a) = c.command else {
            panic!("not probe")
        };
        assert_eq!((a.vcpus, a.backend, a.out.json), (2, Backend::User, true));
        for bad in [
            "",
            "frobnicate",
            "probe --feature ppin",
            "probe --backend magic",
            "probe --backend none --vcpus 0",
            "probe --backend none --deadline-ms 0",
            "probe --backend none --guest linux",
            "probe --backend none stray",
            "run",
            "run a b",
            "caps --bogus",
            "probe --backend none --msr",
            "explore ppin --backend user --vcpus 3",
            "image",
            "image --out a --dump b",
            "verify --backend none",
        ] {
            assert!(p(bad).is_err(), "accepted: {bad}");
        }
        let e = p("probe --backnd user").unwrap_err();
        let line = one_line(&e);
        assert!(line.contains("--backend"), "{line}");
        assert!(line.ends_with("(see kvmcap probe --help)"), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(
            p("--version").unwrap_err().kind(),
            clap::error::ErrorKind::DisplayVersion
        );
    }
}
