//! The `kvmcap` binary as a user runs it: output, one-line errors and exit codes.

mod common;

use std::process::{Command, Output};

fn kvmcap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvmcap"))
        .args(args)
        .output()
        .expect("kvmcap runs")
}

fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "want one line, got: {err}"
    );
    assert!(err.starts_with("kvmcap: "), "{err}");
    err
}

#[test]
fn missing_kvm_device_is_exit_3_with_a_hint() {
    let o = kvmcap(&["caps", "--kvm", "/nonexistent/kvm"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(one_line_error(&o).contains("kvm_amd"));
    let o = kvmcap(&["probe", "--backend", "none", "--kvm", "/nonexistent/kvm"]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn usage_errors_are_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["probe"],
        &["probe", "--backend", "x"],
        &["run"],
        &["probe", "--backend", "user", "--msr", "NOPE"],
        &["image"],
        &["image", "--out", "a", "--dump", "b"],
        &["image", "--out", "a", "--msr", "NOPE"],
    ] {
        let o = kvmcap(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        one_line_error(&o);
    }
    let o = kvmcap(&["--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit codes:"));
    let o = kvmcap(&["--version"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("kvmcap "));
    // A typo gets a suggestion, in one line.
    let o = kvmcap(&["probe", "--backnd=user"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line_error(&o).contains("'--backend'"));
}

/// Every flag a subcommand's help names is one the subcommand accepts, and every subcommand
/// has its own help.
#[test]
fn help_names_only_flags_that_work() {
    for sub in ["caps", "probe", "image", "run", "explore", "verify", "list"] {
        let o = kvmcap(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help");
        let help = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(help.contains(&format!("Usage: kvmcap {sub}")), "{help}");
        let flags: std::collections::BTreeSet<String> = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(String::from)
            .collect();
        assert!(!flags.is_empty(), "{sub}");
        for flag in flags {
            let o = kvmcap(&[sub, &flag]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                !err.contains("unexpected argument"),
                "kvmcap {sub} --help names {flag}, which {sub} refuses: {err}"
            );
        }
    }
}

/// The built-in scenarios and features run from a copy of the binary far from the workspace.
#[test]
fn a_copied_binary_lists_its_built_in_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kvmcap");
    std::fs::copy(env!("CARGO_BIN_EXE_kvmcap"), &copy).unwrap();
    let o = Command::new(&copy)
        .args(["list", "scenarios", "--json"])
        .current_dir(dir.path())
        .env_remove("KVMCAP_FIXTURES")
        .output()
        .unwrap();
    assert!(o.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ppin-ctl-states"), "{names:?}");
    // The user's own directory comes first and is named as the origin.
    std::fs::create_dir_all(dir.path().join("mine/scenarios")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/scenarios/ppin-enable.toml"
        ),
        dir.path().join("mine/scenarios/my-own.toml"),
    )
    .unwrap();
    let o = Command::new(&copy)
        .args(["list", "scenarios", "--fixtures"])
        .arg(dir.path().join("mine"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("my-own") && out.contains("mine/scenarios/my-own.toml"),
        "{out}"
    );
}

/// A dump that is not the image's results area is exit 9 (no usable report), in one line.
#[test]
fn image_dump_of_another_shape_is_exit_9() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dump.bin");
    std::fs::write(&p, b"not a results area").unwrap();
    let o = kvmcap(&["image", "--dump", p.to_str().unwrap(), "--catalog"]);
    assert_eq!(o.status.code(), Some(9));
    assert!(one_line_error(&o).contains("dump"));
    let o = kvmcap(&["image", "--dump", "/nonexistent/dump", "--catalog"]);
    assert_eq!(o.status.code(), Some(6));
}

#[test]
fn bad_input_files_are_exit_6() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(&p, "name = 'x'\nfeature = 'ppin'\nbackends = ['user']\n[[case]]\nname='c'\nsteps=[{read='value'}]\n").unwrap();
    let o = kvmcap(&["run", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6));
    assert!(one_line_error(&o).contains("needs `expect`"));
    let o = kvmcap(&["run", "no-such-scenario"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line_error(&o).contains("known: "));
    let f = d.path().join("feature.toml");
    std::fs::write(&f, "name='x'\nmodel='ppin'\n[capability]\nname='KVM_CAP_PPIN'\n[[pair]]\nvendor='amd'\nctl='MSR_AMD_PPIN_CTL'\nvalue='NOPE'\ncpuid={leaf=1,register='ebx',bit=1}\n").unwrap();
    let o = kvmcap(&[
        "probe",
        "--backend",
        "none",
        "--feature",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(6));
    one_line_error(&o);
}

#[test]
fn caps_names_the_capabilities_kvmcap_uses() {
    if common::kvm().is_none() {
        return;
    }
    let o = kvmcap(&["caps"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("KVM_CAP_X86_USER_SPACE_MSR"), "{out}");
    assert!(out.contains("KVM_CAP_MSR_PLATFORM_INFO"), "{out}");
    let o = kvmcap(&["caps", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["schema"], "kvmcap.caps/1");
    assert!(doc["caps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["number"] == 188 && r["system"] == 1));
}

#[test]
fn probe_json_shows_the_value_on_both_vcpus_and_none_shows_gp() {
    if common::kvm().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("r.json");
    let o = kvmcap(&[
        "probe",
        "--guest",
        "bare",
        "--feature",
        "ppin",
        "--backend",
        "user",
        "--vcpus",
        "2",
        "--host-value",
        "MSR_PPIN=0x1122334455667788",
        "--json",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j,
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&report).unwrap()).unwrap()
    );
    let seen: Vec<(u64, bool)> = j["readings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["guest"]["value"] == "0x1122334455667788")
        .map(|r| (r["cpu"].as_u64().unwrap(), r["verdict"] == "match"))
        .collect();
    assert_eq!(seen, vec![(0, true), (1, true)]);
    assert_eq!(j["schema"], "kvmcap.report/1");
    assert_eq!(j["pass"], true);

    let o = kvmcap(&[
        "probe",
        "--guest",
        "bare",
        "--feature",
        "ppin",
        "--backend",
        "none",
        "--vcpus",
        "2",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["readings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["guest"]["fault"] == "GP"));
}

#[test]
fn whole_catalog_probe_runs_on_two_vcpus() {
    if common::kvm().is_none() {
        return;
    }
    let o = kvmcap(&[
        "probe",
        "--guest",
        "bare",
        "--backend",
        "none",
        "--catalog",
        "--vcpus",
        "2",
        "--json",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = msr_probe::Catalog::builtin().unwrap().entries().len();
    assert_eq!(j["readings"].as_array().unwrap().len(), 2 * n);
    assert!(j["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["end"] == "done"));
}

#[test]
fn missing_capability_is_exit_4_naming_it() {
    if common::kvm().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("absent.toml");
    std::fs::write(&f, "name='absent'\nmodel='kvm-msr'\n[capability]\nname='KVM_CAP_TEST_ABSENT'\nnumber=4000\nargs=[1]\n[[kvm_msr]]\nmsr='MSR_PLATFORM_INFO'\ndefault=0\n").unwrap();
    let o = kvmcap(&[
        "probe",
        "--backend",
        "kernel",
        "--feature",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(4));
    let e = one_line_error(&o);
    assert!(
        e.contains("unknown(4000) (4000)") && e.contains("running kernel"),
        "{e}"
    );
}

#[test]
fn scenario_run_writes_its_report_and_passes() {
    if common::kvm().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("s.json");
    let o = kvmcap(&[
        "run",
        "ppin-ctl-states",
        "--backend",
        "user",
        "--vcpus",
        "2",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("PASS"));
    assert!(report.exists());
}

/// The `user` backend refuses enable arguments KVM would refuse, with KVM's message and exit
/// code (the lab checks the kernel side gives the very same line).
#[test]
fn user_backend_refuses_bad_enable_arguments_like_kvm() {
    if common::kvm().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bad-args.toml");
    std::fs::write(
        &f,
        "name='bad-args'\nfeature='ppin'\nbackends=['user','kernel']\n[host]\nMSR_PPIN=1\n\
         [[case]]\nname='two'\nrules=['cpuid-gate']\nargs=[2]\nsteps=[{ read = 'ctl', expect = 2 }]\n",
    )
    .unwrap();
    let o = kvmcap(&["run", f.to_str().unwrap(), "--backend", "user"]);
    assert_eq!(o.status.code(), Some(5));
    let e = one_line_error(&o);
    assert!(
        e.contains("KVM_ENABLE_CAP(KVM_CAP_PPIN = 1024, args [2, 0, 0, 0]) failed: EINVAL"),
        "{e}"
    );
}

/// A host-initiated initial state KVM refuses (PPIN_CTL 11b) is refused by the model too.
#[test]
fn an_unreachable_initial_state_is_exit_6() {
    if common::kvm().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("eleven.toml");
    std::fs::write(
        &f,
        "name='eleven'\nfeature='ppin'\nbackends=['user']\n[host]\nMSR_PPIN=1\n\
         [[case]]\nname='c'\nrules=['host-access']\ninitial={ MSR_AMD_PPIN_CTL = 3 }\n\
         steps=[{ read = 'ctl', expect = 3 }]\n",
    )
    .unwrap();
    let o = kvmcap(&["run", f.to_str().unwrap(), "--pair", "amd"]);
    assert_eq!(o.status.code(), Some(6));
    assert!(
        one_line_error(&o).contains("KVM_SET_MSRS 0xc00102f0 = 0x3 refused"),
        "{o:?}"
    );
}

/// `--host-ppin` reads this host's PPIN from sysfs; where there is none it says so.
#[test]
fn host_ppin_without_a_host_ppin_is_a_clear_error() {
    if std::path::Path::new("/sys/devices/system/cpu/cpu0/topology/ppin").exists() {
        return;
    }
    let o = kvmcap(&[
        "probe",
        "--feature",
        "ppin",
        "--backend",
        "user",
        "--host-ppin",
    ]);
    assert_eq!(o.status.code(), Some(6));
    assert!(one_line_error(&o).contains("found no PPIN"), "{o:?}");
}

#[test]
fn refused_enable_is_exit_5() {
    if common::kvm().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("refused.toml");
    // KVM_CAP_X86_USER_SPACE_MSR with an undefined flag: KVM answers EINVAL.
    std::fs::write(&f, "name='refused'\nmodel='kvm-msr'\n[capability]\nname='KVM_CAP_X86_USER_SPACE_MSR'\nargs=[0x10000000000]\n[[kvm_msr]]\nmsr='MSR_PLATFORM_INFO'\ndefault=0\n").unwrap();
    let o = kvmcap(&[
        "probe",
        "--backend",
        "kernel",
        "--feature",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(5));
    assert!(one_line_error(&o).contains("EINVAL"));
}

#[test]
fn bad_guest_images_are_exit_6_and_write_no_report() {
    if common::kvm().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("r.json");
    let garbage = d.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
    let mut cpio = guest_tools::cpio::Builder::new();
    cpio.file("init", 0o755, vec![0x7f, b'E', b'L', b'F']);
    let good_cpio = d.path().join("initramfs.cpio");
    std::fs::write(&good_cpio, cpio.finish().unwrap()).unwrap();
    let truncated = d.path().join("truncated");
    std::fs::write(&truncated, &[0u8; 0x300][..]).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--kernel",
                garbage.to_str().unwrap(),
                "--initramfs",
                good_cpio.to_str().unwrap(),
            ],
            "bzImage",
        ),
        (
            vec![
                "--kernel",
                truncated.to_str().unwrap(),
                "--initramfs",
                good_cpio.to_str().unwrap(),
            ],
            "bzImage",
        ),
        (
            vec![
                "--kernel",
                garbage.to_str().unwrap(),
                "--initramfs",
                garbage.to_str().unwrap(),
            ],
            "not an initramfs",
        ),
        (
            vec![
                "--kernel",
                garbage.to_str().unwrap(),
                "--initramfs",
                "/nonexistent.cpio",
            ],
            "does not exist",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec![
            "verify",
            "--guest",
            "linux",
            "--feature",
            "ppin",
            "--backend",
            "none",
            "--report",
            report.to_str().unwrap(),
        ];
        all.extend(args);
        let o = kvmcap(&all);
        assert_eq!(
            o.status.code(),
            Some(6),
            "{all:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(one_line_error(&o).contains(want), "{all:?}");
        assert!(!report.exists(), "no partial report file");
    }
}

/// Colour only on a terminal or when asked; without -v the unchecked rows are counted, not
/// listed.
#[test]
fn colour_and_verbosity() {
    if common::kvm().is_none() {
        return;
    }
    let args = [
        "probe",
        "--backend",
        "user",
        "--catalog",
        "--host-value",
        "MSR_PPIN=0x1122334455667788",
        "--host-value",
        "MSR_AMD_PPIN=0x1122334455667788",
    ];
    let o = kvmcap(&args);
    let plain = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{plain}");
    assert!(!plain.contains('\x1b'), "a pipe gets no colour");
    assert!(plain.contains("unchecked readings not shown"), "{plain}");
    let o = kvmcap(&[&["-v"][..], &args].concat());
    let verbose = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(verbose.lines().count() > plain.lines().count());
    assert!(verbose.contains("unchecked ("));
    let o = kvmcap(&[&["--color", "always"][..], &args].concat());
    assert!(String::from_utf8_lossy(&o.stdout).contains("\x1b[32mPASS\x1b[0m"));
}

/// A reader that goes away (`kvmcap list msrs | head -1`) ends the output quietly: no panic,
/// no report error.
#[test]
fn a_closed_pipe_is_not_an_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmcap"))
        .args(["list", "msrs"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(0), "{err}");
}
