//! `cargo xtask`: the project's build and test loop.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use xtask::kernel::Kernel;
use xtask::{
    check, codegen, conformance, initramfs, kbuild, kernel, lab, patches, pbv, pipeline,
    static_build, XtaskError,
};

mod fuzz;

const HELP: &str = "\
cargo xtask: kvmcap's build loop

USAGE:
    cargo xtask static [PACKAGE...]     fully static binaries (glibc, +crt-static) of msr-probe
                                        (default) and/or kvmcap; prints their paths
    cargo xtask initramfs               the guest initramfs (static msr-probe as /init)
    --kernel newest|6.12|all            which kernel the kernel, patch, lab and
                                        patch-boot-verify commands work on (default newest:
                                        Debian's linux-source-7.2 7.2.13-1, the main line in
                                        kernel-patches/; 6.12: the backport in
                                        kernel-patches/6.12/); each is cached on its own
    cargo xtask kernel fetch [--kernel K] [--kernel-tree DIR]
                                        the kernel source, extracted under target/kernel/
                                        (newest: downloaded with a private apt tree under
                                        target/kernel/apt/; 6.12: Debian's package, installed
                                        with apt-get when root)
    cargo xtask kernel build [--kernel K] [--kernel-tree DIR]
                                        tinyconfig + fixtures/kernel/kvmcap.config, cached by
                                        source version and fragment hash
    cargo xtask patch [--kernel K] [--kernel-tree DIR [--as-is]]
                                        apply the kernel's series to a copy of its source,
                                        without fuzz; a hunk that fails is named with its file
    --kernel-tree DIR                   the user's git checkout instead of Debian's source: the
                                        series goes onto the temporary branch kvmcap/KERNEL
                                        with git am -3, in a worktree target/kernel/tree-K/
                                        (the checkout and its branch are not touched; a
                                        conflict names the patch and file); the build is out
                                        of tree under target/. --as-is: the tree as it stands
    cargo xtask patch check [--kernel K]
                                        compile what the series touches (arch/x86/kvm/ with
                                        KVM=m KVM_INTEL=m KVM_AMD=m KVM_WERROR=y WERROR=y on
                                        x86_64_defconfig) after each patch on its own: the
                                        tree with patches 1..N, for every N
    cargo xtask patch export [--to DIR]
                                        the main line as it is posted (default into
                                        target/kvmcap/export/): KVM_CAP_PPIN renumbered to the
                                        next free number of 7.2's uAPI, From:/Signed-off-by:
                                        from your git identity (refused without one), the cover
                                        letter listing the last patch-boot-verify runs, RFC
                                        (the lab is emulated); checkpatch --strict and
                                        get_maintainer.pl output in checks.txt
    cargo xtask patch export --check    the exported series (into target/kvmcap/export-check/)
                                        applied with plain git am (no fuzz) onto a pristine git
                                        tree of the 7.2 source (target/kernel/git-newest/, made
                                        once) and built as patch check builds (KVM_WERROR=y)
    cargo xtask codegen                 bindgen the series' uAPI constants into
                                        harness/src/kvm/ppin_uapi.rs (needs libclang-dev)
    cargo xtask lab [--scenario NAME ...] [--job KIND:SUBJECT:BACKEND:VCPUS ...]
                    [--kernel K] [--kernel-tree DIR]
                                        build the patched kernel and the lab initramfs, boot
                                        the lab under qemu-system-x86_64 -accel tcg -cpu max,
                                        run the jobs inside, print the verdicts (reports and
                                        the console log under target/kvmcap/lab/)
    --labs N                            how many lab QEMUs share the lab and patch-boot-verify
                                        jobs out (default: one per host CPU, at most 4)
    cargo xtask patch-boot-verify [--kernel K] [--kernel-tree DIR] [--bless]
                                        the whole loop: patch, build, boot the lab, run the
                                        series' selftest and every PPIN scenario and Linux-guest
                                        verify with backend kernel and user on 1 and 2 vCPUs;
                                        kernel must equal user and kernel-patches/expected/
                                        (--bless rewrites those, shared by both kernels); one
                                        summary table with a KERNEL column; logs under
                                        target/kvmcap/pbv/KERNEL/
    cargo xtask mutants                 mutants of the main line's PPIN handlers (each condition
                                        negated, early return dropped, error code and mask
                                        swapped), each built and run in the lab against the
                                        selftest, the PPIN scenarios and kvmcap explore;
                                        rewrites kernel-patches/MUTANTS.md with the score
    cargo xtask conformance             stock KVM against the feature files written from the
                                        manuals (model = \"stock\"): kvmcap explore with backend
                                        none in the lab (newest kernel) and on this host;
                                        rewrites docs/conformance.md; fails on an unexplained
                                        difference
    cargo xtask bench [--quick] [--json PATH] [--no-edit-loop] [--no-lab]
                                        kvmcap against its peers in one invocation: median,
                                        p10, p90 and ratios; rewrites BENCHMARKS.md and
                                        benchmarks.svg
    cargo xtask fuzz [--seconds N] [TARGET...]
                                        run the cargo-fuzz targets of fuzz/ (default: all,
                                        60 s each) with cargo +nightly fuzz (cargo-fuzz is
                                        installed when missing); crashes are copied into
                                        fuzz/regressions/TARGET/; prints seconds, executions
                                        and crashes per target, fails if any crashed
    cargo xtask help                    this help

EXIT CODES: 0 pass, 1 usage or a failed verdict, 2 a tool could not start, 3 build failed,
            4 bad output, 5 something missing (with the command that installs it), 6 lab failed
            (hung, panicked, or no report), 7 a patch of the series does not apply
";

struct Args {
    positional: Vec<String>,
    kernels: Vec<Kernel>,
    as_is: bool,
    check: bool,
    to: Option<PathBuf>,
    kernel_tree: Option<PathBuf>,
    scenarios: Vec<String>,
    bless: bool,
    quick: bool,
    no_edit_loop: bool,
    no_lab: bool,
    json: Option<PathBuf>,
    jobs: Vec<String>,
    seconds: Option<u64>,
    labs: Option<usize>,
}

fn parse(args: &[String]) -> Result<Args, XtaskError> {
    let mut a = Args {
        positional: Vec::new(),
        kernels: vec![Kernel::Newest],
        as_is: false,
        check: false,
        to: None,
        kernel_tree: None,
        scenarios: Vec::new(),
        bless: false,
        quick: false,
        no_edit_loop: false,
        no_lab: false,
        json: None,
        jobs: Vec::new(),
        seconds: None,
        labs: None,
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| XtaskError::Usage(format!("{flag} needs a value")))
        };
        match x.as_str() {
            "--kernel-tree" => a.kernel_tree = Some(value("--kernel-tree")?.into()),
            "--kernel" => a.kernels = Kernel::parse_list(&value("--kernel")?)?,
            "--bless" => a.bless = true,
            "--as-is" => a.as_is = true,
            "--check" => a.check = true,
            "--to" => a.to = Some(value("--to")?.into()),
            "--quick" => a.quick = true,
            "--no-edit-loop" => a.no_edit_loop = true,
            "--no-lab" => a.no_lab = true,
            "--json" => a.json = Some(value("--json")?.into()),
            "--scenario" => a.scenarios.push(value("--scenario")?),
            "--job" => a.jobs.push(value("--job")?),
            "--labs" => {
                let v = value("--labs")?;
                a.labs = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| (1..=8).contains(&n))
                        .ok_or_else(|| {
                            XtaskError::Usage(format!("--labs `{v}`: a whole number from 1 to 8"))
                        })?,
                )
            }
            "--seconds" => {
                let v = value("--seconds")?;
                a.seconds = Some(v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    XtaskError::Usage(format!("--seconds `{v}`: a whole number above 0"))
                })?)
            }
            s if s.starts_with('-') => {
                return Err(XtaskError::Usage(format!("unknown option `{s}`")))
            }
            s => a.positional.push(s.to_owned()),
        }
    }
    Ok(a)
}

/// The backends a scenario file lists.
fn scenario_backends(name: &str) -> Result<Vec<String>, XtaskError> {
    let path = xtask::workspace_root()
        .join("fixtures/scenarios")
        .join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).map_err(|e| XtaskError::Missing {
        what: format!("scenario {name} ({})", path.display()),
        hint: e.to_string(),
    })?;
    let v: toml::Value = toml::from_str(&text).map_err(|e| XtaskError::Output {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    Ok(v.get("backends")
        .and_then(|b| b.as_array())
        .map(|b| {
            b.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

impl Args {
    /// Where the kernel source comes from: Debian's, or `--kernel-tree DIR` (a git checkout the
    /// series is applied to on a temporary branch, or with `--as-is` the tree as it stands).
    fn source(&self) -> Result<pipeline::Source<'_>, XtaskError> {
        match (self.kernel_tree.as_deref(), self.as_is) {
            (None, false) => Ok(pipeline::Source::Debian),
            (None, true) => Err(XtaskError::Usage("--as-is needs --kernel-tree DIR".into())),
            (Some(d), false) => Ok(pipeline::Source::GitTree(d)),
            (Some(d), true) => Ok(pipeline::Source::AsIs(d)),
        }
    }
}

fn cmd_lab(a: &Args) -> Result<bool, XtaskError> {
    let mut jobs = a.jobs.clone();
    for s in &a.scenarios {
        for b in scenario_backends(s)? {
            jobs.push(format!("run:{s}:{b}:2"));
        }
    }
    if jobs.is_empty() {
        jobs = lab::DEFAULT_JOBS.iter().map(|s| s.to_string()).collect();
    }
    let mut pass = true;
    for &k in &a.kernels {
        let art = pipeline::prepare_kernel(k, a.source()?)?;
        let out = initramfs::out_dir().join("lab").join(k.id());
        let mut opts = art.lab_options(jobs.clone(), out.join("console.log"));
        opts.shards = a.labs.unwrap_or(opts.shards);
        let run = lab::run(&opts)?;
        lab::save_reports(&run, &out)?;
        eprintln!("{}", pipeline::time_line(&art, &run));
        if a.kernels.len() > 1 {
            println!("kernel {} ({})", k.label(), art.tree.version);
        }
        print!("{}", run.table());
        pass &= run.pass();
    }
    Ok(pass)
}

fn cmd_pbv(a: &Args) -> Result<bool, XtaskError> {
    let mut rows = Vec::new();
    for &k in &a.kernels {
        let art = pipeline::prepare_kernel(k, a.source()?)?;
        let out = initramfs::out_dir().join("pbv").join(k.id());
        let mut opts = art.lab_options(pbv::jobs(), out.join("console.log"));
        opts.shards = a.labs.unwrap_or(opts.shards);
        let run = lab::run(&opts)?;
        lab::save_reports(&run, &out)?;
        print!("{}", run.table());
        eprintln!("{}", pipeline::time_line(&art, &run));
        let checks = pbv::check(&run, a.bless)?;
        // What the export's cover letter says was tested.
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
            k.label(),
            art.tree.version,
            checks.len(),
            pbv::SELFTEST
        );
        let path = out.join("summary.txt");
        std::fs::write(&path, summary).map_err(|e| XtaskError::Output {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        rows.push((k.label().to_owned(), checks));
        eprintln!("xtask: reports and logs in {}", out.display());
    }
    print!("{}", pbv::kernel_table(&rows));
    Ok(rows.iter().all(|(_, checks)| checks.iter().all(|c| c.pass)))
}

fn run(args: &[String]) -> Result<bool, XtaskError> {
    let a = parse(args)?;
    let pos: Vec<&str> = a.positional.iter().map(String::as_str).collect();
    match pos.as_slice() {
        ["static", pkgs @ ..] => {
            let pkgs: Vec<&str> = if pkgs.is_empty() {
                vec!["msr-probe"]
            } else {
                pkgs.to_vec()
            };
            for p in pkgs {
                println!("{}", static_build::build(p)?.display());
            }
            Ok(true)
        }
        ["initramfs"] => {
            println!("{}", initramfs::guest()?.display());
            Ok(true)
        }
        ["kernel", "fetch"] => {
            for &k in &a.kernels {
                let t = kernel::fetch(k, a.kernel_tree.as_deref())?;
                println!("{} ({})", t.dir.display(), t.version);
            }
            Ok(true)
        }
        ["kernel", "build"] => {
            for &k in &a.kernels {
                let tree = pipeline::source_tree(k, a.source()?)?;
                println!("{}", kbuild::build(&tree)?.bzimage.display());
            }
            Ok(true)
        }
        ["mutants"] => {
            let outcomes = xtask::mutants::run()?;
            let md = xtask::mutants::report(&outcomes);
            let path = xtask::workspace_root().join("kernel-patches/MUTANTS.md");
            std::fs::write(&path, &md).map_err(|e| XtaskError::Output {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            print!("{md}");
            xtask::bench_report::update_mutation_score()?;
            eprintln!(
                "xtask: wrote {} and the score in BENCHMARKS.md",
                path.display()
            );
            Ok(outcomes.iter().all(|o| o.verdict != "survived"))
        }
        ["conformance"] => {
            let features = conformance::stock_features()?;
            let mut columns = conformance::in_the_lab(&features)?;
            columns.extend(conformance::on_this_host(&features)?);
            let (md, ok) = conformance::render(&columns);
            let path = conformance::doc_path();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| XtaskError::Output {
                    path: dir.to_owned(),
                    problem: e.to_string(),
                })?;
            }
            std::fs::write(&path, &md).map_err(|e| XtaskError::Output {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            print!("{}", md.split("\n## Differences").next().unwrap_or(""));
            eprintln!("xtask: wrote {}", path.display());
            Ok(ok)
        }
        ["patch"] => {
            for &k in &a.kernels {
                let tree = pipeline::source_tree(k, a.source()?)?;
                println!("{}", tree.dir.display());
            }
            Ok(true)
        }
        ["patch", "check"] => {
            let mut results = Vec::new();
            for &k in &a.kernels {
                results.extend(check::run(k, &kernel::fetch(k, None)?)?);
            }
            print!("{}", check::table(&results));
            Ok(results.iter().all(|r| r.pass))
        }
        ["patch", "export"] if a.check => {
            let base = kernel::fetch(Kernel::Newest, None)?;
            let rows = xtask::export_check::run(&base)?;
            print!("{}", check::table(&rows));
            Ok(rows.iter().all(|r| r.pass))
        }
        ["patch", "export"] => {
            let to =
                a.to.clone()
                    .unwrap_or_else(|| initramfs::out_dir().join("export"));
            let base = kernel::fetch(Kernel::Newest, None)?;
            for f in xtask::export::run(&base, &to)? {
                println!("{}", f.display());
            }
            Ok(true)
        }
        ["codegen"] => {
            let list = patches::series(&patches::series_dir())?;
            let tree = patches::apply(Kernel::Newest, &kernel::fetch(Kernel::Newest, None)?)?;
            println!(
                "{}",
                codegen::generate(&tree, &patches::series_hash(&list)?)?.display()
            );
            Ok(true)
        }
        ["lab"] => cmd_lab(&a),
        ["patch-boot-verify"] => cmd_pbv(&a),
        ["bench"] => {
            let table = xtask::bench::run(a.quick, a.json.as_deref(), !a.no_edit_loop, !a.no_lab)?;
            print!("{table}");
            println!("wrote BENCHMARKS.md and benchmarks.svg");
            Ok(true)
        }
        ["fuzz", targets @ ..] => {
            let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
            let runs = fuzz::run(a.seconds.unwrap_or(60), &targets)?;
            print!("{}", fuzz::table(&runs));
            Ok(runs.iter().all(|r| r.crashes.is_empty()))
        }
        [] | ["help"] => {
            print!("{HELP}");
            Ok(true)
        }
        other => Err(XtaskError::Usage(format!(
            "unknown command `{}`",
            other.join(" ")
        ))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
