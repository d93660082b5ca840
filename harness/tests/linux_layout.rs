//! The Linux guest's fixed layout agrees with itself: the report window the command line
//! announces is the one the VMM reads, and it sits in the e820-reserved hole above the MP table.

use kvmcap::guests::linux::{BASE_CMDLINE, MAX_VCPUS, REPORT_WINDOW, REPORT_WINDOW_LEN};
use kvmcap::x86::mptable::{self, MPTABLE_START};

#[test]
fn report_window_is_announced_and_clear_of_the_mp_table() {
    let word = format!("KVMCAP_REPORT=mem:{REPORT_WINDOW:#x}:{REPORT_WINDOW_LEN}");
    assert!(
        BASE_CMDLINE.split_whitespace().any(|w| w == word),
        "{BASE_CMDLINE}"
    );
    assert_eq!(
        msr_probe::init::parse_window(&word["KVMCAP_REPORT=".len()..]),
        Some((REPORT_WINDOW, REPORT_WINDOW_LEN))
    );
    assert!(MPTABLE_START + mptable::build(MAX_VCPUS).len() as u64 <= REPORT_WINDOW);
    assert!(
        REPORT_WINDOW + REPORT_WINDOW_LEN as u64 <= 0x10_0000,
        "inside the reserved hole below 1 MiB"
    );
}
