//! Building a VM for any guest: open KVM, negotiate the feature's capabilities, install the
//! `user` backend's MSR filter and model, and set up each vCPU's CPUID and MSRs. The guest
//! (`crate::guests`) brings its memory image and exit handler.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd};

use crate::backend::wiring::{cap_requests, cpuid_bits, model_inputs};
use crate::backend::Backend;
use crate::features::model::{
    model_for_vcpu, with_model, InitialRefused, ModelInputs, Oracle, SharedModel,
};
use crate::features::{Announce, FeatureSpec, Scope};
use crate::host::HostSources;
use crate::kvm::{KvmError, KvmSystem, VmSetup};
use crate::negotiate::{enable_errno_meaning, negotiate, NegotiationError, NegotiationStep};
use crate::vmm::error::VmmError;
use crate::x86::cpuid::{self, CpuVendor, CpuidBit};
use crate::x86::layout::KVM_TSS_ADDR;
use msr_probe::{Fault, MsrIndex};

pub(crate) fn set_msrs(vcpu: &VcpuFd, cpu: u8, values: &[(MsrIndex, u64)]) -> Result<(), VmmError> {
    if values.is_empty() {
        return Ok(());
    }
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|(i, v)| kvm_msr_entry {
            index: i.raw(),
            data: *v,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmmError::Vcpu {
        cpu,
        what: "KVM_SET_MSRS".into(),
        error: format!("{e:?}"),
    })?;
    let n = vcpu.set_msrs(&msrs).map_err(|e| VmmError::Vcpu {
        cpu,
        what: "KVM_SET_MSRS".into(),
        error: e.to_string(),
    })?;
    if n < values.len() {
        let (msr, value) = values[n];
        return Err(VmmError::Initial(InitialRefused {
            msr,
            value,
            reason: None,
        }));
    }
    Ok(())
}

pub(crate) fn vcpu_err(
    cpu: u8,
    what: &str,
) -> impl Fn(vmm_sys_util::errno::Error) -> VmmError + '_ {
    move |e| VmmError::Vcpu {
        cpu,
        what: what.to_owned(),
        error: e.to_string(),
    }
}

/// A feature's model as one vCPU uses it (shared by every vCPU for a VM-scoped feature).
pub type VcpuModel = SharedModel;

/// How a feature is put into a VM, for any guest.
#[derive(Clone, Copy)]
pub struct FeatureRun<'a> {
    /// The feature.
    pub feature: Option<&'a FeatureSpec>,
    /// The backend.
    pub backend: Backend,
    /// Host values.
    pub host: &'a HostSources,
    /// Enable arguments overriding the feature spec's.
    pub cap_args: Option<[u64; 4]>,
    /// MSR state the VMM establishes before the guest runs (host-initiated writes).
    pub initial: &'a [(MsrIndex, u64)],
    /// Which of the feature's pairs the guest's CPUID announces.
    pub announce: Announce,
}

/// A VM with its capabilities negotiated and its feature wired, before any vCPU exists.
pub struct Prepared {
    /// The VM, still without vCPUs.
    pub vm: VmSetup,
    /// Everything else the vCPUs and the report need.
    pub ctx: VmContext,
}

/// What negotiation and feature wiring produced, besides the VM itself.
pub struct VmContext {
    /// The KVM system fd.
    pub kvm: KvmSystem,
    /// KVM's supported CPUID.
    pub supported: kvm_bindings::CpuId,
    /// The guest's vendor.
    pub vendor: CpuVendor,
    /// What negotiation did.
    pub negotiation: Vec<NegotiationStep>,
    /// The user backend's model in its starting state.
    pub model: Option<SharedModel>,
    /// Where the feature's state lives (whether vCPUs share the model).
    pub scope: Scope,
    /// The model inputs in force (the oracle's starting state).
    pub inputs: Option<ModelInputs>,
    /// The feature model in the starting state (built once; copies judge the run).
    pub oracle: Option<Oracle>,
    /// Host-initiated writes KVM receives (`KVM_SET_MSRS` on every vCPU, in order): all of
    /// the initial state for `kernel` and `none`, what the model does not serve for `user`.
    pub kvm_values: Vec<(MsrIndex, u64)>,
    on: Vec<CpuidBit>,
    off: Vec<CpuidBit>,
}

/// Opens KVM, creates the VM, negotiates the feature's capabilities and installs the MSR
/// filter and model (backend user). Callers then register guest memory and call
/// [`create_irqchip`], in that order (see there).
pub fn prepare(kvm_path: &std::path::Path, run: FeatureRun<'_>) -> Result<Prepared, VmmError> {
    prepare_on(OpenVm::open(kvm_path)?, run)
}

/// The part of [`prepare`] that needs nothing from the request: `/dev/kvm` open, KVM's
/// supported CPUID, a new VM. A caller that has inputs to read first can open it on another
/// thread meanwhile (`kvmcap probe` does: on the CI host the two take about as long).
pub struct OpenVm {
    kvm: KvmSystem,
    supported: kvm_bindings::CpuId,
    vm: VmSetup,
}

impl OpenVm {
    /// Opens `kvm_path`, asks for the supported CPUID, creates a VM.
    /// KVM_GET_SUPPORTED_CPUID and KVM_CREATE_VM run side by side (both ~0.3 ms here).
    pub fn open(kvm_path: &std::path::Path) -> Result<Self, VmmError> {
        let kvm = KvmSystem::open(kvm_path)?;
        let (supported, vm) = std::thread::scope(|s| {
            let cpuid = s.spawn(|| kvm.supported_cpuid());
            let vm = kvm.create_vm();
            (cpuid.join(), vm)
        });
        let supported = supported.map_err(|_| {
            VmmError::Internal("KVM_GET_SUPPORTED_CPUID: its thread panicked".into())
        })??;
        Ok(Self {
            supported,
            vm: vm?,
            kvm,
        })
    }

    /// [`OpenVm::open`] on a new thread; join the handle for the result.
    pub fn open_in_background(
        kvm_path: std::path::PathBuf,
    ) -> std::thread::JoinHandle<Result<Self, VmmError>> {
        std::thread::spawn(move || Self::open(&kvm_path))
    }
}

/// [`prepare`] on a VM already opened.
pub fn prepare_on(open: OpenVm, run: FeatureRun<'_>) -> Result<Prepared, VmmError> {
    let OpenVm { kvm, supported, vm } = open;
    let vendor = cpuid::vendor(&supported);
    let args = run
        .cap_args
        .or(run.feature.map(|f| f.capability.args))
        .unwrap_or([0; 4]);
    // The user backend emulates the capability's enable too: it refuses what KVM refuses,
    // with the same error.
    if let (Backend::User, Some(f)) = (run.backend, run.feature) {
        if f.capability.refused_arg(&args).is_some() {
            return Err(VmmError::Negotiation {
                steps: Vec::new(),
                error: NegotiationError::Refused {
                    cap: f.capability.name.clone(),
                    number: f.capability.number,
                    args,
                    reason: enable_errno_meaning(libc::EINVAL).to_owned(),
                },
            });
        }
    }
    let requests = cap_requests(run.feature, run.backend, run.cap_args);
    let negotiation = negotiate(&kvm, &vm, &requests)
        .map_err(|(steps, error)| VmmError::Negotiation { steps, error })?;

    let inputs = match run.feature {
        Some(f) => Some(model_inputs(
            f,
            run.backend,
            vendor,
            run.announce,
            run.host,
            args,
            run.initial,
        )?),
        None => None,
    };
    let mut kvm_values: Vec<(MsrIndex, u64)> = inputs
        .as_ref()
        .map_or_else(|| run.initial.to_vec(), |i| i.writes.clone());
    // The model, built once: the user backend serves a copy, the oracles judge with copies.
    // A starting state the model refuses is the user backend's error (KVM's refusal is the
    // others', at KVM_SET_MSRS); for them the run then has no oracle.
    let oracle = match (run.feature, &inputs) {
        (Some(f), Some(inp)) => match Oracle::build(f, inp) {
            Ok(o) => Some(o),
            Err(e) if run.backend == Backend::User => return Err(e.into()),
            Err(_) => None,
        },
        _ => None,
    };
    let model: Option<SharedModel> = match (run.backend, run.feature, &oracle) {
        (Backend::User, Some(f), Some(o)) => {
            let m = o.shared();
            kvm_values.retain(|(i, _)| !with_model(&m, |m| m.handles(*i)));
            let bitmap = [0u8; 1];
            let msrs = f.msrs();
            if msrs.len() > kvm_bindings::KVM_MSR_FILTER_MAX_RANGES as usize {
                return Err(VmmError::Request(format!(
                    "feature {} has more MSRs than MSR filter ranges",
                    f.name
                )));
            }
            let ranges: Vec<MsrFilterRange<'_>> = msrs
                .iter()
                .map(|m| MsrFilterRange {
                    flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                    base: m.raw(),
                    msr_count: 1,
                    bitmap: &bitmap,
                })
                .collect();
            vm.fd()
                .set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
                .map_err(|source| KvmError::Ioctl {
                    ioctl: "KVM_X86_SET_MSR_FILTER".into(),
                    source,
                })?;
            Some(m)
        }
        _ => None,
    };
    let announced = inputs.as_ref().map_or(&[][..], |i| &i.announced[..]);
    let (on, off) = cpuid_bits(run.feature, announced);
    Ok(Prepared {
        vm,
        ctx: VmContext {
            kvm,
            supported,
            vendor,
            negotiation,
            model,
            scope: run.feature.map_or(Scope::Vcpu, |f| f.scope),
            inputs,
            oracle,
            kvm_values,
            on,
            off,
        },
    })
}

/// A guest `rdmsr` that KVM sent to userspace: the vCPU's model answers, or #GP without one.
pub fn model_rdmsr(model: &mut Option<VcpuModel>, index: MsrIndex) -> Result<u64, Fault> {
    model
        .as_ref()
        .map_or(Err(Fault::Gp), |m| with_model(m, |m| m.read(index)))
}

/// A guest `wrmsr` that KVM sent to userspace.
pub fn model_wrmsr(
    model: &mut Option<VcpuModel>,
    index: MsrIndex,
    value: u64,
) -> Result<(), Fault> {
    model
        .as_ref()
        .map_or(Err(Fault::Gp), |m| with_model(m, |m| m.write(index, value)))
}

impl VmContext {
    /// The user backend's model for one vCPU.
    pub fn vcpu_model(&self) -> Option<VcpuModel> {
        self.model.as_ref().map(|m| model_for_vcpu(m, self.scope))
    }

    /// Per-vCPU state every guest needs: CPUID (APIC ID, feature bits) and the feature's MSRs.
    pub fn setup_vcpu(&self, vcpu: &VcpuFd, cpu: u8, count: u8) -> Result<(), VmmError> {
        vcpu.set_cpuid2(&self.cpuid_for(cpu, count)?)
            .map_err(vcpu_err(cpu, "KVM_SET_CPUID2"))?;
        set_msrs(vcpu, cpu, &self.kvm_values)
    }

    /// The CPUID table of vCPU `cpu` of `count`.
    pub fn cpuid_for(&self, cpu: u8, count: u8) -> Result<kvm_bindings::CpuId, VmmError> {
        cpuid::for_vcpu(&self.supported, cpu, count, &self.on, &self.off).map_err(|error| {
            VmmError::Vcpu {
                cpu,
                what: "CPUID".into(),
                error,
            }
        })
    }
}

/// Creates the TSS area and the in-kernel irqchip. Call it after registering guest memory:
/// measured on this project's CI host, a memory slot added after the irqchip exists costs
/// 5-12 ms (KVM then updates its internal memslots too), before it 0.04 ms.
pub fn create_irqchip(vm: &VmSetup) -> Result<(), VmmError> {
    vm.fd()
        .set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(|source| KvmError::Ioctl {
            ioctl: "KVM_SET_TSS_ADDR".into(),
            source,
        })?;
    vm.fd()
        .create_irq_chip()
        .map_err(|source| KvmError::Ioctl {
            ioctl: "KVM_CREATE_IRQCHIP".into(),
            source,
        })?;
    Ok(())
}
