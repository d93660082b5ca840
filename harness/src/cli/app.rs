//! The commands behind the command line: each reads its arguments, runs, prints a table or
//! JSON, and returns whether every verdict held. Every failure is one line and a code of
//! [`exit`].

use serde::Serialize;

use super::exit::{self, ExitCode};
use super::{
    CapsArgs, Cli, Command, ExploreArgs, HostArgs, ImageArgs, ListArgs, ListWhat, MsrArgs, Output,
    ProbeArgs, RunArgs, VerifyArgs,
};
use crate::commands::probe::{probe_bare_on, ProbeRequest};
use crate::commands::scenario::{run_scenario, Scenario, ScenarioError};
use crate::commands::verify::{verify_linux, VerifyError, VerifyRequest};
use crate::features::FeatureSpec;
use crate::fixtures::{self, Kind};
use crate::host::HostSources;
use crate::negotiate::NegotiationError;
use crate::report::{write_report, Document};
use crate::vmm::error::VmmError;
use msr_probe::{Catalog, DevMsr, MsrIndex};

/// A command's failure: the exit code and the one line.
#[derive(Debug)]
pub struct Failure {
    /// The exit code ([`exit`]).
    pub code: u8,
    /// The message.
    pub message: String,
}

fn fail(code: u8, message: impl ToString) -> Failure {
    Failure {
        code,
        message: message.to_string(),
    }
}

fn failure<E: ExitCode + std::fmt::Display>(e: E) -> Failure {
    fail(e.exit_code(), e)
}

fn catalog() -> Result<Catalog, Failure> {
    Catalog::builtin().map_err(|e| fail(exit::INPUT, e))
}

fn emit<D: Document>(o: &Output, doc: &D, table: impl FnOnce() -> String) -> Result<(), Failure> {
    crate::report::emit(&o.options(), doc, table).map_err(|e| fail(exit::OUTPUT, e))
}

fn cmd_caps(kvm_path: &std::path::Path, o: &CapsArgs) -> Result<(), Failure> {
    let r = crate::commands::caps::scan_caps(kvm_path).map_err(failure)?;
    emit(&o.out, &r, || r.table())
}

fn feature(name: &str, catalog: &Catalog) -> Result<FeatureSpec, Failure> {
    FeatureSpec::find(name, catalog).map_err(failure)
}

fn host_sources(
    o: &HostArgs,
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
    o: &MsrArgs,
    repeat: u16,
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
    for _ in 1..repeat {
        msrs.extend_from_slice(&once);
    }
    if msrs.len() > crate::guests::bare::MAX_OPS {
        return Err(fail(
            exit::USAGE,
            format!(
                "{} reads exceed the bare guest's {} operations",
                msrs.len(),
                crate::guests::bare::MAX_OPS
            ),
        ));
    }
    Ok(msrs)
}

/// `kvmcap image`: the bare probe for another VMM, and what that VMM's guest reported.
fn cmd_image(o: &ImageArgs) -> Result<bool, Failure> {
    use crate::guests::bare::{image, MsrOp};
    let catalog = catalog()?;
    let spec = feature(&o.feature, &catalog)?;
    let ops: Vec<MsrOp> = probe_msrs(&o.msrs, 1, &catalog, &spec)?
        .into_iter()
        .map(|index| MsrOp::Read { index })
        .collect();
    let per_cpu = vec![ops.clone(); usize::from(o.vcpus)];
    if let Some(out) = &o.out_file {
        write_report(out, &image::multiboot_image(&per_cpu, o.timed))
            .map_err(|e| fail(exit::OUTPUT, format!("image {}: {e}", out.display())))?;
        println!(
            "qemu-system-x86_64 -accel kvm -M microvm -cpu host,-arch-capabilities -smp {} -m 64 -nodefaults \\\n    \
             -display none -no-reboot -kernel {} -debugcon file:DUMP \\\n    \
             -device isa-debug-exit,iobase={:#x},iosize=4   # exits with status 1 when done",
            o.vcpus,
            out.display(),
            crate::guests::bare::DEBUG_EXIT_PORT
        );
        return Ok(true);
    }
    let Some(dump) = &o.dump else {
        return Err(fail(exit::USAGE, "image needs --out or --dump"));
    };
    let bytes = std::fs::read(dump)
        .map_err(|e| fail(exit::INPUT, format!("dump {}: {e}", dump.display())))?;
    let doc = crate::commands::image::ImageDump::parse(&per_cpu, &bytes, o.timed, &catalog)
        .map_err(|e| fail(exit::NO_REPORT, format!("dump {}: {e}", dump.display())))?;
    emit(&o.out, &doc, || doc.table())?;
    Ok(true)
}

fn cmd_probe(kvm_path: &std::path::Path, o: &ProbeArgs) -> Result<bool, Failure> {
    // Open KVM and create the VM while the catalog and feature are read, and read the host's
    // fingerprint (for the report) meanwhile too.
    let open = crate::vmm::machine::OpenVm::open_in_background(kvm_path.to_owned());
    std::thread::spawn(msr_probe::Fingerprint::of_running_system);

    let catalog = catalog()?;
    let spec = feature(&o.feature, &catalog)?;
    check_vcpus(o.vcpus, o.limits.max_vcpus)?;

    let msrs = probe_msrs(&o.msrs, o.repeat, &catalog, &spec)?;
    let host = host_sources(&o.host, &catalog, &spec)?;

    let open = open
        .join()
        .map_err(|_| fail(exit::KVM, "opening KVM: the thread panicked"))?
        .map_err(failure)?;
    let report = probe_bare_on(
        open,
        &ProbeRequest {
            kvm_path: kvm_path.to_owned(),
            feature: Some(&spec),
            backend: o.backend,
            announce: o.pair.pair,
            vcpus: o.vcpus,
            msrs,
            host: &host,
            limits: o.limits.limits(),
            irqchip: o.irqchip,
            timed: o.timed,
        },
        &catalog,
    )
    .map_err(failure)?;
    emit(&o.out, &report, || report.table())?;

    Ok(report.ok())
}

fn cmd_run(kvm_path: &std::path::Path, o: &RunArgs) -> Result<bool, Failure> {
    let catalog = catalog()?;
    let scenario = Scenario::find(&o.scenario, &catalog).map_err(failure)?;
    check_vcpus(o.vcpus, o.limits.max_vcpus)?;
    let backends = match o.backend {
        Some(b) => vec![b],
        None => scenario.backends.clone(),
    };
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    let mut table = String::new();
    for b in backends {
        match run_scenario(
            &scenario,
            b,
            o.vcpus,
            o.pair.pair,
            kvm_path,
            &catalog,
            o.limits.limits(),
        ) {
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
                skipped.push(crate::commands::scenario::SkippedBackend {
                    backend: b,
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(failure(e)),
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
    let run = crate::commands::scenario::RunReport::new(scenario.name.clone(), reports, skipped);
    emit(&o.out, &run, || table)?;
    Ok(run.pass)
}

fn cmd_explore(kvm_path: &std::path::Path, o: &ExploreArgs) -> Result<bool, Failure> {
    let catalog = catalog()?;
    let spec = feature(&o.feature, &catalog)?;
    let host = host_sources(&o.host, &catalog, &spec)?;
    let report = crate::commands::explore::explore(
        &crate::commands::explore::ExploreRequest {
            kvm_path: kvm_path.to_owned(),
            feature: &spec,
            backend: o.backend,
            vcpus: o.vcpus,
            announce: o.pair.pair,
            host: &host,
            limits: o.limits.limits(),
            kvm_label: "host".into(),
        },
        &catalog,
    )
    .map_err(failure)?;
    if let Some(dir) = &o.out_dir {
        report
            .write_scenarios(dir)
            .map_err(|e| fail(exit::OUTPUT, format!("{}: {e}", dir.display())))?;
    }
    emit(&o.out, &report, || report.table())?;
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

fn cmd_verify(kvm_path: &std::path::Path, o: &VerifyArgs) -> Result<bool, Failure> {
    let catalog = catalog()?;
    let spec = feature(&o.feature, &catalog)?;
    check_vcpus(o.vcpus, o.limits.max_vcpus)?;
    let mut msrs: Vec<MsrIndex> = Vec::new();
    for m in &o.msrs {
        msrs.push(catalog.resolve(m).map_err(|e| fail(exit::USAGE, e))?);
    }
    let host = host_sources(&o.host, &catalog, &spec)?;
    let initramfs = o.initramfs.clone().unwrap_or_else(default_initramfs);
    if !initramfs.exists() {
        return Err(fail(
            exit::INPUT,
            format!("guest initramfs {} does not exist: build it with `cargo xtask initramfs` or pass --initramfs", initramfs.display()),
        ));
    }
    let report = verify_linux(
        &VerifyRequest {
            kvm_path: kvm_path.to_owned(),
            kernel: o.kernel.clone(),
            initramfs,
            feature: Some(&spec),
            backend: o.backend,
            announce: o.pair.pair,
            vcpus: o.vcpus,
            msrs: (!msrs.is_empty()).then_some(msrs),
            host: &host,
            limits: o.limits.limits(),
            mem_mib: o.mem_mib,
            console_limit: o.console_limit,
            echo_console: o.console,
            cmdline: o.cmdline.clone(),
        },
        &catalog,
    )
    .map_err(|e| match e {
        VerifyError::Vmm(VmmError::Image { .. }) | VerifyError::NoReport { .. } => {
            fail(e.exit_code(), e.to_string().replace('\n', " | "))
        }
        e => failure(e),
    })?;
    emit(&o.out, &report, || report.table())?;
    Ok(report.ok())
}

fn cmd_lab_init() -> Result<bool, Failure> {
    let pid1 = crate::lab::init::mount_if_pid1();
    let catalog = catalog()?;
    Ok(crate::lab::init::run(&catalog, pid1))
}

/// Refuses more vCPUs than `--max-vcpus`.
fn check_vcpus(vcpus: u8, max: u8) -> Result<(), Failure> {
    if vcpus > max {
        return Err(fail(
            exit::USAGE,
            format!("--vcpus {vcpus} exceeds --max-vcpus {max}"),
        ));
    }
    Ok(())
}

fn cmd_list(o: &ListArgs) -> Result<bool, Failure> {
    #[derive(Serialize)]
    struct Row {
        name: String,
        origin: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        what: String,
    }
    let catalog = catalog()?;
    let rows: Vec<Row> = match o.what {
        ListWhat::Features | ListWhat::Scenarios => {
            let kind = if o.what == ListWhat::Features {
                Kind::Feature
            } else {
                Kind::Scenario
            };
            let mut rows = Vec::new();
            for e in fixtures::list(kind) {
                // Each file is loaded, so a broken one of the user's shows here first.
                let what = match kind {
                    Kind::Feature => FeatureSpec::find(&e.name, &catalog)
                        .map(|f| f.description)
                        .map_err(failure)?,
                    Kind::Scenario => Scenario::find(&e.name, &catalog)
                        .map(|s| format!("feature {}, {} cases", s.feature.name, s.cases.len()))
                        .map_err(failure)?,
                };
                rows.push(Row {
                    name: e.name,
                    origin: e.origin,
                    what,
                });
            }
            rows
        }
        ListWhat::Msrs => catalog
            .indices()
            .into_iter()
            .map(|i| Row {
                name: catalog.name_of(i).to_owned(),
                origin: i.to_string(),
                what: String::new(),
            })
            .collect(),
    };
    let text = if o.json {
        serde_json::to_string_pretty(&rows).map_err(|e| fail(exit::OUTPUT, e))? + "\n"
    } else {
        rows.iter()
            .map(|r| format!("{:<32} {:<12} {}\n", r.name, r.origin, r.what))
            .collect()
    };
    crate::report::write::stdout(text.as_bytes()).map_err(|e| fail(exit::OUTPUT, e))?;
    Ok(true)
}

/// Runs the parsed command line: `Ok(true)` when every verdict held.
pub fn run(cli: Cli) -> Result<bool, Failure> {
    if let Some(dir) = &cli.fixtures {
        fixtures::set_user_dir(dir.clone());
    }
    // The lab's console is a terminal, but what lab-init prints is read by xtask: no colour.
    let lab = matches!(cli.command, Command::LabInit | Command::LabJob { .. });
    crate::report::style::set(crate::report::style::Style {
        color: !lab && crate::report::style::color_for_stdout(cli.color),
        verbose: lab || cli.verbose,
    });
    let kvm = cli.kvm.as_path();
    match &cli.command {
        Command::Caps(o) => cmd_caps(kvm, o).map(|()| true),
        Command::Probe(o) => cmd_probe(kvm, o),
        Command::Image(o) => cmd_image(o),
        Command::Run(o) => cmd_run(kvm, o),
        Command::Explore(o) => cmd_explore(kvm, o),
        Command::Verify(o) => cmd_verify(kvm, o),
        Command::List(o) => cmd_list(o),
        Command::LabInit => cmd_lab_init(),
        Command::LabJob { job } => {
            let catalog = catalog()?;
            crate::lab::init::run_one(job, &catalog).map_err(|e| fail(exit::USAGE, e))
        }
        Command::LabCheck { jobs } => {
            let catalog = catalog()?;
            let jobs = crate::lab::parse_jobs(jobs).map_err(|e| fail(exit::USAGE, e))?;
            crate::lab::check_jobs(&jobs, &catalog).map_err(|e| fail(exit::USAGE, e))?;
            println!("{} lab job(s) check out", jobs.len());
            Ok(true)
        }
        Command::Completions { shell } => {
            let mut cmd = super::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "kvmcap", &mut out);
            crate::report::write::stdout(&out).map_err(|e| fail(exit::OUTPUT, e))?;
            Ok(true)
        }
        Command::Manpage => {
            let mut out = Vec::new();
            clap_mangen::Man::new(super::command())
                .render(&mut out)
                .map_err(|e| fail(exit::OUTPUT, e))?;
            crate::report::write::stdout(&out).map_err(|e| fail(exit::OUTPUT, e))?;
            Ok(true)
        }
    }
}
