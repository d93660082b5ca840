//! `kvmcap lab-init`: the lab host's /init.

use msr_probe::Catalog;

/// As PID 1 (the lab's /init), mounts /proc, /sys and /dev; returns whether it is PID 1.
pub fn mount_if_pid1() -> bool {
    let pid1 = std::process::id() == 1;
    if pid1 {
        use nix::mount::{mount, MsFlags};
        for (src, target, fstype) in [
            ("proc", "/proc", "proc"),
            ("sysfs", "/sys", "sysfs"),
            ("devtmpfs", "/dev", "devtmpfs"),
        ] {
            let _ = std::fs::create_dir_all(target);
            let _ = mount(
                Some(src),
                target,
                Some(fstype),
                MsFlags::empty(),
                None::<&str>,
            );
        }
    }
    pid1
}

/// Runs every job of `KVMCAP_LAB_JOBS` with the host values of `KVMCAP_LAB_HOST`, printing
/// each result framed on the console, then `kvmcap lab: done`; as PID 1 it then reboots (the
/// lab's QEMU runs with -no-reboot, so that ends it). Whether every job passed.
pub fn run(catalog: &Catalog, pid1: bool) -> bool {
    use std::io::Write;
    // The lab's own feature and scenario files sit at /features and /scenarios.
    if pid1 {
        crate::fixtures::set_user_dir("/".into());
    }
    let jobs_text = std::env::var("KVMCAP_LAB_JOBS").unwrap_or_default();
    let host: Vec<String> = std::env::var("KVMCAP_LAB_HOST")
        .unwrap_or_default()
        .split('+')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let paths = super::LabPaths::default();
    let mut out = std::io::stdout().lock();
    let mut all_pass = true;
    match super::parse_jobs(&jobs_text) {
        Ok(jobs) => {
            let _ = writeln!(out, "kvmcap lab: {} job(s)", jobs.len());
            for job in &jobs {
                let result = super::run_job(job, &paths, &host, catalog);
                all_pass &= result.pass;
                let doc = serde_json::to_string(&result).unwrap_or_default();
                match msr_probe::frame::encode_document(&job.name(), &doc) {
                    Ok(lines) => {
                        for l in lines {
                            let _ = out.write_all(format!("{l}\n").as_bytes());
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(out, "kvmcap lab: {}: {e}", job.name());
                    }
                }
                let _ = out.flush();
            }
        }
        Err(e) => {
            let _ = writeln!(out, "kvmcap lab: {e}");
            all_pass = false;
        }
    }
    let _ = writeln!(out, "kvmcap lab: done");
    let _ = out.flush();
    drop(out);
    if pid1 {
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    all_pass
}
