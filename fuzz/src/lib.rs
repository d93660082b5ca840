//! kvmcap's fuzz targets: each `fuzz_targets/NAME.rs` calls [`entries`]`::NAME`, a thin layer
//! that turns libFuzzer's bytes into a call of one library entry point. The stable smoke test
//! (`harness/tests/fuzz_smoke.rs`) includes the same `entries.rs` by path.

pub mod entries;
