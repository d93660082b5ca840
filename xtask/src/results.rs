//! The results of a lab or patch-boot-verify run as machines read them, and the matrix spread
//! over CI runners: `--shard K/N` runs one deterministic share of the jobs, each share saves
//! its [`Results`], and `cargo xtask merge-results` joins the shares into one table, one KTAP
//! document and one JUnit file, equal to those of one unsharded run.

use std::path::Path;

use kvmcap::report::results::{junit, ktap, Suite};
use serde::{Deserialize, Serialize};

use crate::lab::job_weight;
use crate::XtaskError;

/// The schema of a results file.
pub const SCHEMA: &str = "kvmcap.xtask-results/1";

/// One share of the job matrix: shard `k` of `n` (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which share, 1..=n.
    pub k: usize,
    /// How many shares.
    pub n: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard `{s}`: K/N with 1 <= K <= N, e.g. 2/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if k == 0 || k > n {
            return Err(bad());
        }
        Ok(Self { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

/// A job's group: the job without its backend, so the `kernel` and `user` runs of one case
/// (which patch-boot-verify compares with each other) always land on the same shard.
fn group(job: &str) -> String {
    let mut f: Vec<&str> = job.split(':').collect();
    if f.len() >= 3 {
        f.remove(2);
    }
    f.join(":")
}

/// The indices (into `jobs`) of shard `shard`: groups of jobs dealt to shards heaviest first,
/// each to the lightest shard so far (ties to the lower shard), so every share has about
/// the same lab time; deterministic, and the shares of 1..=n partition the jobs.
pub fn select(jobs: &[String], shard: Shard) -> Vec<usize> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        let g = group(j);
        match groups.iter_mut().find(|(k, _)| *k == g) {
            Some((_, v)) => v.push(i),
            None => groups.push((g, vec![i])),
        }
    }
    let weight = |v: &[usize]| v.iter().map(|&i| job_weight(&jobs[i])).sum::<u32>();
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(weight(&groups[g].1)));
    let mut load = vec![0u32; shard.n.max(1)];
    let mut mine = Vec::new();
    for g in order {
        let (target, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(i, w)| (**w, *i))
            .unwrap_or((0, &0));
        load[target] += weight(&groups[g].1);
        if target + 1 == shard.k {
            mine.extend_from_slice(&groups[g].1);
        }
    }
    mine.sort_unstable();
    mine
}

/// The jobs one run ran: all of them, or one shard's share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The whole job list.
    pub all: Vec<String>,
    /// The indices run.
    pub mine: Vec<usize>,
    /// Which shard, if sharded.
    pub shard: Option<Shard>,
}

impl Share {
    /// `shard` of `all` (every job without one).
    pub fn of(all: Vec<String>, shard: Option<Shard>) -> Self {
        let mine = match shard {
            Some(s) => select(&all, s),
            None => (0..all.len()).collect(),
        };
        Self { all, mine, shard }
    }

    /// The jobs to run, in order.
    pub fn jobs(&self) -> Vec<String> {
        self.mine.iter().map(|&i| self.all[i].clone()).collect()
    }
}

/// One job's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its place in the whole (unsharded) job list.
    pub index: usize,
    /// The job.
    pub job: String,
    /// Whether it passed.
    pub pass: bool,
    /// Its cases.
    pub suite: Suite,
}

/// One row of patch-boot-verify's checks (kernel == user, expectations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// The kernel.
    pub kernel: String,
    /// What was checked.
    pub what: String,
    /// The vendor pair.
    pub pair: String,
    /// Whether it holds.
    pub pass: bool,
    /// The difference, if any.
    pub detail: String,
}

/// A run's (or one shard's) results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// [`SCHEMA`].
    pub schema: String,
    /// `lab` or `patch-boot-verify`.
    pub command: String,
    /// The kernel.
    pub kernel: String,
    /// The share, if sharded.
    pub shard: Option<Shard>,
    /// Every job of the share, in the whole list's order.
    pub jobs: Vec<JobRecord>,
    /// patch-boot-verify's checks of the share.
    pub checks: Vec<CheckRecord>,
}

impl Results {
    /// The results of `run`, which ran `share`'s jobs on `kernel` (with patch-boot-verify's
    /// `checks`, none for a plain lab run).
    pub fn of_run(
        command: &str,
        kernel: &str,
        share: &Share,
        run: &crate::lab::LabRun,
        checks: &[crate::pbv::Check],
    ) -> Self {
        let suites = run.suites(&share.jobs());
        Self {
            schema: SCHEMA.into(),
            command: command.into(),
            kernel: kernel.into(),
            shard: share.shard,
            jobs: share
                .mine
                .iter()
                .zip(suites)
                .zip(&run.jobs)
                .map(|((&index, suite), j)| JobRecord {
                    index,
                    job: share.all[index].clone(),
                    pass: j.as_ref().is_ok_and(|o| o.pass),
                    suite,
                })
                .collect(),
            checks: checks
                .iter()
                .map(|c| CheckRecord {
                    kernel: kernel.into(),
                    what: c.what.clone(),
                    pair: c.pair.clone(),
                    pass: c.pass,
                    detail: c.detail.clone(),
                })
                .collect(),
        }
    }

    /// Whether every job and check passed (and something ran).
    pub fn pass(&self) -> bool {
        !self.jobs.is_empty()
            && self.jobs.iter().all(|j| j.pass)
            && self.checks.iter().all(|c| c.pass)
    }

    /// The suites (one per job, then one for the checks).
    pub fn suites(&self) -> Vec<Suite> {
        let mut v: Vec<Suite> = self.jobs.iter().map(|j| j.suite.clone()).collect();
        if !self.checks.is_empty() {
            v.push(Suite {
                name: format!("{} {} checks", self.command, self.kernel),
                time_ms: 0.0,
                cases: self
                    .checks
                    .iter()
                    .map(|c| kvmcap::report::results::Case {
                        name: format!("{} [{}]", c.what, c.pair),
                        status: if c.pass {
                            kvmcap::report::results::Status::Pass
                        } else {
                            kvmcap::report::results::Status::Fail(c.detail.clone())
                        },
                        time_ms: None,
                    })
                    .collect(),
                error: None,
            });
        }
        v
    }

    /// KTAP v1.
    pub fn ktap(&self) -> String {
        ktap(&self.suites())
    }

    /// JUnit XML.
    pub fn junit(&self) -> String {
        junit(&self.suites())
    }

    /// The table: each job and check, then the verdict.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for j in &self.jobs {
            let c = j.suite.counts();
            out.push_str(&format!(
                "{:<44} {:<4} {:>4} passed {:>3} failed {:>3} skipped {:>9.0} ms\n",
                j.job,
                if j.pass { "PASS" } else { "FAIL" },
                c.pass,
                c.fail,
                c.skip,
                j.suite.time_ms
            ));
        }
        for c in self.checks.iter().filter(|c| !c.pass) {
            out.push_str(&format!(
                "check {} [{}]: FAIL {}\n",
                c.what, c.pair, c.detail
            ));
        }
        out.push_str(&format!(
            "{}: {} jobs, {} checks ({} {})\n",
            if self.pass() { "PASS" } else { "FAIL" },
            self.jobs.len(),
            self.checks.len(),
            self.command,
            self.kernel
        ));
        out
    }

    /// Writes the results as JSON (atomically).
    pub fn save(&self, path: &Path) -> Result<(), XtaskError> {
        let doc = serde_json::to_string_pretty(self).map_err(|e| XtaskError::Output {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        crate::write_atomic(path, doc.as_bytes())
    }

    /// Reads a results file.
    pub fn load(path: &Path) -> Result<Self, XtaskError> {
        let text = std::fs::read_to_string(path).map_err(|e| XtaskError::Output {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        let r: Self = serde_json::from_str(&text).map_err(|e| XtaskError::Output {
            path: path.to_owned(),
            problem: format!("not a results file: {e}"),
        })?;
        if r.schema != SCHEMA {
            return Err(XtaskError::Output {
                path: path.to_owned(),
                problem: format!("schema `{}`, expected {SCHEMA}", r.schema),
            });
        }
        Ok(r)
    }
}

/// Joins the shares of one sharded run (every shard 1..=N of one command and kernel, each
/// once; or unsharded results of several kernels) into one, the jobs in the whole list's
/// order: what one unsharded run would have produced.
pub fn merge(parts: &[Results]) -> Result<Vec<Results>, String> {
    if parts.is_empty() {
        return Err("no results to merge".into());
    }
    let mut out: Vec<Results> = Vec::new();
    let mut keys: Vec<(String, String)> = parts
        .iter()
        .map(|p| (p.command.clone(), p.kernel.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    for (command, kernel) in keys {
        let mine: Vec<&Results> = parts
            .iter()
            .filter(|p| p.command == command && p.kernel == kernel)
            .collect();
        let n = mine.first().and_then(|p| p.shard).map_or(1, |s| s.n);
        let mut seen: Vec<usize> = mine.iter().map(|p| p.shard.map_or(1, |s| s.k)).collect();
        seen.sort_unstable();
        if seen != (1..=n).collect::<Vec<_>>()
            || mine.iter().any(|p| p.shard.map_or(1, |s| s.n) != n)
        {
            return Err(format!(
                "{command} on {kernel}: shards {seen:?} of {n}: every shard 1..={n} exactly once"
            ));
        }
        let mut jobs: Vec<JobRecord> = mine.iter().flat_map(|p| p.jobs.clone()).collect();
        jobs.sort_by_key(|j| j.index);
        if jobs.windows(2).any(|w| w[0].index == w[1].index) {
            return Err(format!(
                "{command} on {kernel}: a job appears in two shards"
            ));
        }
        let mut checks: Vec<CheckRecord> = mine.iter().flat_map(|p| p.checks.clone()).collect();
        checks.sort_by(|a, b| (&a.what, &a.pair).cmp(&(&b.what, &b.pair)));
        out.push(Results {
            schema: SCHEMA.into(),
            command,
            kernel,
            shard: None,
            jobs,
            checks,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmcap::report::results::{Case, Status};

    fn jobs() -> Vec<String> {
        crate::pbv::jobs()
    }

    #[test]
    fn shards_partition_the_jobs_and_keep_pairs_together() {
        let all = jobs();
        for n in 1..=5 {
            let mut union: Vec<usize> = Vec::new();
            for k in 1..=n {
                let mine = select(&all, Shard { k, n });
                assert!(!mine.is_empty() || n > all.len(), "shard {k}/{n} is empty");
                for &i in &mine {
                    // The job's kernel/user twin is in the same shard.
                    let twin = all
                        .iter()
                        .position(|j| *j != all[i] && group(j) == group(&all[i]));
                    if let Some(t) = twin {
                        assert!(mine.contains(&t), "{} and {} split", all[i], all[t]);
                    }
                }
                union.extend(mine);
            }
            union.sort_unstable();
            assert_eq!(union, (0..all.len()).collect::<Vec<_>>(), "n = {n}");
        }
        assert_eq!(
            select(&all, Shard { k: 2, n: 3 }),
            select(&all, Shard { k: 2, n: 3 })
        );
        assert!("0/2".parse::<Shard>().is_err() && "3/2".parse::<Shard>().is_err());
        assert_eq!("2/4".parse::<Shard>().unwrap(), Shard { k: 2, n: 4 });
    }

    fn record(index: usize, job: &str, pass: bool) -> JobRecord {
        JobRecord {
            index,
            job: job.into(),
            pass,
            suite: Suite {
                name: job.into(),
                time_ms: 1.0,
                cases: vec![Case {
                    name: "c".into(),
                    status: if pass {
                        Status::Pass
                    } else {
                        Status::Fail("x".into())
                    },
                    time_ms: None,
                }],
                error: None,
            },
        }
    }

    #[test]
    fn merged_shards_equal_the_unsharded_run() {
        let all = jobs();
        let whole = Results {
            schema: SCHEMA.into(),
            command: "patch-boot-verify".into(),
            kernel: "7.2".into(),
            shard: None,
            jobs: all
                .iter()
                .enumerate()
                .map(|(i, j)| record(i, j, i != 3))
                .collect(),
            checks: Vec::new(),
        };
        for n in 1..=4 {
            let parts: Vec<Results> = (1..=n)
                .map(|k| {
                    let mine = select(&all, Shard { k, n });
                    Results {
                        shard: Some(Shard { k, n }),
                        jobs: whole
                            .jobs
                            .iter()
                            .filter(|j| mine.contains(&j.index))
                            .cloned()
                            .collect(),
                        ..whole.clone()
                    }
                })
                .collect();
            let merged = merge(&parts).unwrap();
            assert_eq!(merged, vec![whole.clone()]);
            assert_eq!(merged[0].junit(), whole.junit());
            if n > 1 {
                assert!(merge(&parts[1..]).is_err(), "a missing shard is refused");
            }
        }
    }
}
