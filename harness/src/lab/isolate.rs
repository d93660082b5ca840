//! Each lab job in its own process (`kvmcap lab-job`), watched by the lab's /init: a job that
//! hangs (a vCPU thread that never leaves `KVM_RUN`, a VMM thread that never returns) costs
//! its budget, not the whole lab. Over budget, the job's threads are described (name, state,
//! kernel wait channel, kernel stack where the kernel keeps one) and the process is killed.
//!
//! A job that hung, or that failed without reaching a verdict (its report is the error: a
//! Linux guest that crashed in the emulated lab before it reported, seen once in a full
//! matrix run here), is run once more, in a new process: the lab is emulated SVM under QEMU TCG
//! on a loaded machine, and a hang seen once in CI (`explore:ppin:user:2:intel`, 2 of 42 jobs
//! on 2 labs sharing 2 CPUs) did not come back in any of 8 reruns here. Its second verdict
//! stands, and the report keeps the first attempt's description in `first_attempt`, which
//! `cargo xtask lab` prints beside the verdict: a retried job is never a silent PASS. A job
//! that hangs twice fails with both descriptions; a job that dies without a report fails at
//! once (a crash is not retried).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Job, JobResult};

/// How long one job may run in the lab before it is called hung. The slowest job measured,
/// the generated cases of PPIN on 2 vCPUs, takes about 8 s with two labs sharing two CPUs and
/// about 11 s with two busy loops beside them: the budget leaves a loaded CI runner more than
/// five times that, and keeps what a lab whose kernel locked up costs (two budgets and a
/// minute without a report, `cargo xtask lab`'s stall) to 3 minutes.
pub const JOB_BUDGET: Duration = Duration::from_secs(60);

/// The most of a job's report kept (an explore report of PPIN is ~0.3 MiB).
const REPORT_LIMIT: usize = 16 << 20;

/// How one attempt at a job ended.
#[derive(Debug)]
enum Attempt {
    /// The job's report (JSON text).
    Report(String),
    /// Over budget: what its threads were doing when it was killed.
    Hung(String),
    /// It ended without a report (a crash, a refused spawn).
    Died(String),
}

/// Runs `job` in a child process of `exe` (`exe --fixtures / lab-job JOB`), retrying once after
/// a hang; returns the job's report as JSON text.
pub fn run_job_isolated(exe: &Path, job: &Job, budget: Duration) -> String {
    let first = attempt(exe, job, budget);
    let (outcome, first_note) = match first {
        Attempt::Hung(why) => (attempt(exe, job, budget), Some(why)),
        Attempt::Report(doc) => match no_verdict(&doc) {
            Some(why) => (
                attempt(exe, job, budget),
                Some(format!("failed without a verdict: {why}")),
            ),
            None => (Attempt::Report(doc), None),
        },
        died => (died, None),
    };
    let why = match outcome {
        Attempt::Report(doc) => {
            return match first_note {
                Some(first) => with_first_attempt(&doc, &first),
                None => doc,
            }
        }
        Attempt::Hung(why) | Attempt::Died(why) => why,
    };
    let why = match first_note {
        Some(first) => format!("{why}; before that, {first}"),
        None => why,
    };
    serde_json::to_string(&JobResult::failed(job, why)).unwrap_or_default()
}

/// Why a failed report holds no verdict: the job could not run to one (its report is the
/// error, e.g. a Linux guest that crashed before it reported), as opposed to a verdict that
/// differs from the rules, which is never retried. `None` for a pass or a verdict.
fn no_verdict(doc: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    if v["pass"] == true {
        return None;
    }
    let why = v["report"].as_str()?;
    let mut line = why.lines().next().unwrap_or("").to_owned();
    line.truncate(300);
    Some(line)
}

/// The report `doc` with `first_attempt` set (how the job's first attempt ended).
fn with_first_attempt(doc: &str, why: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(doc) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("first_attempt".into(), why.into());
            serde_json::Value::Object(m).to_string()
        }
        _ => doc.to_owned(),
    }
}

fn attempt(exe: &Path, job: &Job, budget: Duration) -> Attempt {
    let name = job.name();
    use std::os::unix::process::CommandExt;
    // Its own process group, so a kill also reaches what the job started (a selftest, QEMU)
    // and no leftover holds the report pipe open.
    let child = Command::new(exe)
        .process_group(0)
        .args(["--fixtures", "/", "lab-job", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Attempt::Died(format!("cannot start the job's process: {e}")),
    };
    let Some(mut stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Attempt::Died("the job's process has no standard output".into());
    };
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout)
            .take(REPORT_LIMIT as u64 + 1)
            .read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= budget => {
                let threads = describe_threads(child.id());
                // The reader ends when the pipe closes; it is not waited for.
                kill(&mut child);
                return Attempt::Hung(format!(
                    "hung: no report within {} s; its threads then: {threads}",
                    budget.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                kill(&mut child);
                return Attempt::Died(format!("cannot wait for the job's process: {e}"));
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    judge_output(&name, &out, status)
}

/// Kills the job's whole process group, then reaps the job.
fn kill(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The job's output, checked: one JSON object naming the job, within the size limit.
fn judge_output(name: &str, out: &[u8], status: std::process::ExitStatus) -> Attempt {
    if out.len() > REPORT_LIMIT {
        return Attempt::Died(format!("its report is over {REPORT_LIMIT} bytes"));
    }
    let text = String::from_utf8_lossy(out);
    let text = text.trim();
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v["job"].as_str() == Some(name) => Attempt::Report(text.to_owned()),
        Ok(_) => Attempt::Died(format!("its report names another job ({status})")),
        Err(_) if text.is_empty() => Attempt::Died(format!("it ended without a report ({status})")),
        Err(e) => Attempt::Died(format!("its report is not JSON: {e} ({status})")),
    }
}

/// One line per thread of process `pid`: `name state wchan [stack]`, bounded.
pub fn describe_threads(pid: u32) -> String {
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return format!("(cannot read {})", dir.display());
    };
    let mut tids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let lines: Vec<String> = tids
        .iter()
        .take(16)
        .map(|tid| describe_task(&dir.join(tid.to_string())))
        .collect();
    let mut text = lines.join("; ");
    text.truncate(2000);
    text
}

/// `name state wchan [stack]` of one task directory.
fn describe_task(task: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(task.join(f)).unwrap_or_default();
    let comm = read("comm").trim().to_owned();
    // stat: `tid (comm) state ...`; comm may hold spaces and parentheses.
    let stat = read("stat");
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    let wchan = read("wchan");
    // stack (CONFIG_STACKTRACE, root): `[<0>] function+0x1/0x2` per frame, innermost first.
    let stack_text = read("stack");
    let stack: Vec<&str> = stack_text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .take(6)
        .collect();
    let mut s = format!(
        "{comm} {state} {}",
        if wchan.is_empty() || wchan == "0" {
            "-"
        } else {
            &wchan
        }
    );
    if !stack.is_empty() {
        s.push_str(&format!(" [{}]", stack.join(" < ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an executable shell script at `path`, standing in for kvmcap.
    fn stand_in(path: &Path, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("#!/bin/sh\n{script}")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// How many times a stand-in that appends to `$0.runs` ran.
    fn runs(path: &Path) -> usize {
        std::fs::read_to_string(path.with_extension("runs"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn a_job() -> Job {
        super::super::parse_jobs("run:ppin-enable:user:1")
            .unwrap()
            .remove(0)
    }

    #[test]
    fn this_process_threads_are_described() {
        let text = describe_threads(std::process::id());
        // The test thread is running (R) or at least present with its name.
        assert!(!text.is_empty() && !text.starts_with("(cannot"), "{text}");
        assert!(
            text.split("; ").all(|t| t.split(' ').count() >= 3),
            "{text}"
        );
    }

    #[test]
    fn a_report_must_be_json_naming_its_job() {
        let ok = std::process::Command::new("true").status().unwrap();
        let job = "run:x:user:1";
        assert!(matches!(
            judge_output(job, br#" {"job":"run:x:user:1","pass":true} "#, ok),
            Attempt::Report(_)
        ));
        for (out, want) in [
            (&b""[..], "without a report"),
            (&b"{\"job\":\"run:y:user:1\"}"[..], "another job"),
            (&b"panicked at"[..], "not JSON"),
        ] {
            match judge_output(job, out, ok) {
                Attempt::Died(why) => assert!(why.contains(want), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_retried_report_says_how_the_first_attempt_ended() {
        let doc = with_first_attempt(r#"{"job":"j","pass":true}"#, "hung: no report");
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["first_attempt"], "hung: no report");
        assert_eq!(v["pass"], true);
    }

    #[test]
    fn a_job_that_hangs_is_killed_at_its_budget_and_retried_once() {
        // A script stands in for kvmcap: it counts its runs and sleeps past the budget (had
        // it not been killed, it would end without a report, not hung).
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("hangs");
        stand_in(&exe, "echo $$ >> \"$0.runs\"\nexec sleep 30\n");
        let doc = run_job_isolated(&exe, &a_job(), Duration::from_secs(1));
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["pass"], false);
        let why = v["report"].as_str().unwrap();
        assert!(why.starts_with("hung: no report within 1 s"), "{why}");
        assert!(why.contains("before that, hung"), "{why}");
        assert!(why.contains("sleep"), "{why}");
        assert_eq!(runs(&exe), 2, "tried twice");
    }

    #[test]
    fn a_failure_without_a_verdict_is_retried_and_a_verdict_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("flaky");
        let job = "run:ppin-enable:user:1";
        let no_verdict = format!(
            r#"{{"job":"{job}","pass":false,"report":"the guest gave no report: triple fault\nmore"}}"#
        );
        let verdict = format!(r#"{{"job":"{job}","pass":false,"report":{{"cases":[]}}}}"#);
        let pass = format!(r#"{{"job":"{job}","pass":true,"report":{{"cases":[]}}}}"#);
        let script = |first: &str, then: &str| {
            format!(
                "echo $$ >> \"$0.runs\"\nif [ -e \"$0.ran\" ]; then printf '%s\\n' '{then}'; else touch \"$0.ran\"; printf '%s\\n' '{first}'; fi\n"
            )
        };
        for (first, then, n_runs, pass_after, note) in [
            (
                &no_verdict,
                &pass,
                2,
                true,
                Some("failed without a verdict: the guest gave no report: triple fault"),
            ),
            (&verdict, &pass, 1, false, None),
        ] {
            let _ = std::fs::remove_file(dir.path().join("flaky.ran"));
            let _ = std::fs::remove_file(dir.path().join("flaky.runs"));
            stand_in(&exe, &script(first, then));
            let v: serde_json::Value =
                serde_json::from_str(&run_job_isolated(&exe, &a_job(), Duration::from_secs(20)))
                    .unwrap();
            assert_eq!(v["pass"], pass_after, "{v}");
            assert_eq!(v["first_attempt"].as_str(), note, "{v}");
            assert_eq!(runs(&exe), n_runs);
        }
    }

    #[test]
    fn a_hung_job_is_killed_with_what_it_started() {
        // The job starts a child that would keep the report pipe open for 10 minutes; the
        // job's whole process group is killed, that child too.
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("forks");
        stand_in(
            &exe,
            "sleep 600 &\necho $! > \"$0.child\"\nexec sleep 600\n",
        );
        let doc = run_job_isolated(&exe, &a_job(), Duration::from_secs(1));
        assert!(doc.contains("hung"), "{doc}");
        for pid in std::fs::read_to_string(exe.with_extension("child"))
            .unwrap()
            .lines()
        {
            // Gone, or a zombie waiting for its new parent: never still sleeping.
            let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat"));
            let dead = (0..250).any(|_| {
                let gone = stat(pid).map_or(true, |s| s.contains(") Z "));
                if !gone {
                    std::thread::sleep(Duration::from_millis(20));
                }
                gone
            });
            assert!(dead, "the job's child {pid} survived: {:?}", stat(pid));
        }
    }

    #[test]
    fn a_job_that_dies_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("dies");
        stand_in(&exe, "echo $$ >> \"$0.runs\"\nexit 101\n");
        let doc = run_job_isolated(&exe, &a_job(), Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["pass"], false);
        assert!(v["report"].as_str().unwrap().contains("without a report"));
        assert_eq!(runs(&exe), 1);
    }
}
