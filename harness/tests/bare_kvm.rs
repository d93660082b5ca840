//! The VMM on real KVM with the bare probe guest: backends, scenarios, capability
//! negotiation and the guest end paths, with insta snapshots that are the same on every host.

mod common;

use kvmcap::backend::Backend;
use kvmcap::commands::probe::{probe_bare, ProbeRequest};
use kvmcap::commands::scenario::{run_scenario, Scenario};
use kvmcap::compare::Verdict;
use kvmcap::features::{Announce, FeatureSpec};
use kvmcap::host::HostSources;
use kvmcap::negotiate::NegotiationError;
use kvmcap::vmm::error::{Limits, VmmError};
use kvmcap::vmm::vcpu::VcpuEnd;
use msr_probe::{Catalog, Fault, Reading};

const PPIN: u64 = 0x1122_3344_5566_7788;

/// The bare probe of `spec`'s MSRs.
fn probe_spec(
    kvm: std::path::PathBuf,
    spec: &FeatureSpec,
    backend: Backend,
    vcpus: u8,
    host: &HostSources,
    catalog: &Catalog,
) -> Result<kvmcap::report::Report, VmmError> {
    probe_bare(
        &ProbeRequest {
            kvm_path: kvm,
            feature: Some(spec),
            backend,
            announce: Announce::Vendor,
            vcpus,
            msrs: spec.msrs(),
            host,
            limits: Limits::default(),
            irqchip: false,
            timed: false,
        },
        catalog,
    )
}

fn probe(backend: Backend, vcpus: u8, host_values: &[&str]) -> Option<kvmcap::report::Report> {
    let kvm = common::kvm()?;
    let catalog = Catalog::builtin().unwrap();
    let spec = FeatureSpec::find("ppin", &catalog).unwrap();
    let host = HostSources::default()
        .with_explicit(
            &host_values
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            &catalog,
        )
        .unwrap();
    let report = probe_spec(kvm, &spec, backend, vcpus, &host, &catalog).unwrap();
    Some(report)
}

#[test]
fn backend_none_gives_gp_for_ppin_on_every_vcpu() {
    let Some(r) = probe(Backend::None, 2, &[]) else {
        return;
    };
    assert_eq!(r.vcpus, vec![VcpuEnd::Done { ops: 4 }; 2]);
    assert_eq!(r.readings.len(), 8);
    for row in &r.readings {
        assert_eq!(row.guest, Reading::Fault(Fault::Gp), "{row:?}");
        assert_eq!(row.verdict, Verdict::ExpectedFault);
    }
    assert!(r.negotiation.is_empty());
    let catalog = Catalog::builtin().unwrap();
    let spec = FeatureSpec::find("ppin", &catalog).unwrap();
    insta::assert_yaml_snapshot!("probe_ppin_none_2vcpu", r.snapshot_view(Some(&spec)));
}

#[test]
fn backend_user_gives_the_explicit_value_on_every_vcpu() {
    let Some(r) = probe(Backend::User, 2, &["MSR_PPIN=0x1122334455667788"]) else {
        return;
    };
    assert!(r.ok(), "{}", r.table());
    let catalog = Catalog::builtin().unwrap();
    let spec = FeatureSpec::find("ppin", &catalog).unwrap();
    let announced = spec
        .pair_for(r.fingerprint.guest_vendor)
        .expect("host vendor has a PPIN pair");
    for cpu in 0..2 {
        let row = r
            .readings
            .iter()
            .find(|x| x.cpu == cpu && x.index == announced.value)
            .unwrap();
        assert_eq!(row.guest, Reading::Value(PPIN));
        assert_eq!(row.verdict, Verdict::Match);
    }
    assert_eq!(r.negotiation[0].enabled.as_deref(), Some("ok"));
    insta::assert_yaml_snapshot!("probe_ppin_user_2vcpu", r.snapshot_view(Some(&spec)));
    // JSON has cpu, index, name, guest, host and verdict on each reading.
    let j = serde_json::to_value(&r).unwrap();
    let first = &j["readings"][1];
    for key in ["cpu", "index", "name", "guest", "host", "verdict"] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
}

#[test]
fn user_backend_without_a_ppin_value_is_a_clear_error() {
    let Some(kvm) = common::kvm() else { return };
    let catalog = Catalog::builtin().unwrap();
    let spec = FeatureSpec::find("ppin", &catalog).unwrap();
    let host = HostSources::default();
    let e = probe_spec(kvm, &spec, Backend::User, 1, &host, &catalog).unwrap_err();
    assert!(e.to_string().contains("--host-value"), "{e}");
}

fn scenario_with(
    name: &str,
    backend: Backend,
    vcpus: u8,
    pair: Announce,
) -> Option<kvmcap::commands::scenario::ScenarioReport> {
    let kvm = common::kvm()?;
    let catalog = Catalog::builtin().unwrap();
    let s = Scenario::find(name, &catalog).unwrap();
    Some(run_scenario(&s, backend, vcpus, pair, &kvm, &catalog, Limits::default()).unwrap())
}

fn scenario(
    name: &str,
    backend: Backend,
    vcpus: u8,
) -> Option<kvmcap::commands::scenario::ScenarioReport> {
    scenario_with(name, backend, vcpus, Announce::Vendor)
}

#[test]
fn ppin_ctl_states_with_the_user_backend_on_both_pairs() {
    for pair in [Announce::Intel, Announce::Amd] {
        for vcpus in [1, 2] {
            let Some(r) = scenario_with("ppin-ctl-states", Backend::User, vcpus, pair) else {
                return;
            };
            assert!(r.pass, "{}", r.table());
            assert_eq!(r.cases.len(), 10);
            // The cross-vCPU cases run only with two vCPUs.
            let skipped = r.cases.iter().filter(|c| c.skipped.is_some()).count();
            assert_eq!(skipped, if vcpus == 1 { 2 } else { 0 }, "{}", r.table());
            insta::assert_yaml_snapshot!(
                format!("scenario_ppin_ctl_states_user_{pair}_{vcpus}vcpu"),
                r.snapshot_view()
            );
        }
    }
}

#[test]
fn enable_arguments_are_refused_by_the_user_backend_as_by_kvm() {
    let Some(r) = scenario("ppin-enable", Backend::User, 1) else {
        return;
    };
    assert!(r.pass, "{}", r.table());
    let refused = &r.cases[1].negotiation[0];
    assert!(
        refused.contains("KVM_CAP_PPIN") && refused.contains("EINVAL"),
        "{refused}"
    );
    insta::assert_yaml_snapshot!("scenario_ppin_enable_user", r.snapshot_view());
}

#[test]
fn an_unreachable_initial_state_is_refused_for_every_backend_alike() {
    let Some(kvm) = common::kvm() else { return };
    let catalog = Catalog::builtin().unwrap();
    let text = "name='x'\nfeature='ppin'\nbackends=['user']\n[host]\nMSR_PPIN=1\n\
                [[case]]\nname='c'\nrules=['host-access']\ninitial={ ctl = 3 }\n\
                steps=[{ read = 'ctl', expect = 3 }]\n";
    let s = Scenario::parse(text, "t.toml", &catalog).unwrap();
    let e = run_scenario(
        &s,
        Backend::User,
        1,
        Announce::Amd,
        &kvm,
        &catalog,
        Limits::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("KVM_SET_MSRS 0xc00102f0 = 0x3 refused"),
        "{e}"
    );
}

#[test]
fn ppin_absent_with_stock_kvm() {
    let Some(r) = scenario("ppin-absent", Backend::None, 2) else {
        return;
    };
    assert!(r.pass, "{}", r.table());
    insta::assert_yaml_snapshot!("scenario_ppin_absent_none", r.snapshot_view());
}

#[test]
fn platform_info_enabled_and_disabled() {
    for backend in [Backend::Kernel, Backend::User] {
        let Some(r) = scenario("platform-info", backend, 1) else {
            return;
        };
        assert!(r.pass, "{}", r.table());
        let enabled = &r.cases[0].steps[0];
        assert_eq!(enabled.seen, Reading::Value(0x8000_2a00));
        let disabled = &r.cases[1].steps[0];
        assert_eq!(disabled.seen, Reading::Fault(Fault::Gp));
        insta::assert_yaml_snapshot!(
            format!("scenario_platform_info_{backend}"),
            r.snapshot_view()
        );
    }
}

#[test]
fn triple_fault_is_shutdown_and_a_spinning_guest_times_out() {
    let Some(r) = scenario("guest-ends", Backend::None, 2) else {
        return;
    };
    assert!(r.pass, "{}", r.table());
    assert_eq!(r.cases[0].ends[0], VcpuEnd::Shutdown);
    assert_eq!(r.cases[1].ends[0], VcpuEnd::Timeout);
    insta::assert_yaml_snapshot!("scenario_guest_ends_none", r.snapshot_view());
}

#[test]
fn a_missing_capability_gives_its_error() {
    let Some(kvm) = common::kvm() else { return };
    let catalog = Catalog::builtin().unwrap();
    let mut spec = FeatureSpec::find("ppin", &catalog).unwrap();
    // A number no kernel has: the kernel backend must refuse to run, naming it.
    spec.capability.number = 4000;
    spec.capability.name = "KVM_CAP_TEST_ABSENT".into();
    let host = HostSources::default()
        .with_explicit(&["MSR_PPIN=1".into()], &catalog)
        .unwrap();
    let e = probe_spec(kvm, &spec, Backend::Kernel, 1, &host, &catalog).unwrap_err();
    match e {
        VmmError::Negotiation {
            error: NegotiationError::Missing {
                number, ref cap, ..
            },
            ..
        } => {
            assert_eq!(number, 4000);
            assert_eq!(cap, "unknown(4000)");
        }
        other => panic!("expected a missing capability, got {other}"),
    }
}

#[test]
fn a_refused_enable_is_reported_with_its_errno() {
    let Some(kvm) = common::kvm() else { return };
    let catalog = Catalog::builtin().unwrap();
    let mut spec = FeatureSpec::find("platform-info", &catalog).unwrap();
    // KVM_CAP_X86_USER_SPACE_MSR with an undefined flag: KVM says EINVAL.
    spec.capability.number = 188;
    spec.capability.args = [1 << 40, 0, 0, 0];
    let host = HostSources::default();
    let e = probe_spec(kvm, &spec, Backend::Kernel, 1, &host, &catalog).unwrap_err();
    assert!(
        matches!(&e, VmmError::Negotiation { error: NegotiationError::Refused { reason, .. }, .. } if reason.starts_with("EINVAL")),
        "{e}"
    );
}
