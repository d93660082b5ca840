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
        Some("initramfs") => {
            println!("{}", xtask::initramfs::guest()?.display());
            Ok(())
        }
        Some("lab-quick") => {
            // Lab with an explicit kernel: cargo xtask lab-quick BZIMAGE [JOB...]
            let kernel = args
                .get(1)
                .ok_or_else(|| XtaskError::Usage("lab-quick BZIMAGE [JOB...]".into()))?;
            let kernel = std::path::PathBuf::from(kernel);
            let jobs: Vec<String> = if args.len() > 2 {
                args[2..].to_vec()
            } else {
                xtask::lab::DEFAULT_JOBS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            };
            let initramfs = xtask::initramfs::lab(&kernel)?;
            let run = xtask::lab::run(&xtask::lab::LabOptions {
                kernel,
                initramfs,
                jobs,
                cpus: 2,
                mem_mib: 1024,
                deadline: std::time::Duration::from_secs(600),
                console_log: xtask::initramfs::out_dir().join("lab/console.log"),
            })?;
            print!("{}", run.table());
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
