//! Verdicts: a guest reading against what it should be, under the catalog's rule or the
//! feature model's prediction.

use serde::Serialize;

use msr_probe::{Reading, Rule};

/// The verdict for one (cpu, msr).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// The guest saw exactly what it should.
    Match,
    /// The guest saw something else.
    Mismatch {
        /// What it should have seen.
        #[serde(serialize_with = "crate::json::reading")]
        expected: Reading,
    },
    /// The guest got #GP, as it should.
    ExpectedFault,
    /// The guest got #GP where a value was expected.
    UnexpectedFault,
    /// The values differ in a way the catalog's rule allows.
    WithinRule {
        /// The rule.
        rule: String,
    },
    /// Nothing to compare against.
    Unchecked {
        /// Why.
        reason: String,
    },
    /// The guest never got to this read.
    NotRun {
        /// Why.
        reason: String,
    },
}

impl Verdict {
    /// Whether the verdict is as expected (no failure).
    pub fn ok(&self) -> bool {
        !matches!(
            self,
            Self::Mismatch { .. } | Self::UnexpectedFault | Self::NotRun { .. }
        )
    }

    /// A short word for tables.
    pub fn word(&self) -> String {
        match self {
            Self::Match => "match".into(),
            Self::Mismatch { expected } => format!("MISMATCH (expected {expected})"),
            Self::ExpectedFault => "expected #GP".into(),
            Self::UnexpectedFault => "UNEXPECTED #GP".into(),
            Self::WithinRule { rule } => format!("ok ({rule})"),
            Self::Unchecked { reason } => format!("unchecked ({reason})"),
            Self::NotRun { reason } => format!("NOT RUN ({reason})"),
        }
    }
}

/// Compares a guest reading with an exact expectation (a feature model's prediction).
pub fn against_model(guest: &Reading, expected: &Reading) -> Verdict {
    match (guest, expected) {
        (g, e) if g == e => {
            if matches!(g, Reading::Fault(_)) {
                Verdict::ExpectedFault
            } else {
                Verdict::Match
            }
        }
        (Reading::Fault(_), Reading::Value(_)) => Verdict::UnexpectedFault,
        _ => Verdict::Mismatch {
            expected: expected.clone(),
        },
    }
}

/// Compares a guest reading with the host's under the catalog rule.
pub fn against_host(guest: &Reading, host: Option<&Reading>, rule: &Rule) -> Verdict {
    if let Rule::Ignore { reason } = rule {
        return Verdict::Unchecked {
            reason: reason.clone(),
        };
    }
    let Some(host) = host else {
        return Verdict::Unchecked {
            reason: "no host value".into(),
        };
    };
    match (guest, host) {
        (Reading::Fault(_), Reading::Fault(_)) => Verdict::ExpectedFault,
        (Reading::Fault(_), Reading::Value(_)) => Verdict::UnexpectedFault,
        (Reading::Value(g), Reading::Value(h)) => match rule {
            Rule::Equal if g == h => Verdict::Match,
            Rule::Mask { mask } if g & mask == h & mask => Verdict::WithinRule {
                rule: format!("mask {mask:#x}"),
            },
            Rule::Monotonic if g >= h => Verdict::WithinRule {
                rule: "monotonic".into(),
            },
            Rule::PerCpu => Verdict::WithinRule {
                rule: "per-cpu".into(),
            },
            _ => Verdict::Mismatch {
                expected: host.clone(),
            },
        },
        (Reading::Value(_), Reading::Fault(_)) => Verdict::Mismatch {
            expected: host.clone(),
        },
        (_, Reading::Unavailable(u)) => Verdict::Unchecked {
            reason: format!("host: {u}"),
        },
        (Reading::Unavailable(u), _) => Verdict::NotRun {
            reason: u.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::Fault;

    const GP: Reading = Reading::Fault(Fault::Gp);

    #[test]
    fn rules() {
        let v = |x| Reading::Value(x);
        assert_eq!(
            against_host(&v(5), Some(&v(5)), &Rule::Equal),
            Verdict::Match
        );
        assert!(!against_host(&v(5), Some(&v(6)), &Rule::Equal).ok());
        assert!(against_host(&v(0x105), Some(&v(0x5)), &Rule::Mask { mask: 0xff }).ok());
        assert!(!against_host(&v(0x106), Some(&v(0x5)), &Rule::Mask { mask: 0xff }).ok());
        assert!(against_host(&v(10), Some(&v(5)), &Rule::Monotonic).ok());
        assert!(!against_host(&v(4), Some(&v(5)), &Rule::Monotonic).ok());
        assert!(against_host(&v(1), Some(&v(2)), &Rule::PerCpu).ok());
        assert_eq!(
            against_host(&GP, Some(&GP), &Rule::Equal),
            Verdict::ExpectedFault
        );
        assert_eq!(
            against_host(&GP, Some(&v(1)), &Rule::Equal),
            Verdict::UnexpectedFault
        );
        assert!(matches!(
            against_host(&v(1), None, &Rule::Equal),
            Verdict::Unchecked { .. }
        ));
        let ign = Rule::Ignore { reason: "r".into() };
        assert!(matches!(
            against_host(&v(1), Some(&v(2)), &ign),
            Verdict::Unchecked { .. }
        ));
        assert_eq!(against_model(&GP, &GP), Verdict::ExpectedFault);
        assert_eq!(against_model(&v(3), &v(3)), Verdict::Match);
        assert_eq!(against_model(&GP, &v(3)), Verdict::UnexpectedFault);
        assert!(!against_model(&v(3), &GP).ok());
    }
}
