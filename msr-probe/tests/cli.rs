//! The msr-probe binary on a fake device tree (`--dev-root`): where its output goes, and
//! that its exit codes are the one table the README documents.

use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use msr_probe::cli::exit::Exit;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msr-probe"))
        .args(args)
        .output()
        .expect("msr-probe runs")
}

/// A device tree with CPUs 0 and 1, MSR 0x4f = 0x1122334455667788 on both.
fn tree() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for cpu in 0..2 {
        std::fs::create_dir_all(dir.path().join(format!("cpu/{cpu}"))).unwrap();
        let f = std::fs::File::create(dir.path().join(format!("cpu/{cpu}/msr"))).unwrap();
        f.write_all_at(&0x1122_3344_5566_7788u64.to_le_bytes(), 0x4f)
            .unwrap();
    }
    let root = dir.path().join("cpu").display().to_string();
    (dir, root)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn readme_documents_the_exit_table_the_binary_uses() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("## msr-probe: a better rdmsr")
        .nth(1)
        .expect("README has the msr-probe section");
    let table = Exit::table();
    assert!(
        section.contains(&format!("```\n{table}```")),
        "README's msr-probe exit codes differ from Exit::table():\n{table}"
    );
    let help = String::from_utf8(probe(&["--help"]).stdout).unwrap();
    assert!(help.ends_with(&table), "{help}");
}

#[test]
fn output_to_a_regular_file_is_atomic_and_only_on_success() {
    let (dir, root) = tree();
    let file = dir.path().join("out.txt");
    std::fs::write(&file, "old\n").unwrap();
    let path = file.to_str().unwrap();
    let out = probe(&["--dev-root", &root, "-a", "--output", path, "0x4f"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "1122334455667788\n1122334455667788\n"
    );
    // A failed read leaves the file as it was: no partial report.
    let out = probe(&["--dev-root", &root, "-p", "7", "--output", path, "0x4f"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "1122334455667788\n1122334455667788\n"
    );
    let new = dir.path().join("new.json");
    let out = probe(&[
        "--dev-root",
        &root,
        "--json",
        "--output",
        new.to_str().unwrap(),
        "-p",
        "9",
        "0x4f",
    ]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(!new.exists());
    // No temporary file is left behind either way.
    assert_eq!(entries(dir.path()), ["cpu", "out.txt"]);
    // A directory is not written: exit 8, one line.
    let out = probe(&[
        "--dev-root",
        &root,
        "--output",
        dir.path().to_str().unwrap(),
        "0x4f",
    ]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(Exit::OutputNotWritten.code()))
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn dash_and_dev_stdout_are_stdout_and_a_symlink_to_a_device_survives() {
    let (dir, root) = tree();
    for target in ["-", "/dev/stdout"] {
        let out = probe(&["--dev-root", &root, "-c", "--output", target, "0x4f"]);
        assert!(out.status.success(), "{target}: {out:?}");
        assert_eq!(out.stdout, b"0x1122334455667788\n", "{target}");
    }
    let link = dir.path().join("null");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let out = probe(&[
        "--dev-root",
        &root,
        "--output",
        link.to_str().unwrap(),
        "0x4f",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
}

#[test]
fn a_fifo_is_written_through() {
    let (dir, root) = tree();
    let fifo: PathBuf = dir.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let out = probe(&[
        "--dev-root",
        &root,
        "--json",
        "--output",
        fifo.to_str().unwrap(),
        "0x4f",
    ]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_str(&reader.join().unwrap()).unwrap();
    assert_eq!(
        doc["cpus"][0]["readings"][0]["reading"]["value"],
        "0x1122334455667788"
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}
