//! `cargo xtask bench`: kvmcap against the peers a KVM engineer would use instead, measured in
//! the same invocation on the same machine, reported as median, p10, p90 and ratios, written
//! to BENCHMARKS.md with a chart drawn from the JSON. No test asserts on these numbers.
//!
//! The layers: [`crate::measure`] (statistics, one result, timing processes) at the bottom;
//! [`crate::bench_host`] (this host), [`crate::bench_lab`] (inside the lab) and
//! [`crate::bench_loop`] (the loops users run) measure; [`crate::bench_report`] writes.

use std::path::Path;

use crate::bench_host::{bare_probe, bare_probe_qemu, build_floor, build_kvmcap, msr_cost};
use crate::bench_report::write_report;
use crate::{bench_lab, bench_loop, workspace_root, XtaskError};

/// Runs every benchmark: `quick` takes fewer samples and skips the cold kernel build;
/// `with_edit_loop` times the loops users run (edit, patch edit, whole matrix); `with_lab`
/// boots the bench lab.
pub fn run(
    quick: bool,
    json_path: Option<&Path>,
    with_edit_loop: bool,
    with_lab: bool,
) -> Result<String, XtaskError> {
    let runs = if quick { 20 } else { 50 };
    // Progress on stderr: each step takes seconds to minutes.
    let steps = 3 + usize::from(with_lab) + usize::from(with_edit_loop);
    let step = |k: usize, what: &str| eprintln!("xtask: bench {k}/{steps}: {what}");
    step(1, "the bare probe against the C floor");
    let kvmcap = build_kvmcap()?;
    let floor = build_floor()?;
    let catalog: Vec<String> = msr_probe::Catalog::builtin()
        .map_err(|e| XtaskError::Output {
            path: workspace_root().join("fixtures/msr/catalog.toml"),
            problem: e.to_string(),
        })?
        .entries()
        .iter()
        .map(|e| format!("{:x}", e.index.raw()))
        .collect();
    let floor_bench = bare_probe(&kvmcap, &floor, runs, &catalog)?;
    let kvmcap_bare = floor_bench.kvmcap.clone();
    let mut benches = vec![floor_bench];
    step(2, "the bare probe under QEMU (microvm, then pc)");
    if let Some(k) = &kvmcap_bare {
        benches.extend(bare_probe_qemu(&kvmcap, k, runs, catalog.len())?);
    }
    step(3, "one guest MSR access, user backend and KVM");
    benches.extend(msr_cost(&kvmcap, if quick { 10 } else { 20 })?);
    let mut k = 3;
    if with_lab {
        k += 1;
        step(
            k,
            "the bench lab (Linux guest boots, access costs in the lab)",
        );
        benches.extend(bench_lab::lab_benches(quick)?);
    }
    if with_edit_loop {
        step(k + 1, "the edit loops (kernel rebuilds, patch-boot-verify)");
        benches.extend(bench_loop::loops(if quick { 1 } else { 3 }, !quick)?);
    }
    write_report(&benches, json_path)
}
