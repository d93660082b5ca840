//! The `msr-probe` command: rdmsr's command line (see [`args`]), its exit codes (see
//! [`exit`]), where output goes (see [`output`]).

pub mod args;
pub mod exit;
pub mod guest;
pub mod output;
pub mod read;

use args::Command;
use exit::{CliError, Exit};
use output::Target;

const HELP_HEAD: &str = "\
msr-probe: read model-specific registers through /dev/cpu/N/msr, by number or by name.

USAGE:
    msr-probe [OPTIONS] MSR...      read MSRs (numbers like 0x4f or names like PPIN)
    msr-probe [OPTIONS] --catalog   read every MSR of the catalog
    msr-probe list [--json]         print the catalog
    msr-probe init                  guest /init mode (also chosen when running as PID 1)

Options are parsed as rdmsr parses them (bundled: -ax0, -p1, -f7:0; long options may be
abbreviated; options may follow the MSR).

CPU SELECTION (as rdmsr; the last of -a and -p wins):
    -a, --all                 every CPU listed under /dev/cpu (ascending)
    -p, --processor N         CPU N (default 0; also --cpu)

VALUE FORMAT (as rdmsr; for a single MSR without --decode/--json):
    -x, --hexadecimal         lowercase hex (default)
    -X, --capital-hexadecimal uppercase hex
    -d, --decimal             decimal; with the field's top bit set, minus the other bits
                              (rdmsr's rule, not two's complement)
    -u, --unsigned-decimal    unsigned decimal (with -c: a U suffix)
    -o, --octal               octal
    -r, --raw                 the 8 raw bytes (with -c: a C array)
    -0, --zero-pad            pad to the field's full width (not with -c -d or -c -u)
    -c, --c-language          C notation (0x, 0 or U)
    -f, --bitfield HIGH:LOW   print only these bits

BEYOND RDMSR:
    MSR...                    several MSRs, and names from the catalog (a table)
    --catalog                 read every catalog MSR
    --decode                  decode each value into its named fields
    --json                    one JSON document: machine fingerprint and every reading
    --output PATH             write there (- is stdout); a regular file is replaced
                              atomically and only on success, a pipe or device written to
    --catalog-file PATH       use this catalog instead of the built-in one
    --dev-root DIR            device root (default /dev/cpu)
    --sys-root DIR            sysfs CPU root (default /sys/devices/system/cpu)
    -h, --help                this help (on stdout; rdmsr prints its usage on stderr)
    -V, --version             the version (on stdout)

Where msr-probe differs from rdmsr on purpose: several MSRs, names and _ in numbers are
accepted; an MSR number must fit 32 bits (rdmsr truncates it) and may not be empty; -p takes
any CPU number (rdmsr 1.3: up to 255) but not an empty one; -a prints CPUs in ascending order
(rdmsr: the reverse of /dev/cpu's directory order) and an empty or missing /dev/cpu is a
missing driver (rdmsr: nothing and exit 0, or a crash); errors are one line on stderr naming
the cause; permission denied and other I/O errors have their own exit codes (rdmsr: 127).

The PPIN MSRs are shown next to the kernel's own cpuN/topology/ppin.

EXIT CODES (0, 2, 3, 4 and 127 as rdmsr):
";

/// The help text, its exit codes from [`Exit::table`].
pub fn help() -> String {
    format!("{HELP_HEAD}{}", Exit::table())
}

/// Runs the command line (the arguments after the program name); returns the exit code.
/// Every failure is printed as `msr-probe: ...` on stderr.
pub fn run(argv: &[String]) -> u8 {
    let result = args::parse(argv).and_then(|cmd| match cmd {
        Command::Read(a) => {
            let target = Target::from_arg(a.output.as_deref());
            let outcome = read::read(&a);
            match (outcome.failure, &target) {
                // A file gets the report only when it is complete; stdout gets what rdmsr
                // would have printed before failing.
                (Some(f), Target::Path(_)) => Err(f),
                (Some(f), Target::Stdout) => target.write(&outcome.output).and(Err(f)),
                (None, _) => target.write(&outcome.output),
            }
        }
        Command::List(a) => Target::from_arg(a.output.as_deref()).write(&read::list(&a)?),
        Command::Init => guest::cmd_init(),
        Command::Help => Target::Stdout.write(help().as_bytes()),
        Command::Version => {
            Target::Stdout.write(concat!("msr-probe ", env!("CARGO_PKG_VERSION"), "\n").as_bytes())
        }
    });
    match result {
        Ok(()) => Exit::Success.code(),
        Err(e) => report(&e),
    }
}

fn report(e: &CliError) -> u8 {
    eprintln!("msr-probe: {e}");
    e.exit().code()
}
