//! `cargo xtask`'s command line (clap): help per subcommand, `--opt=value`, suggestions,
//! stray arguments refused; and its exit-code table, derived from [`XtaskError`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use xtask::kernel::Kernel;
use xtask::pbv::Tier;
use xtask::results::Shard;
use xtask::XtaskError;

/// The exit codes: 0, 1 and 2, then one per [`XtaskError`] kind.
pub const EXIT_TABLE: &[(u8, &str)] = &[
    (0, "every verdict as expected"),
    (
        1,
        "a verdict is not as expected (a job, check or patch failed)",
    ),
    (2, "usage: a bad command line or a bad lab job"),
    (3, "a build step failed"),
    (
        4,
        "an output is not what it must be, or could not be written",
    ),
    (
        5,
        "a tool or input is missing (the message names the command that installs it)",
    ),
    (
        6,
        "the lab failed as a whole (hung, panicked, or no report)",
    ),
    (7, "a patch of the series does not apply"),
    (8, "a tool could not be started"),
];

/// The exit code of an error.
pub fn exit_code(e: &XtaskError) -> u8 {
    e.exit_code()
}

/// The table as help and README show it.
pub fn help_table() -> String {
    let mut s = String::from("Exit codes:\n");
    for (c, w) in EXIT_TABLE {
        s.push_str(&format!("  {c}  {w}\n"));
    }
    s
}

/// The table as README.md carries it.
#[cfg(test)]
pub fn markdown_table() -> String {
    let mut s = String::from("| exit | meaning |\n|---|---|\n");
    for (c, w) in EXIT_TABLE {
        s.push_str(&format!("| {c} | {w} |\n"));
    }
    s
}

/// cargo xtask: kvmcap's build, lab and test loop.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Which kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    /// The main line: Debian's newest linux-source (7.2.13), kernel-patches/.
    Newest,
    /// The stable backport: Debian's linux-source-6.12, kernel-patches/6.12/.
    #[value(name = "6.12")]
    V612,
    /// Both.
    All,
}

/// Where the kernel comes from.
#[derive(Clone, Debug, Args)]
pub struct KernelArgs {
    /// Which kernel (each is cached on its own).
    #[arg(long, value_enum, default_value_t = KernelChoice::Newest)]
    pub kernel: KernelChoice,
    /// Your git checkout instead of Debian's source: the series goes onto the temporary branch
    /// kvmcap/KERNEL with git am -3 in a worktree under target/ (your branch and tree are not
    /// touched; a conflict names the patch and file); the build is out of tree.
    #[arg(long, value_name = "DIR")]
    pub kernel_tree: Option<PathBuf>,
    /// With --kernel-tree: the tree as it stands, no series.
    #[arg(long, requires = "kernel_tree")]
    pub as_is: bool,
}

impl KernelArgs {
    /// The kernels chosen.
    pub fn kernels(&self) -> Vec<Kernel> {
        match self.kernel {
            KernelChoice::Newest => vec![Kernel::Newest],
            KernelChoice::V612 => vec![Kernel::Stable612],
            KernelChoice::All => Kernel::ALL.to_vec(),
        }
    }

    /// Where the source comes from.
    pub fn source(&self) -> xtask::pipeline::Source<'_> {
        match (self.kernel_tree.as_deref(), self.as_is) {
            (None, _) => xtask::pipeline::Source::Debian,
            (Some(d), false) => xtask::pipeline::Source::GitTree(d),
            (Some(d), true) => xtask::pipeline::Source::AsIs(d),
        }
    }
}

/// How a lab run reports and which share of the jobs it runs.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Run only share K of N of the jobs (deterministic; a kernel/user pair stays together);
    /// `cargo xtask merge-results` joins the shares.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// How many lab QEMUs share the jobs on this machine (default: one per host CPU, at
    /// most 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=16))]
    pub labs: Option<u8>,
    /// Also write JUnit XML of every job (and check) to PATH (`-`: standard output).
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// What standard output carries: the table, or KTAP v1.
    #[arg(long, value_enum, default_value_t = OutFormat::Text)]
    pub format: OutFormat,
    /// Where each kernel's results file goes (default: beside the reports, under
    /// target/kvmcap/); merge-results reads these.
    #[arg(long, value_name = "DIR")]
    pub results: Option<PathBuf>,
    /// Run every job, even one that passed in a lab booted from the same kernel, initramfs
    /// and QEMU (kept under target/kvmcap/lab-cache/ and shown as `cached`).
    #[arg(long)]
    pub no_cache: bool,
}

/// Standard output's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    /// The table.
    Text,
    /// KTAP v1.
    Ktap,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fully static binaries (glibc, +crt-static) of msr-probe (default) and/or kvmcap.
    Static {
        /// The packages.
        #[arg(value_parser = ["msr-probe", "kvmcap"])]
        packages: Vec<String>,
    },
    /// The guest initramfs (static msr-probe as /init).
    Initramfs,
    /// The kernel source and build.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Apply the kernel's series to a copy of its source, without fuzz (a failing hunk names
    /// its file); `patch check`, `patch export`.
    Patch {
        /// Where the kernel comes from.
        #[command(flatten)]
        k: KernelArgs,
        /// check or export.
        #[command(subcommand)]
        step: Option<PatchCommand>,
    },
    /// bindgen the series' uAPI constants into harness/src/kvm/ppin_uapi.rs (needs
    /// libclang-dev).
    Codegen,
    /// Build the patched kernel and the lab initramfs, boot the lab (QEMU TCG, emulated AMD
    /// SVM), run the jobs inside, print the verdicts.
    ///
    /// Every job is checked on this host before anything is built or booted.
    Lab {
        /// A scenario to run with every backend it lists: a built-in name, or your own
        /// .toml file (it goes into the lab). Repeatable.
        #[arg(long, value_name = "NAME|FILE")]
        scenario: Vec<String>,
        /// A lab job, KIND:SUBJECT:BACKEND:VCPUS[:PAIR]. Repeatable.
        #[arg(long, value_name = "JOB")]
        job: Vec<String>,
        /// Your own feature and scenario files (DIR/features/*.toml, DIR/scenarios/*.toml),
        /// taken into the lab.
        #[arg(long, value_name = "DIR")]
        fixtures: Option<PathBuf>,
        /// Where the kernel comes from.
        #[command(flatten)]
        k: KernelArgs,
        /// Reporting and sharding.
        #[command(flatten)]
        run: RunArgs,
    },
    /// The whole loop: patch, build, boot the lab, run the series' selftest and every PPIN
    /// scenario, explore and verify with backend kernel and user on 1 and 2 vCPUs; kernel must
    /// equal user and the committed expectations (xtask/tests/expected/).
    PatchBootVerify {
        /// Rewrite the committed expectations from this run (full tier only).
        #[arg(long)]
        bless: bool,
        /// How much of the matrix: `edit` is the edit loop's tier (the selftest and the kernel
        /// backend's scenarios and probe, both pairs, against the committed expectations).
        #[arg(long, value_enum, default_value_t = Tier::Full)]
        tier: Tier,
        /// Where the kernel comes from.
        #[command(flatten)]
        k: KernelArgs,
        /// Reporting and sharding.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Join the results files of a sharded run (every shard once) into one table, KTAP and
    /// JUnit, as one unsharded run gives them.
    MergeResults {
        /// The results files (results.json of each shard).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write JUnit XML to PATH (`-`: standard output).
        #[arg(long, value_name = "PATH")]
        junit: Option<PathBuf>,
        /// What standard output carries.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
    },
    /// Mutants of the main line's PPIN handlers, each built and run in the lab; rewrites
    /// kernel-patches/MUTANTS.md with the score.
    Mutants,
    /// Stock KVM against the feature files written from the manuals (model = "stock"), in the
    /// lab and on this host; rewrites docs/conformance.md.
    Conformance,
    /// kvmcap against its peers, side by side; rewrites BENCHMARKS.md and benchmarks.svg.
    Bench {
        /// Fewer runs.
        #[arg(long)]
        quick: bool,
        /// Also write the measurements as JSON.
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Skip the edit loops (they rebuild the kernel).
        #[arg(long)]
        no_edit_loop: bool,
        /// Skip the lab benchmarks.
        #[arg(long)]
        no_lab: bool,
        /// Measure nothing: redraw benchmarks.svg from the JSON a run wrote.
        #[arg(long, value_name = "JSON", conflicts_with_all = ["quick", "json", "no_edit_loop", "no_lab"])]
        redraw: Option<PathBuf>,
    },
    /// The cargo-fuzz targets of fuzz/ (cargo-fuzz is installed when missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// The targets (default: all).
        targets: Vec<String>,
    },
    /// Review snapshot changes: cargo insta review for the tests' snapshots and for
    /// patch-boot-verify's expectations (cargo-insta is installed when missing).
    Review,
    /// kvmcap's shell completions (bash, zsh, fish) and man page, into target/kvmcap/share/.
    Docs,
}

/// `cargo xtask kernel ...`.
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// The kernel source, extracted under target/kernel/ (newest: with a private apt tree).
    Fetch {
        /// Where the kernel comes from.
        #[command(flatten)]
        k: KernelArgs,
    },
    /// tinyconfig + fixtures/kernel/kvmcap.config, cached by source and fragment.
    Build {
        /// Where the kernel comes from.
        #[command(flatten)]
        k: KernelArgs,
    },
}

/// `cargo xtask patch check|export`.
#[derive(Debug, Subcommand)]
pub enum PatchCommand {
    /// Each patch builds on its own (arch/x86/kvm/ with KVM_WERROR=y after patches 1..N).
    Check,
    /// The main line as it is posted: renumbered, signed by your git identity, cover letter,
    /// checkpatch and get_maintainer output.
    Export {
        /// Where (default target/kvmcap/export/).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// git am the export onto a pristine git tree and build it with KVM_WERROR=y.
        #[arg(long)]
        check: bool,
    },
}

/// Parses the command line, with the exit-code table after the help.
pub fn parse(args: &[String]) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let m = Cli::command()
        .after_help(help_table())
        .try_get_matches_from(args)?;
    Cli::from_arg_matches(&m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_and_refuses() {
        let p = |s: &str| Cli::try_parse_from(std::iter::once("xtask").chain(s.split_whitespace()));
        assert!(p("patch-boot-verify --kernel=all --shard 2/3").is_ok());
        assert!(p("lab --job run:ppin-enable:user:1 --labs 2").is_ok());
        assert!(p("patch export --check").is_ok());
        for bad in [
            "frobnicate",
            "lab --shard 3/2",
            "lab --kernel 5.10",
            "lab stray",
            "patch --as-is",
            "merge-results",
            "patch-boot-verify --blesss",
        ] {
            assert!(p(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn readme_carries_the_exit_table() {
        let readme = std::fs::read_to_string(xtask::workspace_root().join("README.md")).unwrap();
        assert!(
            readme.contains(&markdown_table()),
            "README.md must carry:\n{}",
            markdown_table()
        );
    }
}
