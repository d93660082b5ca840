//! Booting a Linux guest: bzImage through linux-loader, boot parameters with an e820 map and
//! the command line, the initramfs, an MP table so the guest finds every vCPU, a 16550 serial
//! console (vm-superio) on 0x3f8 whose IRQ 4 goes through the in-kernel irqchip, and a PIT.
//!
//! The run ends as soon as the guest's framed report is complete (or broken), when the guest
//! reboots (`reboot=t`: a triple fault, KVM_EXIT_SHUTDOWN), floods the console, or at the
//! deadline.

use std::fs::File;
use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_pit_config;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::{bzimage::BzImage, load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::kvm::KvmError;
use crate::vmm::console::{Console, ConsoleWriter};
use crate::vmm::error::{check_vcpus, Limits, VmmError};
use crate::vmm::machine::{
    create_irqchip, model_rdmsr, model_wrmsr, prepare, FeatureRun, VcpuModel,
};
use crate::vmm::vcpu::{run_vcpus, ExitHandler, Flow, VcpuEnd};
use crate::x86::layout::{BOOT_STACK, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, ZERO_PAGE};
use crate::x86::{long_mode, mptable};
use msr_probe::frame::{Frame, FrameError};
use msr_probe::{Fault, MsrIndex};

const SERIAL_BASE: u16 = 0x3f8;
const SERIAL_IRQ: u32 = 4;
/// The most vCPUs a Linux guest gets here.
pub const MAX_VCPUS: u8 = 32;

/// Where the guest's `/init` (msr-probe) writes its framed report: guest physical memory the
/// e820 map reserves, read by the VMM after the run. No exit per character, unlike the console
/// (in the nested lab every console character costs an exit).
pub const REPORT_WINDOW: u64 = 0xa_0000;
/// The window's size.
pub const REPORT_WINDOW_LEN: usize = 0x1_0000;

/// The command line every guest gets before the caller's words: serial console, a triple
/// fault for reboot (the VMM sees KVM_EXIT_SHUTDOWN), no panic wait, and a quiet kernel
/// (every console character is an exit; in a nested lab, a costly one), and the report
/// window for msr-probe.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=t panic=-1 loglevel=1 8250.nr_uarts=1 i8042.noaux i8042.nokbd KVMCAP_REPORT=mem:0xa0000:65536";

/// What to boot.
pub struct LinuxRequest<'a> {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// The bzImage.
    pub kernel: PathBuf,
    /// The initramfs (newc cpio, optionally compressed as the kernel supports).
    pub initramfs: PathBuf,
    /// Words appended to [`BASE_CMDLINE`].
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// The feature and backend.
    pub run: FeatureRun<'a>,
    /// Limits.
    pub limits: Limits,
    /// Console bytes kept (more is a flood).
    pub console_limit: u64,
    /// Copy the console to stderr.
    pub echo_console: bool,
}

/// What a Linux run produced.
#[derive(Debug)]
pub struct LinuxOutcome {
    /// Negotiation steps.
    pub negotiation: Vec<crate::negotiate::NegotiationStep>,
    /// The guest's CPU vendor.
    pub vendor: crate::x86::cpuid::CpuVendor,
    /// Each vCPU's end.
    pub ends: Vec<VcpuEnd>,
    /// Each vCPU's exits by reason and time in and out of `KVM_RUN`.
    pub stats: Vec<crate::vmm::stats::ExitStats>,
    /// The report frame, or why there is none.
    pub frame: Result<Frame, FrameError>,
    /// Where the frame came from: `memory window` or `console`.
    pub report_channel: &'static str,
    /// The last console lines.
    pub console_tail: String,
    /// Console bytes printed.
    pub console_bytes: u64,
    /// Whether the guest flooded the console.
    pub flooded: bool,
    /// The oracle's starting state.
    pub model_inputs: Option<crate::features::model::ModelInputs>,
    /// The feature model in the starting state (copies judge the run).
    pub oracle: Option<crate::features::model::Oracle>,
    /// VM creation to the end.
    pub elapsed: Duration,
}

struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

type SharedSerial = Arc<Mutex<Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>>>;

struct LinuxHandler {
    serial: SharedSerial,
    console: Arc<Mutex<Console>>,
    model: Option<VcpuModel>,
}

impl LinuxHandler {
    fn after_console(&self) -> Flow {
        match self.console.lock() {
            Ok(c) if c.settled() => Flow::EndVm(VcpuEnd::Reported),
            Ok(c) if c.flooded() => Flow::EndVm(VcpuEnd::ConsoleFlood { bytes: c.total() }),
            _ => Flow::Continue,
        }
    }
}

impl ExitHandler for LinuxHandler {
    fn io_out(&mut self, port: u16, data: &[u8]) -> Flow {
        match (port, data) {
            (SERIAL_BASE..=0x3ff, [b, ..]) => {
                if let Ok(mut s) = self.serial.lock() {
                    let _ = s.write((port - SERIAL_BASE) as u8, *b);
                }
                self.after_console()
            }
            // The keyboard controller's reset line.
            (0x64, [0xfe, ..]) => Flow::EndVm(VcpuEnd::Reset),
            // Everything else (POST codes, CMOS, PIC probing) is ignored.
            _ => Flow::Continue,
        }
    }
    fn io_in(&mut self, port: u16, data: &mut [u8]) -> Flow {
        match port {
            SERIAL_BASE..=0x3ff if !data.is_empty() => {
                if let Ok(mut s) = self.serial.lock() {
                    data[0] = s.read((port - SERIAL_BASE) as u8);
                }
            }
            _ => data.fill(0xff),
        }
        Flow::Continue
    }
    fn rdmsr(&mut self, index: MsrIndex) -> Result<u64, Fault> {
        model_rdmsr(&mut self.model, index)
    }
    fn wrmsr(&mut self, index: MsrIndex, value: u64) -> Result<(), Fault> {
        model_wrmsr(&mut self.model, index, value)
    }
}

fn image_err(path: &std::path::Path, problem: impl ToString) -> VmmError {
    VmmError::Image {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn mem_err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Kvm(KvmError::Memory(e.to_string()))
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in a vCPU's local APIC, as firmware would.
fn set_lint(vcpu: &kvm_ioctls::VcpuFd, cpu: u8) -> Result<(), VmmError> {
    let err = |e: vmm_sys_util::errno::Error| VmmError::Vcpu {
        cpu,
        what: "KVM_GET/SET_LAPIC".into(),
        error: e.to_string(),
    };
    let mut lapic = vcpu.get_lapic().map_err(err)?;
    for (offset, mode) in [(0x350usize, 0x700u32), (0x360, 0x400)] {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = lapic.regs[offset + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | mode;
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *x as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(err)
}

/// Where [`load_kernel`] put the guest's images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The 64-bit entry point: the boot vCPU's RIP.
    pub entry: u64,
    /// Where the initramfs starts.
    pub initrd_addr: u64,
}

/// Loads a bzImage and its initramfs into `mem` (one region from address 0) and writes what a
/// 64-bit boot needs: the boot parameters (the image's setup header, an e820 map, the command
/// line [`BASE_CMDLINE`] + `cmdline`), the MP table for `vcpus` vCPUs and the boot page
/// tables. Everything the image says is untrusted. `kernel_path` and `initrd_path` name the
/// images in errors.
pub fn load_kernel<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    kernel: &mut F,
    kernel_path: &Path,
    initrd: &[u8],
    initrd_path: &Path,
    cmdline: &str,
    vcpus: u8,
) -> Result<LoadedKernel, VmmError> {
    let mem_size = mem.last_addr().raw_value().saturating_add(1);
    if mem_size <= HIMEM_START {
        return Err(VmmError::Request(format!(
            "guest memory of {mem_size} bytes ends below the kernel's load address"
        )));
    }
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(HIMEM_START)),
        kernel,
        Some(GuestAddress(HIMEM_START)),
    )
    .map_err(|e| image_err(kernel_path, format!("not a loadable bzImage: {e}")))?;
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448;
    let kernel_end = loaded.kernel_end; // linux-loader gives the absolute end

    // The initramfs goes as high as the kernel allows.
    let max = u64::from(params.hdr.initrd_addr_max).min(mem_size - 1);
    let initrd_len = initrd.len() as u64;
    let initrd_addr = (max + 1).saturating_sub(initrd_len) & !0xfff;
    if initrd.is_empty() || initrd_addr <= kernel_end {
        return Err(image_err(
            initrd_path,
            format!(
                "{} bytes do not fit in {} MiB of guest memory above the kernel",
                initrd_len,
                mem_size >> 20
            ),
        ));
    }
    mem.write_slice(initrd, GuestAddress(initrd_addr))
        .map_err(mem_err)?;
    params.hdr.ramdisk_image = initrd_addr as u32;
    params.hdr.ramdisk_size = initrd_len as u32;

    let mut line = Cmdline::new(CMDLINE_MAX).map_err(|e| VmmError::Request(e.to_string()))?;
    line.insert_str(format!("{BASE_CMDLINE} {cmdline}").trim())
        .map_err(|e| VmmError::Request(format!("kernel command line: {e}")))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &line)
        .map_err(|e| VmmError::Request(format!("kernel command line: {e}")))?;
    let cmdline_len = line.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0);
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;

    let e820 = [
        (0u64, mptable::MPTABLE_START, 1u32),
        (
            mptable::MPTABLE_START,
            HIMEM_START - mptable::MPTABLE_START,
            2,
        ),
        (HIMEM_START, mem_size - HIMEM_START, 1),
    ];
    for (i, (addr, size, kind)) in e820.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *kind;
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| VmmError::Internal(format!("boot parameters: {e}")))?;
    mptable::write(mem, vcpus).map_err(mem_err)?;
    long_mode::write_tables(mem).map_err(mem_err)?;
    Ok(LoadedKernel {
        entry: loaded.kernel_load.0 + 0x200,
        initrd_addr,
    })
}

/// The fuzzing entry point for kernel image loading: [`load_kernel`] of `bytes` as a bzImage
/// (with a small initramfs) into 64 MiB of guest memory. Returns the entry point, or why the
/// image was refused; it must never panic, whatever `bytes` hold.
pub fn fuzz_load_bzimage(bytes: &[u8]) -> Result<u64, String> {
    const FUZZ_MEM: usize = 64 << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), FUZZ_MEM)])
        .map_err(|e| e.to_string())?;
    load_kernel(
        &mem,
        &mut Cursor::new(bytes),
        Path::new("fuzz.bzImage"),
        &[0x5a; 4096],
        Path::new("fuzz.initramfs"),
        "KVMCAP_STREAM=fuzz",
        2,
    )
    .map(|k| k.entry)
    .map_err(|e| e.to_string())
}

/// The console limit [`fuzz_io_exits`] runs with.
pub const FUZZ_CONSOLE_LIMIT: u64 = 64 << 10;

/// The fuzzing entry point for the Linux guest's port I/O: builds the serial port, console
/// (limit [`FUZZ_CONSOLE_LIMIT`]) and exit handler exactly as [`run_linux`] does (the IRQ
/// trigger an unregistered eventfd), then feeds each `(port, write, data)` exit to `io_out`
/// (`write`) or `io_in`, as a vCPU's run loop would. Returns the console bytes the guest
/// printed and whether the console settled (report complete or broken). Must never panic.
pub fn fuzz_io_exits(exits: &[(u16, bool, Vec<u8>)]) -> (u64, bool) {
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return (0, false);
    };
    let console = Arc::new(Mutex::new(Console::new(FUZZ_CONSOLE_LIMIT, false)));
    let serial: SharedSerial = Arc::new(Mutex::new(Serial::new(
        IrqTrigger(irq),
        ConsoleWriter(console.clone()),
    )));
    let mut handler = LinuxHandler {
        serial,
        console: console.clone(),
        model: None,
    };
    for (port, write, data) in exits {
        if *write {
            handler.io_out(*port, data);
        } else {
            let mut buf = data.clone();
            handler.io_in(*port, &mut buf);
        }
    }
    let seen = match console.lock() {
        Ok(c) => (c.total(), c.settled()),
        Err(_) => (0, false),
    };
    seen
}

/// Boots the guest and runs it to its end.
pub fn run_linux(req: &LinuxRequest<'_>) -> Result<LinuxOutcome, VmmError> {
    let start = Instant::now();
    let count = check_vcpus(usize::from(req.vcpus), &req.limits, MAX_VCPUS)?;
    if !(64..=65536).contains(&req.mem_mib) {
        return Err(VmmError::Request(format!(
            "guest memory {} MiB: expected 64..=65536",
            req.mem_mib
        )));
    }
    let mut kernel = File::open(&req.kernel).map_err(|e| image_err(&req.kernel, e))?;
    let initrd = std::fs::read(&req.initramfs).map_err(|e| image_err(&req.initramfs, e))?;
    let prep = prepare(&req.kvm_path, req.run)?;
    let (vm, ctx) = (prep.vm, prep.ctx);
    let mem_size = u64::from(req.mem_mib) << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
        .map_err(mem_err)?;
    vm.register_memory(&mem)?;
    create_irqchip(&vm)?;

    let loaded = load_kernel(
        &mem,
        &mut kernel,
        &req.kernel,
        &initrd,
        &req.initramfs,
        &req.cmdline,
        count,
    )?;

    vm.fd()
        .create_pit2(kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(|source| KvmError::Ioctl {
            ioctl: "KVM_CREATE_PIT2".into(),
            source,
        })?;
    let irq =
        EventFd::new(EFD_NONBLOCK).map_err(|e| VmmError::Internal(format!("eventfd: {e}")))?;
    vm.fd()
        .register_irqfd(&irq, SERIAL_IRQ)
        .map_err(|source| KvmError::Ioctl {
            ioctl: "KVM_IRQFD(serial)".into(),
            source,
        })?;
    let console = Arc::new(Mutex::new(Console::new(
        req.console_limit,
        req.echo_console,
    )));
    let serial: SharedSerial = Arc::new(Mutex::new(Serial::new(
        IrqTrigger(irq),
        ConsoleWriter(console.clone()),
    )));

    let (vm_ready, vcpus) = vm.create_vcpus(count)?;
    let mut runnable = Vec::with_capacity(usize::from(count));
    for (cpu, vcpu) in vcpus.into_iter().enumerate() {
        let cpu = cpu as u8;
        ctx.setup_vcpu(&vcpu, cpu, count)?;
        set_lint(&vcpu, cpu)?;
        if cpu == 0 {
            let verr = |what: &'static str| {
                move |e: vmm_sys_util::errno::Error| VmmError::Vcpu {
                    cpu,
                    what: what.into(),
                    error: e.to_string(),
                }
            };
            let sregs = vcpu.get_sregs().map_err(verr("KVM_GET_SREGS"))?;
            vcpu.set_sregs(&long_mode::long_mode_sregs(sregs))
                .map_err(verr("KVM_SET_SREGS"))?;
            vcpu.set_regs(&kvm_bindings::kvm_regs {
                rip: loaded.entry,
                rsi: ZERO_PAGE,
                rsp: BOOT_STACK,
                rbp: BOOT_STACK,
                rflags: 0x2,
                ..Default::default()
            })
            .map_err(verr("KVM_SET_REGS"))?;
        }
        runnable.push((
            vcpu,
            LinuxHandler {
                serial: serial.clone(),
                console: console.clone(),
                model: ctx.vcpu_model(),
            },
        ));
    }
    let (summary, handlers) = run_vcpus(runnable, req.limits.deadline);
    drop(handlers);
    drop(vm_ready);
    let c = console
        .lock()
        .map_err(|_| VmmError::Internal("console lock poisoned".into()))?;
    // The report window, if the guest used it (untrusted: bounded, text up to the first NUL).
    let mut window = vec![0u8; REPORT_WINDOW_LEN];
    let from_window = mem
        .read_slice(&mut window, GuestAddress(REPORT_WINDOW))
        .ok()
        .and_then(|()| {
            let end = window.iter().position(|b| *b == 0).unwrap_or(window.len());
            let text = String::from_utf8_lossy(&window[..end]);
            text.contains(msr_probe::frame::MARKER)
                .then(|| msr_probe::frame::decode_first(&text))
        });
    Ok(LinuxOutcome {
        negotiation: ctx.negotiation,
        vendor: ctx.vendor,
        ends: summary.ends,
        stats: summary.stats,
        report_channel: if from_window.is_some() {
            "memory window"
        } else {
            "console"
        },
        frame: match from_window {
            Some(r) => r,
            None => c.result(),
        },
        console_tail: c.tail(20),
        console_bytes: c.total(),
        flooded: c.flooded(),
        model_inputs: ctx.inputs,
        oracle: ctx.oracle,
        elapsed: start.elapsed(),
    })
}
