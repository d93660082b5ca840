//! The bare probe as a multiboot image under QEMU (`-accel kvm`): the same compiled reads
//! kvmcap runs, loaded by another VMM, complete and agree with kvmcap's own run where both
//! VMMs leave the MSR to KVM.

mod common;

use std::process::Command;

use kvmcap::commands::probe::{probe_bare, ProbeRequest};
use kvmcap::guests::bare::{image, MsrOp, OpResult};
use kvmcap::vmm::error::Limits;
use kvmcap::{features::FeatureSpec, host::HostSources};
use msr_probe::{Catalog, MsrIndex};

#[test]
fn qemu_runs_the_image_and_agrees_on_the_feature_msrs() {
    let (Some(kvm), Some(qemu)) = (common::kvm(), common::qemu()) else {
        return;
    };
    let catalog = Catalog::builtin().unwrap();
    let spec = FeatureSpec::find("ppin", &catalog).unwrap();
    let mut msrs: Vec<MsrIndex> = spec.msrs();
    msrs.push(catalog.resolve("IA32_APIC_BASE").unwrap());
    let ops: Vec<MsrOp> = msrs.iter().map(|&index| MsrOp::Read { index }).collect();
    let per_cpu = vec![ops.clone(), ops.clone()];
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("probe.mb");
    let dump = dir.path().join("dump.bin");
    std::fs::write(&img, image::multiboot_image(&per_cpu, false)).unwrap();
    let out = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm",
            "-cpu",
            "host,-arch-capabilities",
        ])
        .args([
            "-smp",
            "2",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&img)
        .arg("-debugcon")
        .arg(format!("file:{}", dump.display()))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .output()
        .unwrap();
    // isa-debug-exit: status (0 << 1) | 1.
    assert_eq!(
        out.status.code(),
        Some(1),
        "QEMU: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = image::parse_dump(&per_cpu, &std::fs::read(&dump).unwrap()).unwrap();
    assert_eq!(results.len(), 2);
    // The dump as `image --dump` prints it: a kvmcap.image-dump/1 document.
    let parsed = kvmcap::commands::image::ImageDump::parse(
        &per_cpu,
        &std::fs::read(&dump).unwrap(),
        false,
        &catalog,
    )
    .unwrap();
    let dump_json = serde_json::to_value(&parsed).unwrap();
    common::assert_schema(&common::schema_validator(), "image dump", &dump_json);

    let host = HostSources::default();
    let report = probe_bare(
        &ProbeRequest {
            kvm_path: kvm,
            feature: Some(&spec),
            backend: kvmcap::backend::Backend::None,
            announce: kvmcap::features::Announce::Vendor,
            vcpus: 2,
            msrs: msrs.clone(),
            host: &host,
            limits: Limits::default(),
            irqchip: false,
            timed: false,
        },
        &catalog,
    )
    .unwrap();
    // Row by row, the dump's JSON `guest` is the report's, where both VMMs leave the MSR to
    // KVM (what `cargo xtask bench` compares).
    let report_json = serde_json::to_value(&report).unwrap();
    for (d, r) in dump_json["readings"]
        .as_array()
        .unwrap()
        .iter()
        .zip(report_json["readings"].as_array().unwrap())
    {
        assert_eq!(d["index"], r["index"]);
        if d["name"] != "IA32_APIC_BASE" {
            assert_eq!(d["guest"], r["guest"], "{}", d["name"]);
        }
    }
    for (cpu, list) in results.iter().enumerate() {
        for (i, (r, _)) in list.iter().enumerate() {
            let row = &report.readings[cpu * msrs.len() + i];
            assert_eq!(row.index, msrs[i]);
            if row.name == "IA32_APIC_BASE" {
                // Both lists ran on QEMU's boot CPU (BSP bit 8 set); kvmcap ran them on
                // two vCPUs. Same default base otherwise.
                assert!(matches!(r, OpResult::Read(v) if v & 0xffff_f100 == 0xfee0_0100));
                let kvmcap_bsp =
                    matches!(row.guest, msr_probe::Reading::Value(v) if v & 0x100 != 0);
                assert_eq!(kvmcap_bsp, cpu == 0);
            } else {
                // Stock KVM answers the PPIN MSRs with #GP under both VMMs.
                assert_eq!(r.reading(&ops[i]), row.guest, "cpu {cpu} {}", row.name);
            }
        }
    }
}
