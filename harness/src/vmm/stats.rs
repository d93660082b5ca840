//! Exit accounting: per vCPU, the exits by reason and the time spent inside `KVM_RUN` versus
//! in the VMM between two `KVM_RUN`s (handling exits). Two clock reads per exit.

use std::time::Duration;

use serde::{Serialize, Serializer};

/// Exits of one vCPU, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExitCounts {
    /// `KVM_EXIT_IO`, `OUT`.
    pub io_out: u64,
    /// `KVM_EXIT_IO`, `IN`.
    pub io_in: u64,
    /// `KVM_EXIT_MMIO` reads.
    pub mmio_read: u64,
    /// `KVM_EXIT_MMIO` writes.
    pub mmio_write: u64,
    /// `KVM_EXIT_X86_RDMSR` (MSR reads KVM sent to userspace).
    pub msr_read: u64,
    /// `KVM_EXIT_X86_WRMSR`.
    pub msr_write: u64,
    /// `KVM_EXIT_HLT`.
    pub hlt: u64,
    /// `KVM_EXIT_SHUTDOWN`.
    pub shutdown: u64,
    /// `KVM_EXIT_FAIL_ENTRY`.
    pub fail_entry: u64,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    pub internal_error: u64,
    /// `KVM_EXIT_SYSTEM_EVENT`.
    pub system_event: u64,
    /// `KVM_EXIT_INTR`.
    pub intr: u64,
    /// `KVM_RUN` returned `EINTR`/`EAGAIN` (a kick or a stray signal).
    pub signal: u64,
    /// `KVM_RUN` failed.
    pub error: u64,
    /// Any other exit.
    pub other: u64,
}

impl ExitCounts {
    /// Every exit (every return from `KVM_RUN`).
    pub fn total(&self) -> u64 {
        self.io_out
            + self.io_in
            + self.mmio_read
            + self.mmio_write
            + self.msr_read
            + self.msr_write
            + self.hlt
            + self.shutdown
            + self.fail_entry
            + self.internal_error
            + self.system_event
            + self.intr
            + self.signal
            + self.error
            + self.other
    }

    /// Adds `o`'s counts to these.
    pub fn add(&mut self, o: &ExitCounts) {
        self.io_out += o.io_out;
        self.io_in += o.io_in;
        self.mmio_read += o.mmio_read;
        self.mmio_write += o.mmio_write;
        self.msr_read += o.msr_read;
        self.msr_write += o.msr_write;
        self.hlt += o.hlt;
        self.shutdown += o.shutdown;
        self.fail_entry += o.fail_entry;
        self.internal_error += o.internal_error;
        self.system_event += o.system_event;
        self.intr += o.intr;
        self.signal += o.signal;
        self.error += o.error;
        self.other += o.other;
    }
}

fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// One vCPU's exit accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExitStats {
    /// Every exit, counted by reason.
    pub exits: ExitCounts,
    /// Total exits (the sum of `exits`).
    #[serde(rename = "exit_total")]
    pub total: u64,
    /// Time inside `KVM_RUN` (the guest running, or KVM handling exits in the kernel).
    #[serde(rename = "kvm_run_ms", serialize_with = "ms")]
    pub in_kvm_run: Duration,
    /// Time in the VMM from each return of `KVM_RUN` to the next entry (handling exits).
    #[serde(rename = "vmm_ms", serialize_with = "ms")]
    pub in_vmm: Duration,
}

impl ExitStats {
    /// Adds `o` to these (several runs of one vCPU, e.g. the cases of a scenario).
    pub fn add(&mut self, o: &ExitStats) {
        self.exits.add(&o.exits);
        self.total += o.total;
        self.in_kvm_run += o.in_kvm_run;
        self.in_vmm += o.in_vmm;
    }

    /// Fixes `total` from the counts.
    pub fn seal(mut self) -> Self {
        self.total = self.exits.total();
        self
    }
}

/// Adds `more` to `into` vCPU by vCPU (growing `into` as needed).
pub fn accumulate(into: &mut Vec<ExitStats>, more: &[ExitStats]) {
    if into.len() < more.len() {
        into.resize(more.len(), ExitStats::default());
    }
    for (a, b) in into.iter_mut().zip(more) {
        a.add(b);
    }
}

/// The `--stats` table: one row per vCPU, then the total.
pub fn stats_table(stats: &[ExitStats]) -> String {
    let mut out = format!(
        "{:<5} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>7} {:>12} {:>10}\n",
        "VCPU",
        "EXITS",
        "IO-OUT",
        "IO-IN",
        "MMIO",
        "RDMSR",
        "WRMSR",
        "HLT",
        "OTHER",
        "KVM_RUN ms",
        "VMM ms"
    );
    let row = |name: String, s: &ExitStats| {
        let e = &s.exits;
        let other = e.total()
            - e.io_out
            - e.io_in
            - e.mmio_read
            - e.mmio_write
            - e.msr_read
            - e.msr_write
            - e.hlt;
        format!(
            "{:<5} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>7} {:>12.3} {:>10.3}\n",
            name,
            e.total(),
            e.io_out,
            e.io_in,
            e.mmio_read + e.mmio_write,
            e.msr_read,
            e.msr_write,
            e.hlt,
            other,
            s.in_kvm_run.as_secs_f64() * 1000.0,
            s.in_vmm.as_secs_f64() * 1000.0
        )
    };
    let mut all = ExitStats::default();
    for (cpu, s) in stats.iter().enumerate() {
        out.push_str(&row(cpu.to_string(), s));
        all.add(s);
    }
    if stats.len() > 1 {
        out.push_str(&row("all".into(), &all));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_and_the_table_shows_them() {
        let mut a = ExitStats::default();
        a.exits.io_out = 3;
        a.exits.msr_read = 2;
        a.exits.shutdown = 1;
        a.in_kvm_run = Duration::from_micros(1500);
        a.in_vmm = Duration::from_micros(250);
        let a = a.seal();
        assert_eq!(a.total, 6);
        let mut acc = Vec::new();
        accumulate(&mut acc, &[a, a]);
        accumulate(&mut acc, &[a]);
        assert_eq!(acc[0].total, 12);
        assert_eq!(acc[1].exits.io_out, 3);
        let t = stats_table(&acc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1]
            .split_whitespace()
            .eq(["0", "12", "6", "0", "0", "4", "0", "0", "2", "3.000", "0.500"]));
        assert!(lines[3].starts_with("all"));
        let v = serde_json::to_value(a).unwrap();
        assert_eq!(v["exit_total"], 6);
        assert_eq!(v["kvm_run_ms"], 1.5);
        assert_eq!(v["exits"]["msr_read"], 2);
    }
}
