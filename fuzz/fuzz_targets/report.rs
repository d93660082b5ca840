#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kvmcap_fuzz::entries::report(data);
});
