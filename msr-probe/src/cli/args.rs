//! The command line, parsed as rdmsr's `getopt_long()` parses it: the same short options
//! (`hVxXdoruc0ap:f:`), bundling (`-ax0`, `-p1`, `-f7:0`), GNU argument permutation, `--`,
//! rdmsr's long options with `--name=value` and unique abbreviations, and the same rules for
//! `-p` (`strtoul(.., 0)`, the whole text) and `-f` (`sscanf("%u:%u")`). msr-probe's own long
//! options come after rdmsr's: an abbreviation rdmsr accepts means what it means in rdmsr.

use std::path::PathBuf;

use crate::catalog::BitRange;
use crate::cli::exit::CliError;
use crate::format::{Radix, ValueFormat};

/// Which CPUs to read (`-a` and `-p` override each other; the last one wins, as in rdmsr).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpus {
    /// `-p N` (default CPU 0).
    One(u32),
    /// `-a`: every CPU with a directory under `/dev/cpu`.
    All,
}

impl Default for Cpus {
    fn default() -> Self {
        Self::One(0)
    }
}

/// Options of a read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadArgs {
    /// The CPUs.
    pub cpus: Cpus,
    /// rdmsr's value format.
    pub format: ValueFormat,
    /// `--decode`.
    pub decode: bool,
    /// `--json`.
    pub json: bool,
    /// `--catalog`.
    pub catalog_all: bool,
    /// `--catalog-file`.
    pub catalog_file: Option<PathBuf>,
    /// `--dev-root`.
    pub dev_root: Option<PathBuf>,
    /// `--sys-root`.
    pub sys_root: Option<PathBuf>,
    /// `--output` (`-` is stdout).
    pub output: Option<String>,
    /// The MSR operands, numbers or names.
    pub msrs: Vec<String>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read MSRs.
    Read(ReadArgs),
    /// `list`: print the catalog.
    List(ReadArgs),
    /// `init`: guest `/init` mode.
    Init,
    /// `-h`.
    Help,
    /// `-V`.
    Version,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Opt {
    Short(char),
    Decode,
    Json,
    Catalog,
    CatalogFile,
    DevRoot,
    SysRoot,
    Output,
}

impl Opt {
    fn takes_value(self) -> bool {
        matches!(
            self,
            Opt::Short('p' | 'f') | Opt::CatalogFile | Opt::DevRoot | Opt::SysRoot | Opt::Output
        )
    }
}

/// rdmsr's short options without a value (`p` and `f` take one).
const SHORT_FLAGS: &str = "hVxXdoruc0a";

/// rdmsr's long options, exactly as msr-tools 1.3 declares them.
const RDMSR_LONG: &[(&str, char)] = &[
    ("help", 'h'),
    ("version", 'V'),
    ("hexadecimal", 'x'),
    ("capital-hexadecimal", 'X'),
    ("decimal", 'd'),
    ("signed-decimal", 'd'),
    ("unsigned-decimal", 'u'),
    ("octal", 'o'),
    ("c-language", 'c'),
    ("zero-fill", '0'),
    ("zero-pad", '0'),
    ("raw", 'r'),
    ("all", 'a'),
    ("processor", 'p'),
    ("cpu", 'p'),
    ("bitfield", 'f'),
];

/// msr-probe's own long options.
const OWN_LONG: &[(&str, Opt)] = &[
    ("decode", Opt::Decode),
    ("json", Opt::Json),
    ("catalog", Opt::Catalog),
    ("catalog-file", Opt::CatalogFile),
    ("dev-root", Opt::DevRoot),
    ("sys-root", Opt::SysRoot),
    ("output", Opt::Output),
];

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// Resolves `--name` as getopt_long does: an exact name, else a unique abbreviation (names
/// that abbreviate to the same option are not ambiguous), rdmsr's options first.
fn resolve_long(name: &str) -> Result<Opt, CliError> {
    let all = RDMSR_LONG
        .iter()
        .map(|&(n, c)| (n, Opt::Short(c)))
        .chain(OWN_LONG.iter().copied());
    if let Some((_, o)) = all.clone().find(|&(n, _)| n == name) {
        return Ok(o);
    }
    let rdmsr: Vec<(&str, Opt)> = RDMSR_LONG
        .iter()
        .filter(|(n, _)| n.starts_with(name))
        .map(|&(n, c)| (n, Opt::Short(c)))
        .collect();
    let own: Vec<(&str, Opt)> = OWN_LONG
        .iter()
        .copied()
        .filter(|(n, _)| n.starts_with(name))
        .collect();
    let candidates = if rdmsr.is_empty() { own } else { rdmsr };
    match candidates.as_slice() {
        [] => Err(usage(format!("unrecognized option '--{name}'"))),
        [(_, first), rest @ ..] if rest.iter().all(|(_, o)| o == first) => Ok(*first),
        many => {
            let names: Vec<String> = many.iter().map(|(n, _)| format!("'--{n}'")).collect();
            Err(usage(format!(
                "option '--{name}' is ambiguous; possibilities: {}",
                names.join(" ")
            )))
        }
    }
}

/// C's `strtoul(text, &end, 0)` with `*end == 0` required: leading white space, a sign, `0x`
/// hex, `0` octal, else decimal. `None` when text is left over; a value past `u64` or a
/// negative one saturates, as glibc's does (and is then out of any range).
fn strtoul_whole(text: &str) -> Option<u64> {
    let t = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    if t.is_empty() {
        // strtoul consumed nothing and `end` points at the terminator: rdmsr takes it as 0.
        return text.is_empty().then_some(0);
    }
    let (neg, t) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.starts_with(|c: char| c.is_ascii_hexdigit()) {
            (16, h)
        } else {
            return None; // "0x" then junk: strtoul stops after the 0
        }
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = u64::from_str_radix(digits, radix).unwrap_or(u64::MAX);
    Some(if neg && v != 0 { u64::MAX } else { v })
}

/// `-p`: rdmsr's rule, except that msr-probe takes any CPU number up to 2^32 - 1 (Debian's
/// rdmsr 1.3 refuses above 255) and refuses an empty value (rdmsr reads CPU 0).
fn parse_cpu(v: &str) -> Result<u32, CliError> {
    if v.is_empty() {
        return Err(usage("-p needs a CPU number, not an empty string"));
    }
    strtoul_whole(v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| usage(format!("-p `{v}`: not a CPU number")))
}

/// One `%u` of sscanf: white space, a sign, decimal digits; the value and the rest.
fn scan_u(text: &str) -> Option<(u64, &str)> {
    let t = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if end == 0 {
        return None;
    }
    let v = t[..end].parse::<u64>().unwrap_or(u64::MAX);
    Some((if neg && v != 0 { u64::MAX } else { v }, &t[end..]))
}

/// `-f`: `sscanf(v, "%u:%u")` must find both numbers, `HIGH <= 63`, `LOW <= HIGH`; text
/// after the second number is ignored, as rdmsr ignores it.
fn parse_field(v: &str) -> Result<BitRange, CliError> {
    let bad = || {
        usage(format!(
            "-f `{v}`: expected HIGH:LOW with 63 >= HIGH >= LOW"
        ))
    };
    let (high, rest) = scan_u(v).ok_or_else(bad)?;
    let rest = rest.strip_prefix(':').ok_or_else(bad)?;
    let (low, _) = scan_u(rest).ok_or_else(bad)?;
    if high > 63 || low > high {
        return Err(bad());
    }
    Ok(BitRange {
        high: high as u8,
        low: low as u8,
    })
}

/// Applies one option; `Some` ends parsing (help, version), as rdmsr exits there.
fn apply(a: &mut ReadArgs, opt: Opt, value: Option<String>) -> Result<Option<Command>, CliError> {
    let value = || value.clone().unwrap_or_default();
    let radix = &mut a.format.radix;
    match opt {
        Opt::Short('h') => return Ok(Some(Command::Help)),
        Opt::Short('V') => return Ok(Some(Command::Version)),
        Opt::Short('x') => *radix = Radix::Hex,
        Opt::Short('X') => *radix = Radix::HexUpper,
        Opt::Short('d') => *radix = Radix::Signed,
        Opt::Short('u') => *radix = Radix::Unsigned,
        Opt::Short('o') => *radix = Radix::Octal,
        Opt::Short('r') => *radix = Radix::Raw,
        Opt::Short('c') => a.format.c_style = true,
        Opt::Short('0') => a.format.zero_pad = true,
        Opt::Short('a') => a.cpus = Cpus::All,
        Opt::Short('p') => a.cpus = Cpus::One(parse_cpu(&value())?),
        Opt::Short('f') => a.format.field = Some(parse_field(&value())?),
        Opt::Short(c) => return Err(usage(format!("invalid option -- '{c}'"))),
        Opt::Decode => a.decode = true,
        Opt::Json => a.json = true,
        Opt::Catalog => a.catalog_all = true,
        Opt::CatalogFile => a.catalog_file = Some(value().into()),
        Opt::DevRoot => a.dev_root = Some(value().into()),
        Opt::SysRoot => a.sys_root = Some(value().into()),
        Opt::Output => a.output = Some(value()),
    }
    Ok(None)
}

/// Parses the arguments after the program name.
pub fn parse(argv: &[String]) -> Result<Command, CliError> {
    let mut a = ReadArgs::default();
    let mut operands: Vec<String> = Vec::new();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            operands.extend(it.by_ref().cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let opt = resolve_long(name)?;
            let full = RDMSR_LONG
                .iter()
                .find(|&&(_, c)| Opt::Short(c) == opt)
                .map(|(n, _)| *n)
                .or_else(|| OWN_LONG.iter().find(|&&(_, o)| o == opt).map(|(n, _)| *n))
                .unwrap_or(name);
            let value = match (opt.takes_value(), inline) {
                (true, Some(v)) => Some(v),
                (true, None) => Some(
                    it.next()
                        .cloned()
                        .ok_or_else(|| usage(format!("option '--{full}' requires an argument")))?,
                ),
                (false, Some(_)) => {
                    return Err(usage(format!(
                        "option '--{full}' doesn't allow an argument"
                    )))
                }
                (false, None) => None,
            };
            if let Some(done) = apply(&mut a, opt, value)? {
                return Ok(done);
            }
        } else if arg.len() > 1 && arg.starts_with('-') {
            let cluster = &arg[1..];
            for (i, c) in cluster.char_indices() {
                if c == 'p' || c == 'f' {
                    let rest = &cluster[i + 1..];
                    let value = if rest.is_empty() {
                        it.next()
                            .cloned()
                            .ok_or_else(|| usage(format!("option requires an argument -- '{c}'")))?
                    } else {
                        rest.to_owned()
                    };
                    if let Some(done) = apply(&mut a, Opt::Short(c), Some(value))? {
                        return Ok(done);
                    }
                    break;
                }
                if !SHORT_FLAGS.contains(c) {
                    return Err(usage(format!("invalid option -- '{c}'")));
                }
                if let Some(done) = apply(&mut a, Opt::Short(c), None)? {
                    return Ok(done);
                }
            }
        } else {
            operands.push(arg.clone());
        }
    }
    match operands.first().map(String::as_str) {
        Some("init") if operands.len() == 1 => return Ok(Command::Init),
        Some("init") => return Err(usage("init takes no MSRs")),
        Some("list") if operands.len() == 1 => return Ok(Command::List(a)),
        Some("list") => return Err(usage("list takes no MSRs")),
        _ => {}
    }
    a.msrs = operands;
    if a.msrs.is_empty() && !a.catalog_all {
        return Err(usage(
            "no MSR given: name one (e.g. `msr-probe 0x10` or `msr-probe PPIN`) or use --catalog",
        ));
    }
    Ok(Command::Read(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn read(args: &[&str]) -> ReadArgs {
        match p(args) {
            Ok(Command::Read(a)) => a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn usage_msg(args: &[&str]) -> String {
        match p(args) {
            Err(CliError::Usage(m)) => m,
            other => panic!("{args:?}: expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn bundles_and_values_as_getopt() {
        let a = read(&["-ax0", "0x10"]);
        assert_eq!(a.cpus, Cpus::All);
        assert!(a.format.zero_pad);
        assert_eq!(a.format.radix, Radix::Hex);
        assert_eq!(read(&["-p1", "0x10"]).cpus, Cpus::One(1));
        assert_eq!(read(&["-ap", "0x1", "0x10"]).cpus, Cpus::One(1));
        assert_eq!(read(&["-p", "1", "-a", "0x10"]).cpus, Cpus::All);
        assert_eq!(read(&["-p", "010", "0x10"]).cpus, Cpus::One(8));
        assert_eq!(read(&["0x10", "-d"]).format.radix, Radix::Signed);
        assert_eq!(read(&["-dx", "0x10"]).format.radix, Radix::Hex);
        assert_eq!(
            read(&["-f7:0", "0x10"]).format.field,
            BitRange::parse("7:0")
        );
        assert_eq!(
            read(&["-f", " 7: 0x", "1"]).format.field,
            BitRange::parse("7:0")
        );
        assert_eq!(read(&["--", "-1"]).msrs, vec!["-1"]);
        assert_eq!(read(&["--processor=2", "1"]).cpus, Cpus::One(2));
        assert_eq!(read(&["--cpu", "2", "1"]).cpus, Cpus::One(2));
    }

    #[test]
    fn long_options_abbreviate_as_in_rdmsr() {
        assert_eq!(read(&["--ca", "1"]).format.radix, Radix::HexUpper);
        assert_eq!(read(&["--dec", "1"]).format.radix, Radix::Signed);
        assert!(read(&["--zero", "1"]).format.zero_pad);
        assert!(read(&["--deco", "1"]).decode);
        assert!(read(&["--catalog"]).catalog_all);
        assert!(usage_msg(&["--c", "1"]).contains("ambiguous"));
        assert!(usage_msg(&["--cata"]).contains("ambiguous"));
        assert!(usage_msg(&["--bogus", "1"]).contains("unrecognized option '--bogus'"));
        assert!(usage_msg(&["--all=1", "1"]).contains("doesn't allow"));
        assert!(usage_msg(&["--processor"]).contains("requires an argument"));
    }

    #[test]
    fn refuses_what_rdmsr_refuses() {
        assert!(usage_msg(&["-q", "1"]).contains("invalid option -- 'q'"));
        assert!(usage_msg(&["-p"]).contains("requires an argument -- 'p'"));
        for f in ["64:0", "3:4", "7", "x:1", "-1:0", "7:"] {
            assert!(usage_msg(&["-f", f, "1"]).contains("HIGH:LOW"), "{f}");
        }
        for cpu in ["1x", "-1", " ", "0x", "08", ""] {
            assert!(usage_msg(&["-p", cpu, "1"]).contains("-p"), "{cpu:?}");
        }
        assert!(usage_msg(&[]).contains("no MSR given"));
        // -h ends parsing where it stands, as getopt's loop does in rdmsr.
        assert_eq!(p(&["init", "--help"]), Ok(Command::Help));
        assert_eq!(p(&["-h", "-q"]), Ok(Command::Help));
        assert!(p(&["-q", "-h"]).is_err());
        assert_eq!(p(&["init"]), Ok(Command::Init));
        assert!(matches!(p(&["list", "--json"]), Ok(Command::List(a)) if a.json));
    }
}
