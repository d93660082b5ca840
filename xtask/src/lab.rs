//! The lab host: boots the lab kernel under `qemu-system-x86_64 -accel tcg -cpu max` (emulated
//! AMD SVM with nested paging) with kvmcap as `/init`, which runs the jobs against the lab's
//! KVM and prints each result framed on the console; collects and checks them here.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub use crate::lab_boot::framed_text;
use crate::lab_boot::run_lab;
pub use crate::lab_options::{host_tsc_khz, qemu, qemu_in, LabOptions, LAB_PPIN, LAB_QEMU, STALL};
pub use crate::lab_run::{JobOutcome, LabRun};
use crate::XtaskError;

/// The jobs `cargo xtask lab` runs by default (`kvmcap lab-init` grammar).
pub const DEFAULT_JOBS: &[&str] = &[
    "verify:ppin:none:1",
    "verify:ppin:none:2",
    "verify:ppin:user:1",
    "verify:ppin:user:2",
    "catalog:ppin:user:2",
    "run:ppin-ctl-states:user:2",
    "run:ppin-absent:none:2",
    "run:platform-info:kernel:1",
    "run:guest-ends:user:2",
];

/// [`run`] printing each job as it reports (lab boots and jobs take seconds each).
pub fn run_with_progress(o: &LabOptions) -> Result<LabRun, XtaskError> {
    let mut o = o.clone();
    o.progress = Some((Arc::new(AtomicUsize::new(0)), o.jobs.len()));
    run(&o)
}

/// What a job costs in the lab relative to the others (measured in job_ms: a Linux guest boot
/// or 156 generated cases take seconds, a scenario a few hundred milliseconds).
pub fn job_weight(job: &str) -> u32 {
    let mut parts = job.split(':');
    let (kind, subject) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let vcpus = parts.nth(1).unwrap_or("1");
    match (kind, subject) {
        ("explore", "ppin") => 55,
        ("verify" | "qemu", _) if vcpus == "2" => 45,
        ("verify" | "qemu" | "catalog", _) => 30,
        ("selftest", _) => 35,
        ("explore", _) => 4,
        _ => 3,
    }
}

/// Splits `jobs` into `shards` lists of job indices of about equal [`job_weight`], heaviest
/// first (each list keeps the jobs' order).
pub fn shard(jobs: &[String], shards: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(job_weight(&jobs[i])));
    let mut out: Vec<(u32, Vec<usize>)> = vec![(0, Vec::new()); shards.max(1)];
    for i in order {
        if let Some(s) = out.iter_mut().min_by_key(|(w, _)| *w) {
            s.0 += job_weight(&jobs[i]);
            s.1.push(i);
        }
    }
    out.into_iter()
        .map(|(_, mut s)| {
            s.sort_unstable();
            s
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Boots the lab (in `o.shards` QEMUs at once, each with its share of the jobs) and collects
/// every job's report, in the jobs' order.
pub fn run(o: &LabOptions) -> Result<LabRun, XtaskError> {
    let Some(dir) = &o.cache else {
        return run_uncached(o);
    };
    let qemu = match &o.qemu {
        Some(q) => q.clone(),
        None => qemu()?,
    };
    let cache = crate::lab_cache::Cache::of(o, dir.clone(), &qemu)?;
    let kept: Vec<Option<JobOutcome>> = o.jobs.iter().map(|j| cache.get(j)).collect();
    let to_run: Vec<String> = o
        .jobs
        .iter()
        .zip(&kept)
        .filter(|(_, k)| k.is_none())
        .map(|(j, _)| j.clone())
        .collect();
    let ran = if to_run.is_empty() {
        LabRun {
            jobs: Vec::new(),
            elapsed: Duration::ZERO,
            console_log: o.console_log.clone(),
            shards: 0,
        }
    } else {
        let progress = o
            .progress
            .as_ref()
            .map(|_| (Arc::new(AtomicUsize::new(0)), to_run.len()));
        run_uncached(&LabOptions {
            jobs: to_run,
            progress,
            cache: None,
            // The QEMU whose binary keyed the cache is the one that runs.
            qemu: Some(qemu),
            ..o.clone()
        })?
    };
    for j in ran.jobs.iter().flatten() {
        cache.put(j);
    }
    let mut fresh = ran.jobs.into_iter();
    let jobs = kept
        .into_iter()
        .zip(&o.jobs)
        .map(|(k, name)| match k {
            Some(k) => Ok(k),
            None => fresh
                .next()
                .unwrap_or_else(|| Err(format!("{name}: no report"))),
        })
        .collect();
    Ok(LabRun { jobs, ..ran })
}

/// [`run`] without the cache.
fn run_uncached(o: &LabOptions) -> Result<LabRun, XtaskError> {
    let shards = shard(&o.jobs, o.shards.min(o.jobs.len()));
    if shards.len() <= 1 {
        return run_lab(o);
    }
    let options: Vec<LabOptions> = shards
        .iter()
        .enumerate()
        .map(|(n, idx)| LabOptions {
            progress: o.progress.clone(),
            jobs: idx.iter().map(|&i| o.jobs[i].clone()).collect(),
            console_log: if n == 0 {
                o.console_log.clone()
            } else {
                o.console_log.with_extension(format!("{n}.log"))
            },
            shards: 1,
            ..o.clone()
        })
        .collect();
    let start = Instant::now();
    let runs: Vec<Result<LabRun, XtaskError>> = std::thread::scope(|s| {
        let handles: Vec<_> = options
            .iter()
            .map(|opts| s.spawn(move || run_lab(opts)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(XtaskError::Lab {
                        problem: "a lab shard's thread panicked".into(),
                        tail: String::new(),
                    })
                })
            })
            .collect()
    });
    let mut jobs: Vec<Option<Result<JobOutcome, String>>> = vec![None; o.jobs.len()];
    for (idx, run) in shards.iter().zip(runs) {
        for (&i, j) in idx.iter().zip(run?.jobs) {
            jobs[i] = Some(j);
        }
    }
    Ok(LabRun {
        jobs: jobs
            .into_iter()
            .zip(&o.jobs)
            .map(|(j, name)| j.unwrap_or_else(|| Err(format!("{name}: no report"))))
            .collect(),
        elapsed: start.elapsed(),
        console_log: o.console_log.clone(),
        shards: shards.len(),
    })
}

/// Writes each job's report to `dir/<job>.json`.
pub fn save_reports(run: &LabRun, dir: &Path) -> Result<(), XtaskError> {
    std::fs::create_dir_all(dir).map_err(|e| XtaskError::Output {
        path: dir.to_owned(),
        problem: e.to_string(),
    })?;
    for j in run.jobs.iter().flatten() {
        let path = dir.join(format!("{}.json", j.job.replace(':', "-")));
        let doc = serde_json::to_string_pretty(&j.report).unwrap_or_default();
        std::fs::write(&path, doc).map_err(|e| XtaskError::Output {
            path: path.clone(),
            problem: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_balance_the_heavy_jobs_and_keep_every_job_once() {
        let jobs: Vec<String> = [
            "selftest:ppin_test:kernel:1",
            "explore:ppin:kernel:2:intel",
            "explore:ppin:user:2:intel",
            "verify:ppin:kernel:2:intel",
            "verify:ppin:user:2:intel",
            "run:ppin-enable:kernel:1:amd",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = shard(&jobs, 2);
        assert_eq!(s.len(), 2);
        let mut all: Vec<usize> = s.concat();
        all.sort_unstable();
        assert_eq!(all, (0..jobs.len()).collect::<Vec<_>>());
        // The two explores go to different labs, and so do the two verifies.
        for pair in [[1, 2], [3, 4]] {
            assert!(s
                .iter()
                .all(|l| !(l.contains(&pair[0]) && l.contains(&pair[1]))));
        }
        assert!(s.iter().all(|l| l.windows(2).all(|w| w[0] < w[1])));
        assert_eq!(shard(&jobs, 1), vec![(0..jobs.len()).collect::<Vec<_>>()]);
        assert_eq!(shard(&jobs[..1], 3).len(), 1);
    }
}
