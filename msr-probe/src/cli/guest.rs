//! `msr-probe init`: the real system behind [`crate::init::run_init`] for a guest's `/init`.

use std::collections::HashMap;
use std::io::Write;

use crate::catalog::Catalog;
use crate::cli::exit::CliError;
use crate::init::{run_init, EndMode, InitConfig, InitSystem};
use crate::reader::{DevMsr, MsrReader};
use crate::report::Fingerprint;

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

/// Runs init mode: as PID 1 it mounts, reports and ends the machine (and never returns);
/// by hand it only prints the framed report.
pub fn cmd_init() -> Result<(), CliError> {
    let pid1 = std::process::id() == 1;
    let mut sys = LinuxSystem {
        reader: DevMsr::default(),
        console: std::io::stdout(),
        pid1,
    };
    let catalog = Catalog::builtin()?;
    // vars_os: a variable that is not UTF-8 (the kernel passes the command line through) is
    // skipped, not a panic.
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
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
