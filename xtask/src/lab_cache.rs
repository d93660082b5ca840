//! Lab results kept by what produced them, as a build system keeps test results: a job that
//! passed in a lab booted from the same kernel image, the same lab initramfs (kvmcap, the
//! guest kernel and initramfs, the selftests, the fixtures), the same QEMU and the same lab
//! shape is not run again; its report is reused and the table says `cached`. Only passes are
//! kept (a failure always runs again), and a job that needed a second attempt is not kept.
//! A kernel edit relinks vmlinux, whose build number and timestamp change the image, so an
//! edited kernel never meets a kept result. `--no-cache` runs everything.

use std::path::{Path, PathBuf};

use crate::kernel::fnv64;
use crate::lab_options::{LabOptions, LAB_PPIN};
use crate::lab_run::JobOutcome;
use crate::XtaskError;

/// Where kept results live (under `target/kvmcap/`).
pub fn default_dir() -> PathBuf {
    crate::initramfs::out_dir().join("lab-cache")
}

/// The results kept for one lab's inputs.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    key: String,
}

fn read(path: &Path) -> Result<Vec<u8>, XtaskError> {
    std::fs::read(path).map_err(|e| XtaskError::Output {
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

impl Cache {
    /// The cache in `dir` of labs booted as `o` says (its kernel, initramfs, QEMU, CPUs and
    /// memory, and the host values on its command line).
    pub fn of(o: &LabOptions, dir: PathBuf, qemu: &Path) -> Result<Self, XtaskError> {
        let kernel = read(&o.kernel)?;
        let initramfs = read(&o.initramfs)?;
        let q = std::fs::metadata(qemu).map_err(|e| XtaskError::Output {
            path: qemu.to_owned(),
            problem: e.to_string(),
        })?;
        let qemu_id = format!("{} {} {:?}", qemu.display(), q.len(), q.modified().ok());
        // Not the TSC frequency on the lab's command line: it is read from the host's
        // `cpu MHz`, which moves with frequency scaling on real hardware, and only spares
        // the lab kernel a calibration.
        let shape = format!("{} {} {}", o.cpus, o.mem_mib, LAB_PPIN);
        let key = format!(
            "{:016x}",
            fnv64(&[&kernel, &initramfs, qemu_id.as_bytes(), shape.as_bytes()])
        );
        Ok(Self { dir, key })
    }

    fn path(&self, job: &str) -> PathBuf {
        self.dir
            .join(&self.key)
            .join(format!("{}.json", job.replace(['/', ':'], "_")))
    }

    /// The kept outcome of `job`, marked cached.
    pub fn get(&self, job: &str) -> Option<JobOutcome> {
        let text = std::fs::read_to_string(self.path(job)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let mut o = JobOutcome::from_report(job, &v).ok()?;
        if !o.pass {
            return None;
        }
        o.cached = true;
        Some(o)
    }

    /// Keeps `o` if it passed at its first attempt (best effort: a cache that cannot be
    /// written only costs a rerun).
    pub fn put(&self, o: &JobOutcome) {
        if !o.pass || o.cached || o.first_attempt.is_some() {
            return;
        }
        let path = self.path(&o.job);
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = crate::write_atomic(&path, o.to_report().to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(job: &str, pass: bool) -> JobOutcome {
        JobOutcome::from_report(
            job,
            &serde_json::json!({"job": job, "pass": pass, "snapshot": ["a"], "report": {"x": 1},
                "job_ms": 12.5, "stats": []}),
        )
        .unwrap()
    }

    #[test]
    fn a_pass_is_kept_for_the_same_inputs_only() {
        let dir = tempfile::tempdir().unwrap();
        let o = crate::lab_options::test_options(dir.path(), &[]);
        let qemu = dir.path().join("qemu");
        std::fs::write(&qemu, b"qemu").unwrap();
        let store = dir.path().join("cache");
        let cache = Cache::of(&o, store.clone(), &qemu).unwrap();
        assert!(cache.get("run:a:kernel:1").is_none());
        cache.put(&outcome("run:a:kernel:1", true));
        cache.put(&outcome("run:b:kernel:1", false));
        let mut retried = outcome("run:c:kernel:1", true);
        retried.first_attempt = Some("hung".into());
        cache.put(&retried);

        let kept = cache.get("run:a:kernel:1").unwrap();
        assert!(kept.cached && kept.pass);
        assert_eq!(kept.snapshot, serde_json::json!(["a"]));
        assert_eq!(kept.job_ms, Some(12.5));
        assert!(
            cache.get("run:b:kernel:1").is_none(),
            "a failure is not kept"
        );
        assert!(
            cache.get("run:c:kernel:1").is_none(),
            "a retried pass is not kept"
        );

        // Another kernel image: nothing kept applies.
        std::fs::write(dir.path().join("bzImage"), b"kernel 2").unwrap();
        let other = Cache::of(&o, store.clone(), &qemu).unwrap();
        assert!(other.get("run:a:kernel:1").is_none());
        // Another lab shape: neither.
        std::fs::write(dir.path().join("bzImage"), b"kernel 1").unwrap();
        let shape = LabOptions {
            cpus: 4,
            ..o.clone()
        };
        assert!(Cache::of(&shape, store.clone(), &qemu)
            .unwrap()
            .get("run:a:kernel:1")
            .is_none());
        assert!(Cache::of(&o, store, &qemu)
            .unwrap()
            .get("run:a:kernel:1")
            .is_some());
    }
}
