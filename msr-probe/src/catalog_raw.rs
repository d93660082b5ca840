//! The catalog file's raw shape, shared by the library (which parses catalog files) and by
//! msr-probe's build script (which turns the built-in catalog into Rust data at build time, so
//! no run pays for parsing it). Validation is the library's: see `catalog/mod.rs`.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalog {
    #[serde(default)]
    pub(crate) msr: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntry {
    pub(crate) index: u64,
    pub(crate) name: String,
    pub(crate) vendor: String,
    pub(crate) scope: String,
    #[serde(default)]
    pub(crate) rule: Option<String>,
    #[serde(default)]
    pub(crate) mask: Option<u64>,
    #[serde(default)]
    pub(crate) reason: Option<String>,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default)]
    pub(crate) field: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawField {
    pub(crate) name: String,
    pub(crate) bits: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

/// Parses catalog text into its entries, each with the line its `[[msr]]` table starts on.
pub(crate) fn parse_entries(text: &str) -> Result<Vec<(usize, RawEntry)>, toml::de::Error> {
    let raw: RawCatalog = toml::from_str(text)?;
    let mut out = Vec::with_capacity(raw.msr.len());
    // Line numbers by counting newlines incrementally (entries come in file order).
    let (mut counted_to, mut line) = (0usize, 1usize);
    for spanned in raw.msr {
        let start = spanned.span().start.max(counted_to).min(text.len());
        line += text.as_bytes()[counted_to..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        counted_to = start;
        out.push((line, spanned.into_inner()));
    }
    Ok(out)
}
