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

/// Runs every job of `KVMCAP_LAB_JOBS` with the host values of `KVMCAP_LAB_HOST`, each in its
/// own process under a time budget ([`super::isolate`]), printing each result framed on the
/// console, then `kvmcap lab: done`; as PID 1 it then reboots (the
/// lab's QEMU runs with -no-reboot, so that ends it). Whether every job passed.
pub fn run(catalog: &Catalog, pid1: bool) -> bool {
    use std::io::Write;
    // The lab's own feature and scenario files sit at /features and /scenarios.
    if pid1 {
        crate::fixtures::set_user_dir("/".into());
    }
    let jobs_text = std::env::var("KVMCAP_LAB_JOBS").unwrap_or_default();
    let host: Vec<String> = host_values();
    let paths = super::LabPaths::default();
    let mut out = std::io::stdout().lock();
    let mut all_pass = true;
    match super::parse_jobs(&jobs_text) {
        Ok(jobs) => {
            let _ = writeln!(out, "kvmcap lab: {} job(s)", jobs.len());
            // Each job in its own process when kvmcap can find itself (it always can as the
            // lab's /init); otherwise in this one.
            let exe = std::env::current_exe().ok();
            for job in &jobs {
                let doc = match &exe {
                    Some(exe) => {
                        super::isolate::run_job_isolated(exe, job, super::isolate::JOB_BUDGET)
                    }
                    None => serde_json::to_string(&super::run_job(job, &paths, &host, catalog))
                        .unwrap_or_default(),
                };
                all_pass &= serde_json::from_str::<serde_json::Value>(&doc)
                    .is_ok_and(|v| v["pass"] == true);
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

/// `kvmcap lab-job JOB`: runs one lab job in this process and prints its result as JSON on
/// standard output (the lab's /init runs each job so, under a budget). Whether it passed.
pub fn run_one(job_text: &str, catalog: &Catalog) -> Result<bool, String> {
    use std::io::Write;
    let jobs = super::parse_jobs(job_text)?;
    let [job] = &jobs[..] else {
        return Err(format!("lab-job: one job, not {}", jobs.len()));
    };
    let host: Vec<String> = host_values();
    let result = super::run_job(job, &super::LabPaths::default(), &host, catalog);
    let doc = serde_json::to_string(&result).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{doc}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("lab-job: standard output: {e}"))?;
    Ok(result.pass)
}

/// The host values of `KVMCAP_LAB_HOST` (`NAME=VALUE` words separated by `+`).
fn host_values() -> Vec<String> {
    std::env::var("KVMCAP_LAB_HOST")
        .unwrap_or_default()
        .split('+')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
