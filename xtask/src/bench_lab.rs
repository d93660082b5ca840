//! The lab-side benchmarks of `cargo xtask bench`, all from one boot of a bench lab image
//! (the lab image plus QEMU): the Linux guest's start-to-verdict under kvmcap against QEMU
//! booting the same kernel and initramfs inside the same lab, and the cost of one guest MSR
//! access through the `kernel` and `user` backends (the patched KVM serves PPIN itself, or
//! exits to kvmcap's model), timed in the guest.

use crate::lab::{self, JobOutcome};
use crate::measure::{stats, Bench, Stats};
use crate::{initramfs, pipeline, target_dir, XtaskError};

/// The jobs: `pairs` kvmcap and QEMU boots, interleaved, then the timed reads.
pub fn jobs(pairs: usize) -> Vec<String> {
    let mut j = Vec::new();
    for _ in 0..pairs {
        j.push("verify:ppin:none:2".to_owned());
        j.push("qemu:ppin:none:2".to_owned());
    }
    for c in [
        "cost:ppin:kernel:1",
        "cost:ppin:user:1",
        "cost:ppin:none:1",
        "cost:platform-info:kernel:1",
    ] {
        j.push(c.to_owned());
    }
    j
}

fn lab_err(problem: String) -> XtaskError {
    XtaskError::Lab {
        problem,
        tail: String::new(),
    }
}

/// The wall times of the passing jobs named `name`.
pub fn job_times(outcomes: &[JobOutcome], name: &str) -> Result<Stats, XtaskError> {
    let mut ms: Vec<f64> = Vec::new();
    for o in outcomes.iter().filter(|o| o.job == name) {
        if !o.pass {
            return Err(lab_err(format!(
                "{name} failed in the bench lab: {}",
                o.snapshot
            )));
        }
        ms.extend(o.job_ms);
    }
    if ms.is_empty() {
        return Err(lab_err(format!("the bench lab ran no {name}")));
    }
    Ok(stats(&mut ms))
}

/// The per-read time of a `cost` job (milliseconds, as every [`Stats`]) over its reads.
pub fn read_cost(outcomes: &[JobOutcome], name: &str) -> Result<Stats, XtaskError> {
    let o = outcomes
        .iter()
        .find(|o| o.job == name)
        .ok_or_else(|| lab_err(format!("the bench lab ran no {name}")))?;
    if !o.pass {
        return Err(lab_err(format!(
            "{name} failed in the bench lab: {}",
            o.snapshot
        )));
    }
    let khz = o.report["tsc_khz"].as_f64().filter(|k| *k > 0.0);
    let mut ms: Vec<f64> = o.report["cycles"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|per_cpu| per_cpu.as_array().cloned().unwrap_or_default())
        .filter_map(|c| c.as_f64())
        .filter_map(|c| khz.map(|k| c / k))
        .collect();
    if ms.is_empty() {
        return Err(lab_err(format!(
            "{name}: no timed reads or no TSC frequency"
        )));
    }
    Ok(stats(&mut ms))
}

fn msr_of(outcomes: &[JobOutcome], name: &str) -> String {
    outcomes
        .iter()
        .find(|o| o.job == name)
        .and_then(|o| o.report["msr"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Boots the bench lab once and returns its benchmarks.
pub fn lab_benches(quick: bool) -> Result<Vec<Bench>, XtaskError> {
    let qemu = lab::qemu()?;
    let art = pipeline::prepare(None)?;
    let image = initramfs::bench_lab(&art.built.bzimage, &art.selftests, &qemu)?;
    let pairs = if quick { 3 } else { 8 };
    let out = target_dir().join("kvmcap/bench/lab");
    let mut opts = art.lab_options(jobs(pairs), out.join("console.log"));
    opts.initramfs = image;
    // One lab: the kvmcap and QEMU boots interleave, so the machine's load moves both.
    opts.shards = 1;
    let run = lab::run(&opts)?;
    lab::save_reports(&run, &out)?;
    let outcomes: Vec<JobOutcome> = run.jobs.iter().flatten().cloned().collect();
    if let Some(Err(e)) = run.jobs.iter().find(|j| j.is_err()) {
        return Err(lab_err(e.clone()));
    }
    let kvmcap = job_times(&outcomes, "verify:ppin:none:2")?;
    let qemu_t = job_times(&outcomes, "qemu:ppin:none:2")?;
    let kernel = read_cost(&outcomes, "cost:ppin:kernel:1")?;
    let user = read_cost(&outcomes, "cost:ppin:user:1")?;
    let gp = read_cost(&outcomes, "cost:ppin:none:1")?;
    let in_kvm = read_cost(&outcomes, "cost:platform-info:kernel:1")?;
    let ppin = msr_of(&outcomes, "cost:ppin:kernel:1");
    let pi = msr_of(&outcomes, "cost:platform-info:kernel:1");
    let lab_note = "in the lab (QEMU TCG, emulated AMD SVM): every guest exit is emulated, so the absolute numbers are the lab's, the ratios are the point";
    Ok(vec![
        Bench {
            name: "Linux guest in the lab, start to verdict (ppin MSRs, 2 vCPUs, 128 MiB)".into(),
            kvmcap: Some(kvmcap),
            peer: "QEMU -accel kvm -M microvm,acpi=off -cpu host in the same lab: same kernel, initramfs, command line; report over the console, judged by kvmcap".into(),
            peer_stats: Some(qemu_t),
            note: format!("job start to verdict, {pairs} boots each, interleaved in one lab boot; kvmcap's guest writes its report into a memory window, QEMU's prints it; {lab_note}"),
        },
        Bench {
            name: format!("guest rdmsr in the lab: {ppin} through backend user (exit to kvmcap's model)"),
            kvmcap: Some(user),
            peer: format!("{ppin} through backend kernel (KVM_CAP_PPIN: the patched KVM serves it)"),
            peer_stats: Some(kernel.clone()),
            note: format!("the user/kernel ratio; lfence;rdtsc around each of 1000 reads in the bare guest, all reads' distribution; {lab_note}"),
        },
        Bench {
            name: format!("guest rdmsr in the lab: {ppin} through backend kernel"),
            kvmcap: Some(kernel),
            peer: format!("{pi}, emulated in KVM"),
            peer_stats: Some(in_kvm),
            note: format!("the patched path against an MSR stock KVM already serves; stock KVM's #GP for {ppin}: {:.1} µs median", gp.median * 1000.0),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn outcome(job: &str, job_ms: f64, report: Value) -> JobOutcome {
        JobOutcome {
            job: job.into(),
            pass: true,
            snapshot: Value::Null,
            report,
            job_ms: Some(job_ms),
            suite: None,
            stats: Value::Null,
            first_attempt: None,
            cached: false,
        }
    }

    #[test]
    fn jobs_interleave_and_times_come_out() {
        let j = jobs(2);
        assert_eq!(
            j[..4],
            [
                "verify:ppin:none:2",
                "qemu:ppin:none:2",
                "verify:ppin:none:2",
                "qemu:ppin:none:2"
            ]
        );
        let o = vec![
            outcome("verify:ppin:none:2", 10.0, Value::Null),
            outcome("verify:ppin:none:2", 30.0, Value::Null),
            outcome(
                "cost:ppin:kernel:1",
                5.0,
                json!({"tsc_khz": 1000.0, "cycles": [[10, 20, 30]]}),
            ),
        ];
        let t = job_times(&o, "verify:ppin:none:2").unwrap();
        assert_eq!((t.runs, t.p10, t.p90), (2, 10.0, 30.0));
        // 20 cycles at 1000 kHz: 0.02 ms.
        assert_eq!(read_cost(&o, "cost:ppin:kernel:1").unwrap().median, 0.02);
        assert!(job_times(&o, "qemu:ppin:none:2").is_err());
        let mut failed = o.clone();
        failed[0].pass = false;
        assert!(job_times(&failed, "verify:ppin:none:2").is_err());
        let no_khz = vec![outcome("cost:ppin:user:1", 1.0, json!({"cycles": [[1]]}))];
        assert!(read_cost(&no_khz, "cost:ppin:user:1").is_err());
    }
}
