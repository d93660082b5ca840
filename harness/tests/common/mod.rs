//! Test support: requirements that skip with a printed reason, or fail under
//! `KVMCAP_REQUIRE_ALL=1` (CI), so a skip can never hide in CI.
#![allow(dead_code)]

use std::path::PathBuf;

/// Whether every requirement must be present.
pub fn require_all() -> bool {
    std::env::var("KVMCAP_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips (returns false) or fails the test when `ok` is false.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if require_all() {
        panic!("requirement missing: {what} (KVMCAP_REQUIRE_ALL=1)");
    }
    eprintln!("SKIP: requirement missing: {what}");
    false
}

/// `/dev/kvm`, if it can be opened read-write.
pub fn kvm() -> Option<PathBuf> {
    let p = PathBuf::from("/dev/kvm");
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .is_ok();
    require(ok, "/dev/kvm (read-write)").then_some(p)
}

/// `qemu-system-x86_64` on PATH (Debian's qemu-system-x86).
pub fn qemu() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    let ok = found.is_some();
    require(ok, "qemu-system-x86_64 (apt-get install qemu-system-x86)").then_some(found?)
}

/// The JSON Schema of every report (`docs/schema/kvmcap.schema.json`), itself checked against
/// draft 2020-12.
pub fn schema_validator() -> jsonschema::Validator {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema/kvmcap.schema.json");
    let text = std::fs::read_to_string(path).expect("the schema file");
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::meta::validate(&schema).expect("a valid draft 2020-12 schema");
    jsonschema::validator_for(&schema).unwrap()
}

/// Fails with the first errors when `doc` does not match the schema.
pub fn assert_schema(v: &jsonschema::Validator, what: &str, doc: &serde_json::Value) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .take(5)
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the schema: {errors:#?}"
    );
}
