//! `cargo xtask`: the project's build and test loop (static binaries; later the kernel, the
//! initramfs, the lab and the whole patch-boot-verify loop).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use xtask::{static_build, XtaskError};

const HELP: &str = "\
cargo xtask: kvmcap's build loop

USAGE:
    cargo xtask static [PACKAGE...]   build fully static binaries (glibc, +crt-static) of
                                      msr-probe (default) and/or kvmcap; prints their paths
    cargo xtask help                  this help
";

fn run(args: &[String]) -> Result<(), XtaskError> {
    match args.first().map(String::as_str) {
        Some("static") => {
            let pkgs: Vec<&str> = if args.len() > 1 {
                args[1..].iter().map(String::as_str).collect()
            } else {
                vec!["msr-probe"]
            };
            for p in pkgs {
                let path = static_build::build(p)?;
                println!("{}", path.display());
            }
            Ok(())
        }
        None | Some("help") | Some("-h") | Some("--help") => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(XtaskError::Usage(format!("unknown command `{other}`"))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
