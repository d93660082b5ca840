//! The benchmarks on this host: the bare probe against a raw-ioctl C floor and against QEMU
//! running the same probe image, and the cost of one guest MSR access.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::measure::{stats, time_interleaved, Bench, Stats};
use crate::{target_dir, workspace_root, XtaskError};

/// Builds the C floor (raw ioctls, what KVM selftests do).
pub fn build_floor() -> Result<PathBuf, XtaskError> {
    let src = workspace_root().join("xtask/bench/floor.c");
    let out = target_dir().join("kvmcap/bench/floor");
    if let Some(d) = out.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: "cc".into(),
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: format!("cc {}", src.display()),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(out)
}

/// Builds kvmcap in release mode.
pub fn build_kvmcap() -> Result<PathBuf, XtaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "--quiet", "-p", "kvmcap"])
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: cargo,
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: "cargo build --release -p kvmcap".into(),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(target_dir().join("release/kvmcap"))
}

/// Bare probe of the whole catalog on 2 vCPUs, against the raw-ioctl floor.
pub fn bare_probe(
    kvmcap: &Path,
    floor: &Path,
    runs: usize,
    catalog: &[String],
) -> Result<Bench, XtaskError> {
    let catalog_len = catalog.len();
    let (k, f) = time_interleaved(
        Command::new(kvmcap).args([
            "probe",
            "--guest",
            "bare",
            "--backend",
            "none",
            "--catalog",
            "--vcpus",
            "2",
            "--json",
        ]),
        Command::new(floor).arg("2").args(catalog),
        runs,
    )?;
    Ok(Bench {
        name: format!("bare probe, process start to report, catalog ({catalog_len} MSRs) x 2 vCPUs"),
        kvmcap: Some(k),
        peer: "C floor: raw ioctls, the same reads in a real-mode guest, no report (xtask/bench/floor.c)".into(),
        peer_stats: Some(f),
        note: "whole processes, exec included; kvmcap also negotiates, runs vCPU threads, judges and prints JSON".into(),
    })
}

/// The bare probe's multiboot image under QEMU (`-accel kvm`), as kvm-unit-tests run: the
/// same compiled reads, QEMU process start to exit (its guest has dumped the results area),
/// for QEMU's fastest machine (microvm, qboot) and kvm-unit-tests' default (pc, SeaBIOS).
/// The dump is checked once to be complete; the readings' agreement with kvmcap's own run
/// goes in the note.
pub fn bare_probe_qemu(
    kvmcap: &Path,
    kvmcap_stats: &Stats,
    runs: usize,
    catalog_len: usize,
) -> Result<Vec<Bench>, XtaskError> {
    let qemu = crate::lab::qemu()?;
    let dir = target_dir().join("kvmcap/bench");
    let image = dir.join("probe.mb");
    let dump = dir.join("probe.dump");
    let selection = ["--catalog", "--vcpus", "2"];
    let status = Command::new(kvmcap)
        .args(["image", "--out"])
        .arg(&image)
        .args(selection)
        .stdout(Stdio::null())
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: "kvmcap image".into(),
            source,
        })?;
    if !status.success() {
        return Err(XtaskError::Build {
            command: "kvmcap image --out".into(),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    let run_qemu = |machine: &str, runs: usize| -> Result<Stats, XtaskError> {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let _ = std::fs::remove_file(&dump);
            let start = Instant::now();
            let out = Command::new(&qemu)
                .args(["-accel", "kvm", "-M", machine])
                // `-cpu host` as kvmcap gives the guest KVM's supported CPUID; this host's KVM
                // refuses QEMU's write of IA32_ARCH_CAPABILITIES, so that one is off.
                .args(["-cpu", "host,-arch-capabilities", "-smp", "2", "-m", "64"])
                .args(["-nodefaults", "-display", "none", "-no-reboot", "-kernel"])
                .arg(&image)
                .arg("-debugcon")
                .arg(format!("file:{}", dump.display()))
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
                .stdout(Stdio::null())
                .output()
                .map_err(|source| XtaskError::Spawn {
                    tool: qemu.display().to_string(),
                    source,
                })?;
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
            // isa-debug-exit: the guest wrote 0, QEMU exits (0 << 1) | 1.
            if out.status.code() != Some(1) {
                return Err(XtaskError::Build {
                    command: format!("qemu -M {machine} -kernel {}", image.display()),
                    status: out.status.to_string(),
                    tail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
        }
        Ok(stats(&mut samples))
    };
    let micro = run_qemu("microvm", runs)?;
    let agreement = compare_dump(kvmcap, &dump, &selection)?;
    let pc = run_qemu("pc", (runs / 4).max(5))?;
    let name =
        format!("bare probe, process start to report, catalog ({catalog_len} MSRs) x 2 vCPUs");
    Ok(vec![
        Bench {
            name: name.clone(),
            kvmcap: Some(kvmcap_stats.clone()),
            peer: "QEMU -accel kvm -M microvm (qboot) running the same probe as a multiboot image (`kvmcap image`)".into(),
            peer_stats: Some(micro),
            note: format!("QEMU process start to exit, after its guest dumped the results area to the debug console; its boot CPU runs both vCPUs' lists (no AP start-up in the image). {agreement}"),
        },
        Bench {
            name,
            kvmcap: Some(kvmcap_stats.clone()),
            peer: "QEMU -accel kvm -M pc (SeaBIOS), kvm-unit-tests' default machine, same image".into(),
            peer_stats: Some(pc),
            note: "as above; SeaBIOS runs in real mode, which this host's KVM emulates instruction by instruction".into(),
        },
    ])
}

/// Reads QEMU's dump with `kvmcap image --dump` and counts the readings that equal kvmcap's
/// own run of the same probe.
fn compare_dump(kvmcap: &Path, dump: &Path, selection: &[&str]) -> Result<String, XtaskError> {
    let json = |cmd: &mut Command, what: &str| -> Result<Value, XtaskError> {
        let out = cmd.output().map_err(|source| XtaskError::Spawn {
            tool: what.into(),
            source,
        })?;
        serde_json::from_slice(&out.stdout).map_err(|e| XtaskError::Output {
            path: kvmcap.to_owned(),
            problem: format!(
                "{what}: {e} ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    };
    let q = json(
        Command::new(kvmcap)
            .args(["image", "--json", "--dump"])
            .arg(dump)
            .args(selection),
        "kvmcap image --dump",
    )?;
    let k = json(
        Command::new(kvmcap)
            .args(["probe", "--guest", "bare", "--backend", "none", "--json"])
            .args(selection),
        "kvmcap probe",
    )?;
    let (q, k) = (
        q["readings"].as_array().cloned().unwrap_or_default(),
        k["readings"].as_array().cloned().unwrap_or_default(),
    );
    if q.is_empty() || k.is_empty() {
        return Err(XtaskError::Output {
            path: kvmcap.to_owned(),
            problem: "image --dump or probe gave no readings to compare".into(),
        });
    }
    let mut differ: Vec<String> = Vec::new();
    let mut same = 0;
    for (a, b) in q.iter().zip(&k) {
        if a["guest"] == b["guest"] {
            same += 1;
        } else if b["cpu"] == 0 {
            differ.push(a["name"].as_str().unwrap_or("?").to_owned());
        }
    }
    Ok(format!(
        "Readings: {same} of {} equal kvmcap's; on vCPU 0 these differ: {} (QEMU sets them, or they change: the TSC; on vCPU 1 also the APIC base's BSP bit).",
        k.len().max(q.len()),
        differ.join(", ")
    ))
}

/// The cost of one guest MSR access, measured in the guest (lfence; rdtsc around each rdmsr
/// of the bare probe) over N reads, median per run, reported in microseconds.
pub fn msr_cost(kvmcap: &Path, runs: usize) -> Result<Vec<Bench>, XtaskError> {
    let n = 1000usize;
    let measure = |backend: &str, msr: &str, host: Option<&str>| -> Result<Stats, XtaskError> {
        let mut per_run = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut c = Command::new(kvmcap);
            c.args([
                "probe",
                "--guest",
                "bare",
                "--backend",
                backend,
                "--vcpus",
                "1",
                "--msr",
                msr,
                "--timed",
                "--repeat",
            ])
            .arg(n.to_string())
            .arg("--json");
            if let Some(h) = host {
                c.args(["--host-value", h]);
            }
            let out = c.output().map_err(|source| XtaskError::Spawn {
                tool: "kvmcap probe".into(),
                source,
            })?;
            let doc: Value =
                serde_json::from_slice(&out.stdout).map_err(|e| XtaskError::Output {
                    path: kvmcap.to_owned(),
                    problem: format!("probe JSON: {e}"),
                })?;
            let khz = doc["tsc_khz"].as_f64().unwrap_or(0.0);
            let mut cycles: Vec<f64> = doc["readings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["cycles"].as_f64())
                .collect();
            if khz <= 0.0 || cycles.is_empty() {
                return Err(XtaskError::Output {
                    path: kvmcap.to_owned(),
                    problem: "probe JSON has no cycles or tsc_khz".into(),
                });
            }
            // ms per access, so Stats' formatting shows µs.
            per_run.push(stats(&mut cycles).median / khz);
        }
        Ok(stats(&mut per_run))
    };
    let in_kernel = measure("none", "MSR_PLATFORM_INFO", None)?;
    let user = measure("user", "AMD_PPIN", Some("MSR_PPIN=0x1122334455667788"))?;
    let gp = measure("none", "AMD_PPIN", None)?;
    Ok(vec![
        Bench {
            name: "guest rdmsr: PPIN through backend user (exit to the VMM's model)".into(),
            kvmcap: Some(user),
            peer: "MSR_PLATFORM_INFO, emulated inside KVM".into(),
            peer_stats: Some(in_kernel.clone()),
            note: format!(
                "in-guest lfence;rdtsc around each of {n} reads, median per run; this host is itself a VM, so every exit is nested. Stock KVM here has no KVM_CAP_PPIN: the kernel backend's figures are the lab rows"
            ),
        },
        Bench {
            name: "guest rdmsr: PPIN with stock KVM (#GP delivered to the guest)".into(),
            kvmcap: Some(gp),
            peer: "MSR_PLATFORM_INFO, emulated inside KVM".into(),
            peer_stats: Some(in_kernel),
            note: "the #GP path: exit, KVM injects #GP, the probe's handler skips the instruction".into(),
        },
    ])
}
