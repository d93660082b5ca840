//! Features as data: feature files (their MSRs, fields, capability and cited rules), the rule
//! engine, and the models it builds for the `user` backend and for predictions.

mod load;
pub mod model;
pub mod rules;
pub mod spec;

pub use spec::*;
