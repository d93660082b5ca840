//! `msr-probe`: a better `rdmsr`, for the host and as a guest's `/init`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = if std::process::id() == 1 {
        match msr_probe::cli::guest::cmd_init() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("msr-probe: {e}");
                e.exit().code()
            }
        }
    } else {
        let argv: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        msr_probe::cli::run(&argv)
    };
    ExitCode::from(code)
}
