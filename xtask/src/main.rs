//! `cargo xtask`: the project's build and test loop.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xtask::kernel::Kernel;
use xtask::results::{self, Results, Share};
use xtask::{
    check, codegen, conformance, initramfs, kbuild, kernel, lab, patches, pbv, pipeline,
    static_build, XtaskError,
};

mod cli;
mod fuzz;
mod tools;

use cli::{Cli, Command, KernelArgs, KernelCommand, OutFormat, PatchCommand, RunArgs};

fn usage(e: impl ToString) -> XtaskError {
    XtaskError::Usage(e.to_string())
}

/// Writes `text` to `path` (`-`: standard output).
fn write_out(path: &Path, text: &str) -> Result<(), XtaskError> {
    if path.as_os_str() == "-" {
        print!("{text}");
        return Ok(());
    }
    xtask::write_atomic(path, text.as_bytes())
}

/// The user's own fixtures for the lab, staged under target/kvmcap/lab-fixtures/ (features/,
/// scenarios/) and named to kvmcap's loader, which then checks the jobs with them and the lab
/// initramfs takes them in. Returns the names of the scenario files given.
fn stage_fixtures(scenarios: &[String], dir: Option<&Path>) -> Result<Vec<String>, XtaskError> {
    let files: Vec<&String> = scenarios
        .iter()
        .filter(|s| kvmcap::fixtures::is_path(s))
        .collect();
    if files.is_empty() && dir.is_none() {
        return Ok(Vec::new());
    }
    let stage = initramfs::out_dir().join("lab-fixtures");
    let _ = std::fs::remove_dir_all(&stage);
    let copy = |from: &Path, sub: &str| -> Result<String, XtaskError> {
        let name = from
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| usage(format!("{}: not a .toml file", from.display())))?;
        let to = stage.join(sub).join(format!("{name}.toml"));
        let text = std::fs::read(from).map_err(|e| usage(format!("{}: {e}", from.display())))?;
        xtask::write_atomic(&to, &text)?;
        Ok(name)
    };
    if let Some(d) = dir {
        for sub in ["features", "scenarios"] {
            let Ok(rd) = std::fs::read_dir(d.join(sub)) else {
                continue;
            };
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "toml") {
                    copy(&e.path(), sub)?;
                }
            }
        }
    }
    let mut names = Vec::new();
    for f in files {
        names.push(copy(Path::new(f), "scenarios")?);
    }
    kvmcap::fixtures::set_user_dir(stage);
    Ok(names)
}

/// The jobs of `cargo xtask lab`, checked on this host (kvmcap's own loader: every feature and
/// scenario resolves, scenarios list the backend, the vCPUs fit) before any build or boot.
fn lab_jobs(
    scenarios: &[String],
    jobs: &[String],
    fixtures: Option<&Path>,
) -> Result<Vec<String>, XtaskError> {
    let staged = stage_fixtures(scenarios, fixtures)?;
    let catalog = msr_probe::Catalog::builtin().map_err(usage)?;
    // The user's files by their own paths first, so an error names the file they gave.
    for f in scenarios.iter().filter(|s| kvmcap::fixtures::is_path(s)) {
        kvmcap::commands::scenario::Scenario::find(f, &catalog).map_err(usage)?;
    }
    let mut all = jobs.to_vec();
    let mut names: Vec<String> = scenarios
        .iter()
        .filter(|s| !kvmcap::fixtures::is_path(s))
        .cloned()
        .collect();
    names.extend(staged);
    for name in names {
        let s = kvmcap::commands::scenario::Scenario::find(&name, &catalog).map_err(usage)?;
        let vcpus = s
            .cases
            .iter()
            .map(|c| c.vcpus_needed())
            .max()
            .unwrap_or(1)
            .max(2);
        for b in &s.backends {
            all.push(format!("run:{name}:{b}:{vcpus}"));
        }
    }
    if all.is_empty() {
        all = lab::DEFAULT_JOBS.iter().map(|s| s.to_string()).collect();
    }
    check_jobs(&all)?;
    Ok(all)
}

fn check_jobs(jobs: &[String]) -> Result<(), XtaskError> {
    let catalog = msr_probe::Catalog::builtin().map_err(usage)?;
    let parsed = kvmcap::lab::parse_jobs(&jobs.join(",")).map_err(usage)?;
    kvmcap::lab::check_jobs(&parsed, &catalog).map_err(usage)
}

/// Saves one kernel's results file where `run` asks (merge-results reads it). KTAP and JUnit
/// come once, for every kernel, from [`emit`].
fn save_results(res: &Results, out_dir: &Path, r: &RunArgs) -> Result<(), XtaskError> {
    let dir = r.results.clone().unwrap_or_else(|| out_dir.to_owned());
    let name = match res.shard {
        Some(s) => format!("results-{}-of-{}.json", s.k, s.n),
        None => "results.json".into(),
    };
    let kernel_dir = dir.join(res.kernel.split_whitespace().next().unwrap_or("kernel"));
    res.save(&kernel_dir.join(&name))?;
    eprintln!("xtask: results in {}", kernel_dir.join(name).display());
    Ok(())
}

fn emit(all: &[Results], format: OutFormat, junit: Option<&Path>) -> Result<(), XtaskError> {
    let suites: Vec<_> = all.iter().flat_map(Results::suites).collect();
    if let Some(path) = junit {
        write_out(path, &kvmcap::report::results::junit(&suites))?;
    }
    if format == OutFormat::Ktap {
        print!("{}", kvmcap::report::results::ktap(&suites));
    }
    Ok(())
}

fn cmd_lab(
    scenarios: &[String],
    jobs: &[String],
    fixtures: Option<&Path>,
    k: &KernelArgs,
    r: &RunArgs,
) -> Result<bool, XtaskError> {
    let share = Share::of(lab_jobs(scenarios, jobs, fixtures)?, r.shard);
    let ran = share.jobs();
    let mut out = Vec::new();
    for kernel in k.kernels() {
        let art = pipeline::prepare_kernel(kernel, k.source())?;
        let dir = initramfs::out_dir().join("lab").join(kernel.id());
        let mut opts = art.lab_options(ran.clone(), dir.join("console.log"));
        opts.shards = r.labs.map_or(opts.shards, usize::from);
        opts.cache = (!r.no_cache).then(xtask::lab_cache::default_dir);
        let run = lab::run_with_progress(&opts)?;
        lab::save_reports(&run, &dir)?;
        eprintln!("{}", pipeline::time_line(&art, &run));
        if r.format == OutFormat::Text {
            if k.kernels().len() > 1 {
                println!("kernel {} ({})", kernel.label(), art.tree.version);
            }
            print!("{}", run.table());
        }
        let label = format!("{} ({})", kernel.label(), art.tree.version);
        let res = Results::of_run("lab", &label, &share, &run, &[]);
        save_results(&res, &dir, r)?;
        out.push(res);
    }
    emit(&out, r.format, r.junit.as_deref())?;
    Ok(out.iter().all(Results::pass))
}

fn cmd_pbv(bless: bool, tier: pbv::Tier, k: &KernelArgs, r: &RunArgs) -> Result<bool, XtaskError> {
    if bless && tier != pbv::Tier::Full {
        return Err(usage(
            "--bless writes the user model's views: it needs --tier full",
        ));
    }
    let all = tier.jobs();
    check_jobs(&all)?;
    let share = Share::of(all, r.shard);
    let ran = share.jobs();
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for kernel in k.kernels() {
        let art = pipeline::prepare_kernel(kernel, k.source())?;
        let dir = initramfs::out_dir().join("pbv").join(kernel.id());
        let mut opts = art.lab_options(ran.clone(), dir.join("console.log"));
        opts.shards = r.labs.map_or(opts.shards, usize::from);
        opts.cache = (!r.no_cache).then(xtask::lab_cache::default_dir);
        let run = lab::run_with_progress(&opts)?;
        lab::save_reports(&run, &dir)?;
        if r.format == OutFormat::Text {
            print!("{}", run.table());
        }
        eprintln!("{}", pipeline::time_line(&art, &run));
        let checks = pbv::check(&run, &ran, bless)?;
        // What the export's cover letter says was tested (an unsharded full run's).
        if r.shard.is_none() && tier == pbv::Tier::Full {
            let totals = run
                .jobs
                .iter()
                .flatten()
                .find(|o| o.job == format!("selftest:{}:kernel:1", pbv::SELFTEST))
                .and_then(|o| o.report.get("output").and_then(|v| v.as_str()))
                .and_then(|s| s.lines().find(|l| l.starts_with("# Totals")))
                .unwrap_or("no TAP totals")
                .to_owned();
            let failed = checks.iter().filter(|c| !c.pass).count();
            let summary = format!(
                "  Linux {} ({}): {} checks, {failed} failed; {} {totals}\n",
                kernel.label(),
                art.tree.version,
                checks.len(),
                pbv::SELFTEST
            );
            xtask::write_atomic(&dir.join("summary.txt"), summary.as_bytes())?;
        }
        let label = format!("{} ({})", kernel.label(), art.tree.version);
        let res = Results::of_run("patch-boot-verify", &label, &share, &run, &checks);
        save_results(&res, &dir, r)?;
        out.push(res);
        rows.push((kernel.label().to_owned(), checks));
        eprintln!("xtask: reports and logs in {}", dir.display());
    }
    if r.format == OutFormat::Text {
        print!("{}", pbv::kernel_table(&rows));
    }
    emit(&out, r.format, r.junit.as_deref())?;
    Ok(out.iter().all(Results::pass))
}

fn cmd_merge(
    files: &[PathBuf],
    junit: Option<&Path>,
    format: OutFormat,
) -> Result<bool, XtaskError> {
    let parts = files
        .iter()
        .map(|f| Results::load(f))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = results::merge(&parts).map_err(usage)?;
    if format == OutFormat::Text {
        for m in &merged {
            print!("{}", m.table());
        }
    }
    emit(&merged, format, junit)?;
    Ok(merged.iter().all(Results::pass))
}

fn run(cli: Cli) -> Result<bool, XtaskError> {
    match cli.command {
        Command::Static { packages } => {
            let pkgs = if packages.is_empty() {
                vec!["msr-probe".to_owned()]
            } else {
                packages
            };
            for p in pkgs {
                println!("{}", static_build::build(&p)?.display());
            }
            Ok(true)
        }
        Command::Initramfs => {
            println!("{}", initramfs::guest()?.display());
            Ok(true)
        }
        Command::Kernel(KernelCommand::Fetch { k }) => {
            for kernel in k.kernels() {
                let t = kernel::fetch(kernel, k.kernel_tree.as_deref())?;
                println!("{} ({})", t.dir.display(), t.version);
            }
            Ok(true)
        }
        Command::Kernel(KernelCommand::Build { k }) => {
            for kernel in k.kernels() {
                let tree = pipeline::source_tree(kernel, k.source())?;
                println!("{}", kbuild::build(&tree)?.bzimage.display());
            }
            Ok(true)
        }
        Command::Patch { k, step: None } => {
            for kernel in k.kernels() {
                let tree = pipeline::source_tree(kernel, k.source())?;
                println!("{}", tree.dir.display());
            }
            Ok(true)
        }
        Command::Patch {
            k,
            step: Some(PatchCommand::Check),
        } => {
            let mut rows = Vec::new();
            for kernel in k.kernels() {
                rows.extend(check::run(kernel, &kernel::fetch(kernel, None)?)?);
            }
            print!("{}", check::table(&rows));
            Ok(rows.iter().all(|r| r.pass))
        }
        Command::Patch {
            step: Some(PatchCommand::Export { check: true, .. }),
            ..
        } => {
            let base = kernel::fetch(Kernel::Newest, None)?;
            let rows = xtask::export_check::run(&base)?;
            print!("{}", check::table(&rows));
            Ok(rows.iter().all(|r| r.pass))
        }
        Command::Patch {
            step: Some(PatchCommand::Export { to, check: false }),
            ..
        } => {
            let to = to.unwrap_or_else(|| initramfs::out_dir().join("export"));
            let base = kernel::fetch(Kernel::Newest, None)?;
            for f in xtask::export::run(&base, &to)? {
                println!("{}", f.display());
            }
            Ok(true)
        }
        Command::Codegen => {
            let list = patches::series(&patches::series_dir())?;
            let tree = patches::apply(Kernel::Newest, &kernel::fetch(Kernel::Newest, None)?)?;
            println!(
                "{}",
                codegen::generate(&tree, &patches::series_hash(&list)?)?.display()
            );
            Ok(true)
        }
        Command::Lab {
            scenario,
            job,
            fixtures,
            k,
            run,
        } => cmd_lab(&scenario, &job, fixtures.as_deref(), &k, &run),
        Command::PatchBootVerify {
            bless,
            tier,
            k,
            run,
        } => cmd_pbv(bless, tier, &k, &run),
        Command::MergeResults {
            files,
            junit,
            format,
        } => cmd_merge(&files, junit.as_deref(), format),
        Command::Mutants => {
            let outcomes = xtask::mutants::run()?;
            let md = xtask::mutants::report(&outcomes);
            let path = xtask::workspace_root().join("kernel-patches/MUTANTS.md");
            xtask::write_atomic(&path, md.as_bytes())?;
            print!("{md}");
            xtask::bench_report::update_mutation_score()?;
            eprintln!(
                "xtask: wrote {} and the score in BENCHMARKS.md",
                path.display()
            );
            Ok(outcomes.iter().all(|o| o.verdict != "survived"))
        }
        Command::Conformance => {
            let features = conformance::stock_features()?;
            let mut columns = conformance::in_the_lab(&features)?;
            columns.extend(conformance::on_this_host(&features)?);
            let (md, ok) = conformance::render(&columns);
            let path = conformance::doc_path();
            xtask::write_atomic(&path, md.as_bytes())?;
            print!("{}", md.split("\n## Differences").next().unwrap_or(""));
            eprintln!("xtask: wrote {}", path.display());
            Ok(ok)
        }
        Command::Bench {
            redraw: Some(from), ..
        } => {
            let n = xtask::bench_report::redraw(&from)?;
            println!(
                "redrew benchmarks.svg: {n} benchmarks from {}",
                from.display()
            );
            Ok(true)
        }
        Command::Bench {
            quick,
            json,
            no_edit_loop,
            no_lab,
            redraw: None,
        } => {
            let table = xtask::bench::run(quick, json.as_deref(), !no_edit_loop, !no_lab)?;
            print!("{table}");
            println!("wrote BENCHMARKS.md and benchmarks.svg");
            Ok(true)
        }
        Command::Fuzz { seconds, targets } => {
            let runs = fuzz::run(seconds, &targets)?;
            print!("{}", fuzz::table(&runs));
            Ok(runs.iter().all(|r| r.crashes.is_empty()))
        }
        Command::Review => tools::review(),
        Command::Docs => tools::docs(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cli = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                eprint!("\n{}", cli::help_table());
                return ExitCode::from(2);
            }
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("bad command line");
            let tip = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("tip: "))
                .map(|t| format!("; {t}"))
                .unwrap_or_default();
            eprintln!(
                "xtask: {}{tip} (see cargo xtask --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
