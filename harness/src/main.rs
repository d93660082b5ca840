//! `kvmcap`: the command line. Every failure is one line on stderr and a code of the exit table
//! (`kvmcap --help`).

use std::process::ExitCode;

use kvmcap::cli::{self, exit};

fn main() -> ExitCode {
    // As PID 1 (the lab's /init) kvmcap runs the lab's jobs, whatever its arguments.
    let args: Vec<std::ffi::OsString> = if std::process::id() == 1 {
        vec!["kvmcap".into(), "lab-init".into()]
    } else {
        std::env::args_os().collect()
    };
    let parsed = match cli::parse(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::from(exit::OK)
                }
                _ => {
                    eprintln!("kvmcap: {}", cli::one_line(&e));
                    ExitCode::from(exit::USAGE)
                }
            };
        }
    };
    match cli::app::run(parsed) {
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => ExitCode::from(exit::VERDICT),
        Err(f) => {
            eprintln!("kvmcap: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
