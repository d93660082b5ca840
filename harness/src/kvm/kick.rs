//! Kicking a vCPU thread out of `KVM_RUN`: a signal whose handler sets the thread's
//! `kvm_run.immediate_exit`, so a kick that lands just before `KVM_RUN` is not lost.

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used for kicks.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only a thread-local read and one volatile byte store: async-signal-safe.
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: `run` was stored by `arm` on this very thread from the live `kvm_run`
            // mapping of the vCPU this thread owns, and `disarm` clears it before that vCPU
            // is dropped; `immediate_exit` is a plain u8 KVM reads on the next KVM_RUN.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install() -> Result<(), vmm_sys_util::errno::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| result = register_signal_handler(kick_signal(), on_kick));
    result
}

/// Makes kicks of the calling thread land on `vcpu`. Call on the vCPU's own thread before its
/// run loop; call [`disarm`] on the same thread before dropping the vCPU.
pub fn arm(vcpu: &mut VcpuFd) {
    let run: *mut kvm_run = vcpu.get_kvm_run();
    KVM_RUN.with(|p| p.set(run));
}

/// Stops kicks of the calling thread from touching its vCPU.
pub fn disarm() {
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
}
