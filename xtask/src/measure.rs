//! What every benchmark shares: summary statistics, one benchmark's result, and timing whole
//! processes. No test asserts on these numbers.

use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

use crate::XtaskError;

/// Summary statistics of one measurement, in milliseconds.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Runs.
    pub runs: usize,
    /// Median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// Computes the statistics of `samples` (ms).
pub fn stats(samples: &mut [f64]) -> Stats {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        if samples.is_empty() {
            return f64::NAN;
        }
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i]
    };
    Stats {
        runs: samples.len(),
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

/// The statistics as JSON.
pub fn to_json(s: &Stats) -> Value {
    json!({"runs": s.runs, "median_ms": s.median, "p10_ms": s.p10, "p90_ms": s.p90})
}

/// Times `a` and `b` alternately, `runs` each, so that a change in the shared machine's load
/// moves both (their ratio is what the benchmark reports).
pub fn time_interleaved(
    a: &mut Command,
    b: &mut Command,
    runs: usize,
) -> Result<(Stats, Stats), XtaskError> {
    let (mut sa, mut sb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        sa.push(time_once(a)?);
        sb.push(time_once(b)?);
    }
    Ok((stats(&mut sa), stats(&mut sb)))
}

/// One run of `cmd`, in milliseconds; a failure is an error.
pub fn time_once(cmd: &mut Command) -> Result<f64, XtaskError> {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| XtaskError::Spawn {
            tool: format!("{cmd:?}"),
            source,
        })?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        return Err(XtaskError::Build {
            command: format!("{cmd:?}"),
            status: status.to_string(),
            tail: String::new(),
        });
    }
    Ok(ms)
}

/// One benchmark's result.
#[derive(Clone, Debug)]
pub struct Bench {
    /// Its name.
    pub name: String,
    /// What kvmcap measured.
    pub kvmcap: Option<Stats>,
    /// The peer's name.
    pub peer: String,
    /// What the peer measured.
    pub peer_stats: Option<Stats>,
    /// What the numbers mean, or why one is missing.
    pub note: String,
}

impl Bench {
    /// kvmcap / peer (medians).
    pub fn ratio(&self) -> Option<f64> {
        Some(self.kvmcap.as_ref()?.median / self.peer_stats.as_ref()?.median)
    }

    /// The result as JSON.
    pub fn json(&self) -> Value {
        json!({
            "name": self.name,
            "kvmcap": self.kvmcap.as_ref().map(to_json),
            "peer": self.peer,
            "peer_stats": self.peer_stats.as_ref().map(to_json),
            "ratio": self.ratio(),
            "note": self.note,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=11).map(f64::from).collect();
        let s = stats(&mut v);
        assert_eq!((s.median, s.p10, s.p90, s.runs), (6.0, 2.0, 10.0, 11));
    }
}
