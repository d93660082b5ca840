//! The values the command line names: backends, output formats, colour and vendor pairs.

use clap::builder::PossibleValue;
use clap::ValueEnum;

use crate::backend::Backend;
use crate::features::Announce;
use crate::report::style::ColorChoice;
use crate::report::Format;

impl ValueEnum for Backend {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::None, Self::User, Self::Kernel]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            Self::None => "none",
            Self::User => "user",
            Self::Kernel => "kernel",
        }))
    }
}

impl ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Text, Self::Json, Self::Ktap]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Text => PossibleValue::new("text").help("the table people read"),
            Self::Json => PossibleValue::new("json").help("the JSON document (docs/schema/)"),
            Self::Ktap => PossibleValue::new("ktap").help("KTAP v1, as kselftest prints it"),
        })
    }
}

impl ValueEnum for ColorChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Auto, Self::Always, Self::Never]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        }))
    }
}

impl ValueEnum for Announce {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Vendor, Self::Intel, Self::Amd, Self::Both]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Vendor => PossibleValue::new("vendor").help("the guest CPU vendor's pair"),
            Self::Intel => PossibleValue::new("intel").help("Intel's pair"),
            Self::Amd => PossibleValue::new("amd").help("AMD's pair"),
            Self::Both => PossibleValue::new("both").help("both pairs (they alias one state)"),
        })
    }
}
