//! `kvmcap`: the command line. Every failure is one line on stderr and a documented exit code.

use std::process::ExitCode;

use serde::Serialize;

use kvmcap::cli::{self, exit, Options};
use kvmcap::commands::probe::{probe_bare_on, ProbeRequest};
use kvmcap::commands::scenario::{run_scenario, Scenario, ScenarioError};
use kvmcap::commands::verify::{verify_linux, VerifyError, VerifyRequest};
use kvmcap::features::{FeatureError, FeatureSpec};
use kvmcap::host::HostSources;
use kvmcap::kvm::{cap_name, KvmError, KvmSystem};
use kvmcap::negotiate::NegotiationError;
use kvmcap::report::write_atomic;
use kvmcap::vmm::error::VmmError;
use msr_probe::{Catalog, DevMsr, MsrIndex};

struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl ToString) -> Failure {
    Failure {
        code,
        message: message.to_string(),
    }
}

fn vmm_failure(e: VmmError) -> Failure {
    let code = match &e {
        VmmError::Kvm(
            KvmError::Missing { .. }
            | KvmError::NotPermitted { .. }
            | KvmError::Open { .. }
            | KvmError::ApiVersion { .. },
        ) => exit::KVM,
        VmmError::Negotiation {
            error: NegotiationError::Missing { .. },
            ..
        } => exit::CAP_MISSING,
        VmmError::Negotiation {
            error: NegotiationError::Refused { .. },
            ..
        } => exit::CAP_REFUSED,
        VmmError::Request(_) => exit::USAGE,
        VmmError::Initial(_) => exit::INPUT,
        _ => exit::VMM,
    };
    fail(code, e)
}

fn scenario_failure(e: ScenarioError) -> Failure {
    match e {
        ScenarioError::Vmm(v) => vmm_failure(v),
        ScenarioError::Backend { .. } => fail(exit::USAGE, e),
        other => fail(exit::INPUT, other),
    }
}

fn catalog() -> Result<Catalog, Failure> {
    Catalog::builtin().map_err(|e| fail(exit::INPUT, e))
}

fn emit(o: &Options, json: &impl Serialize, table: impl FnOnce() -> String) -> Result<(), Failure> {
    let doc = serde_json::to_string_pretty(json).map_err(|e| fail(exit::OUTPUT, e))? + "\n";
    if let Some(path) = &o.report {
        write_atomic(path, doc.as_bytes())
            .map_err(|e| fail(exit::OUTPUT, format!("report {}: {e}", path.display())))?;
    }
    if o.json {
        print!("{doc}");
    } else {
        print!("{}", table());
    }
    Ok(())
}

#[derive(Serialize)]
struct CapRow {
    number: u32,
    name: String,
    system: i32,
    vm: i32,
}

/// Capability numbers scanned by `caps`: every upstream one and beyond, so a patched kernel's
/// new number shows up even when nobody names it.
const CAP_SCAN_LIMIT: u32 = 4096;

fn cmd_caps(o: &Options) -> Result<(), Failure> {
    let kvm = KvmSystem::open(&o.kvm).map_err(|e| vmm_failure(e.into()))?;
    let vm = kvm.create_vm().map_err(|e| vmm_failure(e.into()))?;
    let mut rows = Vec::new();
    for n in 0..CAP_SCAN_LIMIT {
        let system = kvm.check_extension_raw(n);
        let at_vm = vm.check_extension_raw(n);
        if system != 0 || at_vm != 0 {
            rows.push(CapRow {
                number: n,
                name: cap_name(n),
                system,
                vm: at_vm,
            });
        }
    }
    let mut table = format!(
        "{} on {} (kernel {}): {} capabilities present\n{:<6} {:<40} {:>10} {:>10}\n",
        kvm.path().display(),
        msr_probe::Fingerprint::of_running_system().cpu_model,
        kvmcap::negotiate::running_kernel(),
        rows.len(),
        "NUMBER",
        "NAME",
        "SYSTEM",
        "VM"
    );
    for r in &rows {
        table.push_str(&format!(
            "{:<6} {:<40} {:>10} {:>10}\n",
            r.number, r.name, r.system, r.vm
        ));
    }
    emit(o, &rows, || table)
}

fn feature(o: &Options, catalog: &Catalog) -> Result<FeatureSpec, Failure> {
    let name = o.feature.as_deref().unwrap_or("ppin");
    FeatureSpec::find(name, catalog).map_err(|e| match e {
        FeatureError::Unknown(_) => fail(exit::USAGE, e),
        other => fail(exit::INPUT, other),
    })
}

fn host_sources(
    o: &Options,
    catalog: &Catalog,
    spec: &FeatureSpec,
) -> Result<HostSources, Failure> {
    let mut h = HostSources::default()
        .with_explicit(&o.host_values, catalog)
        .map_err(|e| fail(exit::USAGE, e))?;
    if o.host_ppin {
        let values: Vec<MsrIndex> = spec.pairs.iter().map(|p| p.value).collect();
        if values.is_empty() {
            return Err(fail(
                exit::USAGE,
                format!("--host-ppin: feature {} has no PPIN", spec.name),
            ));
        }
        h = h
            .with_sysfs_ppin(std::path::Path::new("/sys"), 0, &values)
            .map_err(|e| fail(exit::INPUT, e))?;
    }
    if let Some(p) = &o.host_profile {
        h = h
            .with_profile(p, catalog)
            .map_err(|e| fail(exit::INPUT, e))?;
    }
    // /dev/cpu/N/msr is a host source only where the msr driver is present.
    let devmsr = DevMsr::default();
    Ok(if devmsr.open(0).is_ok() {
        h.with_devmsr(devmsr)
    } else {
        h
    })
}

/// The MSRs a bare probe reads: `--msr`s and `--catalog`, else the feature's; `--repeat` times.
fn probe_msrs(
    o: &Options,
    catalog: &Catalog,
    spec: &FeatureSpec,
) -> Result<Vec<MsrIndex>, Failure> {
    let mut msrs: Vec<MsrIndex> = Vec::new();
    for m in &o.msrs {
        msrs.push(catalog.resolve(m).map_err(|e| fail(exit::USAGE, e))?);
    }
    if o.catalog {
        msrs.extend(catalog.indices());
    }
    if msrs.is_empty() {
        msrs = spec.msrs();
    }
    let once = msrs.clone();
    for _ in 1..o.repeat {
        msrs.extend_from_slice(&once);
    }
    if msrs.len() > kvmcap::guests::bare::MAX_OPS {
        return Err(fail(
            exit::USAGE,
            format!(
                "{} reads exceed the bare guest's {} operations",
                msrs.len(),
                kvmcap::guests::bare::MAX_OPS
            ),
        ));
    }
    Ok(msrs)
}

#[derive(Serialize)]
struct DumpRow {
    cpu: u32,
    index: MsrIndex,
    name: String,
    guest: msr_probe::Reading,
    #[serde(skip_serializing_if = "Option::is_none")]
    cycles: Option<u32>,
}

/// `kvmcap image`: the bare probe for another VMM, and what that VMM's guest reported.
fn cmd_image(o: &Options) -> Result<bool, Failure> {
    use kvmcap::guests::bare::{image, MsrOp};
    let catalog = catalog()?;
    let spec = feature(o, &catalog)?;
    let ops: Vec<MsrOp> = probe_msrs(o, &catalog, &spec)?
        .into_iter()
        .map(|index| MsrOp::Read { index })
        .collect();
    let per_cpu = vec![ops.clone(); usize::from(o.vcpus)];
    if let Some(out) = &o.out {
        write_atomic(out, &image::multiboot_image(&per_cpu, o.timed))
            .map_err(|e| fail(exit::OUTPUT, format!("image {}: {e}", out.display())))?;
        println!(
            "qemu-system-x86_64 -accel kvm -M microvm -cpu host,-arch-capabilities -smp {} -m 64 -nodefaults \\\n    \
             -display none -no-reboot -kernel {} -debugcon file:DUMP \\\n    \
             -device isa-debug-exit,iobase={:#x},iosize=4   # exits with status 1 when done",
            o.vcpus,
            out.display(),
            kvmcap::guests::bare::DEBUG_EXIT_PORT
        );
        return Ok(true);
    }
    let Some(dump) = &o.dump else {
        return Err(fail(exit::USAGE, "image needs --out or --dump"));
    };
    let bytes = std::fs::read(dump)
        .map_err(|e| fail(exit::INPUT, format!("dump {}: {e}", dump.display())))?;
    let results = image::parse_dump(&per_cpu, &bytes)
        .map_err(|e| fail(exit::NO_REPORT, format!("dump {}: {e}", dump.display())))?;
    let mut rows = Vec::new();
    for (cpu, list) in results.iter().enumerate() {
        for (op, (r, cycles)) in ops.iter().zip(list) {
            let Some(index) = op.index() else { continue };
            rows.push(DumpRow {
                cpu: cpu as u32,
                index,
                name: catalog.name_of(index).to_owned(),
                guest: r.reading(op),
                cycles: o.timed.then_some(*cycles),
            });
        }
    }
    emit(o, &rows, || {
        rows.iter()
            .map(|r| format!("cpu{} {:<12} {:<32} {}\n", r.cpu, r.index, r.name, r.guest))
            .collect()
    })?;
    Ok(true)
}

fn cmd_probe(o: &Options) -> Result<bool, Failure> {
    // Open KVM and create the VM while the catalog and feature are read, and read the host's
    // fingerprint (for the report) meanwhile too.
    let open = kvmcap::vmm::machine::OpenVm::open_in_background(o.kvm.clone());
    std::thread::spawn(msr_probe::Fingerprint::of_running_system);

    let catalog = catalog()?;
    let spec = feature(o, &catalog)?;

    let msrs = probe_msrs(o, &catalog, &spec)?;
    let host = host_sources(o, &catalog, &spec)?;

    let open = open
        .join()
        .map_err(|_| fail(exit::KVM, "opening KVM: the thread panicked"))?
        .map_err(vmm_failure)?;
    let report = probe_bare_on(
        open,
        &ProbeRequest {
            kvm_path: o.kvm.clone(),
            feature: Some(&spec),
            backend: o.backend.unwrap_or(kvmcap::backend::Backend::None),
            announce: o.pair,
            vcpus: o.vcpus,
            msrs,
            host: &host,
            limits: o.limits,
            irqchip: o.irqchip,
            timed: o.timed,
        },
        &catalog,
    )
    .map_err(vmm_failure)?;
    emit(o, &report, || report.table())?;

    Ok(report.ok())
}

fn cmd_run(o: &Options) -> Result<bool, Failure> {
    let catalog = catalog()?;
    let scenario = Scenario::find(&o.positional[0], &catalog).map_err(scenario_failure)?;
    let backends = match o.backend {
        Some(b) => vec![b],
        None => scenario.backends.clone(),
    };
    let mut reports = Vec::new();
    let mut table = String::new();
    for b in backends {
        match run_scenario(&scenario, b, o.vcpus, o.pair, &o.kvm, &catalog, o.limits) {
            Ok(r) => {
                table.push_str(&r.table());
                reports.push(r);
            }
            // Without --backend, a backend this kernel cannot do is skipped, and said so.
            Err(ScenarioError::Vmm(VmmError::Negotiation {
                error: e @ NegotiationError::Missing { .. },
                ..
            })) if o.backend.is_none() => {
                let line = format!("scenario {} (backend {b}): skipped: {e}\n", scenario.name);
                eprint!("{line}");
                table.push_str(&line);
            }
            Err(e) => return Err(scenario_failure(e)),
        }
    }
    if reports.is_empty() {
        return Err(fail(
            exit::CAP_MISSING,
            format!(
                "scenario {}: no backend it supports can run here",
                scenario.name
            ),
        ));
    }
    let pass = reports.iter().all(|r| r.pass);
    emit(o, &reports, || table)?;
    Ok(pass)
}

fn cmd_explore(o: &Options) -> Result<bool, Failure> {
    let catalog = catalog()?;
    let spec = FeatureSpec::find(&o.positional[0], &catalog).map_err(|e| match e {
        FeatureError::Unknown(_) => fail(exit::USAGE, e),
        other => fail(exit::INPUT, other),
    })?;
    let host = host_sources(o, &catalog, &spec)?;
    let report = kvmcap::commands::explore::explore(
        &kvmcap::commands::explore::ExploreRequest {
            kvm_path: o.kvm.clone(),
            feature: &spec,
            backend: o.backend.unwrap_or(kvmcap::backend::Backend::User),
            vcpus: o.vcpus,
            announce: o.pair,
            host: &host,
            limits: o.limits,
            kvm_label: "host".into(),
        },
        &catalog,
    )
    .map_err(vmm_failure)?;
    if let Some(dir) = &o.out {
        report
            .write_scenarios(dir)
            .map_err(|e| fail(exit::OUTPUT, format!("{}: {e}", dir.display())))?;
    }
    emit(o, &report, || report.table())?;
    Ok(report.pass)
}

/// The guest initramfs `verify` uses when none is given: next to the kvmcap binary, else the
/// one `cargo xtask initramfs` builds in the workspace.
fn default_initramfs() -> std::path::PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("guest-initramfs.cpio")));
    match beside {
        Some(p) if p.exists() => p,
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/kvmcap/guest-initramfs.cpio"),
    }
}

fn cmd_verify(o: &Options) -> Result<bool, Failure> {
    let catalog = catalog()?;
    let spec = feature(o, &catalog)?;
    let mut msrs: Vec<MsrIndex> = Vec::new();
    for m in &o.msrs {
        msrs.push(catalog.resolve(m).map_err(|e| fail(exit::USAGE, e))?);
    }
    let host = host_sources(o, &catalog, &spec)?;
    let initramfs = o.initramfs.clone().unwrap_or_else(default_initramfs);
    if !initramfs.exists() {
        return Err(fail(
            exit::INPUT,
            format!("guest initramfs {} does not exist: build it with `cargo xtask initramfs` or pass --initramfs", initramfs.display()),
        ));
    }
    let report = verify_linux(
        &VerifyRequest {
            kvm_path: o.kvm.clone(),
            kernel: o.kernel.clone().unwrap_or_default(),
            initramfs,
            feature: Some(&spec),
            backend: o.backend.unwrap_or(kvmcap::backend::Backend::None),
            announce: o.pair,
            vcpus: o.vcpus,
            msrs: (!msrs.is_empty()).then_some(msrs),
            host: &host,
            limits: o.limits,
            mem_mib: o.mem_mib,
            console_limit: o.console_limit,
            echo_console: o.console,
            cmdline: o.cmdline.clone(),
        },
        &catalog,
    )
    .map_err(|e| match e {
        VerifyError::Vmm(VmmError::Image { .. }) => {
            fail(exit::INPUT, e.to_string().replace('\n', " | "))
        }
        VerifyError::Vmm(v) => vmm_failure(v),
        e @ VerifyError::NoReport { .. } => {
            fail(exit::NO_REPORT, e.to_string().replace('\n', " | "))
        }
    })?;
    emit(o, &report, || report.table())?;
    Ok(report.ok())
}

fn cmd_lab_init() -> Result<bool, Failure> {
    use std::io::Write;
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
    let catalog = catalog()?;
    let jobs_text = std::env::var("KVMCAP_LAB_JOBS").unwrap_or_default();
    let host: Vec<String> = std::env::var("KVMCAP_LAB_HOST")
        .unwrap_or_default()
        .split('+')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let paths = kvmcap::lab::LabPaths::default();
    let mut out = std::io::stdout().lock();
    let mut all_pass = true;
    match kvmcap::lab::parse_jobs(&jobs_text) {
        Ok(jobs) => {
            let _ = writeln!(out, "kvmcap lab: {} job(s)", jobs.len());
            for job in &jobs {
                let result = kvmcap::lab::run_job(job, &paths, &host, &catalog);
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
    Ok(all_pass)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if std::process::id() == 1 {
        args = vec!["lab-init".into()];
    }
    let options = match cli::parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Err(cli::Usage(m)) => {
            eprintln!("kvmcap: {m} (see kvmcap --help)");
            return ExitCode::from(exit::USAGE);
        }
    };
    let result = match options.command.as_str() {
        "caps" => cmd_caps(&options).map(|()| true),
        "probe" => cmd_probe(&options),
        "image" => cmd_image(&options),
        "verify" => cmd_verify(&options),
        "explore" => cmd_explore(&options),
        "lab-init" => cmd_lab_init(),
        _ => cmd_run(&options),
    };
    match result {
        Ok(true) => ExitCode::from(exit::OK),
        Ok(false) => ExitCode::from(exit::VERDICT),
        Err(f) => {
            eprintln!("kvmcap: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
