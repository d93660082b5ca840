//! Catalog names that the `x86` crate also defines must carry the same index there, so the
//! catalog and the crate people already use never disagree.

use msr_probe::{Catalog, MsrIndex};

#[test]
fn catalog_matches_x86_crate_constants() {
    let catalog = Catalog::builtin().expect("built-in catalog loads");
    let pairs: &[(u32, &str)] = &[
        (x86::msr::IA32_TIME_STAMP_COUNTER, "IA32_TIME_STAMP_COUNTER"),
        (x86::msr::IA32_APIC_BASE, "IA32_APIC_BASE"),
        (x86::msr::IA32_TSC_ADJUST, "IA32_TSC_ADJUST"),
        (x86::msr::IA32_MPERF, "IA32_MPERF"),
        (x86::msr::IA32_APERF, "IA32_APERF"),
        (x86::msr::IA32_MTRRCAP, "IA32_MTRRCAP"),
        (x86::msr::IA32_SYSENTER_CS, "IA32_SYSENTER_CS"),
        (x86::msr::IA32_SYSENTER_ESP, "IA32_SYSENTER_ESP"),
        (x86::msr::IA32_SYSENTER_EIP, "IA32_SYSENTER_EIP"),
        (x86::msr::IA32_MCG_CAP, "IA32_MCG_CAP"),
        (x86::msr::IA32_MCG_STATUS, "IA32_MCG_STATUS"),
        (x86::msr::IA32_DEBUGCTL, "IA32_DEBUGCTL"),
        (x86::msr::IA32_PAT, "IA32_PAT"),
        (x86::msr::IA32_MTRR_DEF_TYPE, "IA32_MTRR_DEF_TYPE"),
        (x86::msr::IA32_TSC_DEADLINE, "IA32_TSC_DEADLINE"),
        (x86::msr::IA32_X2APIC_APICID, "IA32_X2APIC_APICID"),
        (x86::msr::IA32_EFER, "IA32_EFER"),
        (x86::msr::IA32_STAR, "IA32_STAR"),
        (x86::msr::IA32_LSTAR, "IA32_LSTAR"),
        (x86::msr::IA32_CSTAR, "IA32_CSTAR"),
        (x86::msr::IA32_FMASK, "IA32_FMASK"),
        (x86::msr::IA32_FS_BASE, "IA32_FS_BASE"),
        (x86::msr::IA32_GS_BASE, "IA32_GS_BASE"),
        (x86::msr::IA32_KERNEL_GSBASE, "IA32_KERNEL_GSBASE"),
        (x86::msr::IA32_TSC_AUX, "IA32_TSC_AUX"),
        (x86::msr::IA32_PLATFORM_ID, "IA32_PLATFORM_ID"),
        (x86::msr::MSR_SMI_COUNT, "MSR_SMI_COUNT"),
        (x86::msr::IA32_FEATURE_CONTROL, "IA32_FEATURE_CONTROL"),
        (x86::msr::IA32_BIOS_SIGN_ID, "IA32_BIOS_SIGN_ID"),
        (x86::msr::IA32_SMM_MONITOR_CTL, "IA32_SMM_MONITOR_CTL"),
        (x86::msr::MSR_PLATFORM_INFO, "MSR_PLATFORM_INFO"),
        (
            x86::msr::MSR_PKG_CST_CONFIG_CONTROL,
            "MSR_PKG_CST_CONFIG_CONTROL",
        ),
        (x86::msr::MSR_IA32_TSX_CTRL, "MSR_IA32_TSX_CTRL"),
        (x86::msr::IA32_PERF_STATUS, "IA32_PERF_STATUS"),
        (x86::msr::IA32_PERF_CTL, "IA32_PERF_CTL"),
        (x86::msr::IA32_THERM_STATUS, "IA32_THERM_STATUS"),
        (x86::msr::IA32_MISC_ENABLE, "IA32_MISC_ENABLE"),
        (x86::msr::MSR_TEMPERATURE_TARGET, "MSR_TEMPERATURE_TARGET"),
        (x86::msr::MSR_TURBO_RATIO_LIMIT, "MSR_TURBO_RATIO_LIMIT"),
        (x86::msr::IA32_ENERGY_PERF_BIAS, "IA32_ENERGY_PERF_BIAS"),
        (
            x86::msr::IA32_PACKAGE_THERM_STATUS,
            "IA32_PACKAGE_THERM_STATUS",
        ),
        (x86::msr::MSR_POWER_CTL, "MSR_POWER_CTL"),
        (x86::msr::IA32_PERF_CAPABILITIES, "IA32_PERF_CAPABILITIES"),
        (x86::msr::IA32_VMX_BASIC, "IA32_VMX_BASIC"),
        (x86::msr::IA32_VMX_MISC, "IA32_VMX_MISC"),
        (x86::msr::MSR_RAPL_POWER_UNIT, "MSR_RAPL_POWER_UNIT"),
        (x86::msr::MSR_PKG_ENERGY_STATUS, "MSR_PKG_ENERGY_STATUS"),
        (x86::msr::MSR_PKG_POWER_INFO, "MSR_PKG_POWER_INFO"),
    ];
    for (index, name) in pairs {
        let e = catalog
            .by_name(name)
            .unwrap_or_else(|| panic!("{name} missing from the catalog"));
        assert_eq!(e.index, MsrIndex::new(*index), "{name}");
    }
}

#[test]
fn catalog_has_what_the_issue_lists() {
    let catalog = Catalog::builtin().expect("built-in catalog loads");
    assert!(catalog.entries().len() >= 40);
    for (index, fields) in [
        (0x4e, &["LockOut", "Enable"][..]),
        (0xc00102f0, &["LockOut", "Enable"][..]),
        (0xc0000080, &["LME", "LMA", "NXE"][..]),
        (0x1b, &["BSP"][..]),
        (0x3a, &["Lock"][..]),
    ] {
        let e = catalog.get(MsrIndex::new(index)).expect("present");
        for f in fields {
            assert!(e.field(f).is_some(), "{} lacks field {f}", e.name);
        }
    }
    for index in [0x4f, 0xc00102f1, 0xce, 0x10, 0x1a0] {
        assert!(catalog.get(MsrIndex::new(index)).is_some(), "{index:#x}");
    }
}
