//! The rule engine: a feature's registers and rules, as its feature file states them,
//! interpreted for any feature. The `user` backend serves guest MSR accesses from it and every
//! backend's results are predicted by it; no feature has Rust of its own.
//!
//! A rule is `kind` (`write-gp`, `read-gp`, `host-refuse`, or `note` for what the structure
//! itself implies), the `register` it is about and a condition `when` (absent: always). A
//! condition is a small expression over:
//!
//! - `new`, `old`: the value being written and the register's value before the access;
//!   `new.Field`, `old.Field`: one of the register's fields;
//! - `REG`, `REG.Field`: another register's current value or field; `REG.writable`: the mask
//!   of its writable bits (its fields, unless the file says `writable`);
//! - `enabled`: whether the feature is on;
//! - numbers (`0x..` or decimal), `! ~ & | ^ == != && ||` and parentheses, with C's
//!   precedence; a value is true when it is not 0.

use std::fmt;

/// A parsed condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// A number.
    Num(u64),
    /// A name (`new`, `old.LockOut`, `ctl.writable`, `enabled`), resolved at evaluation.
    Name(String),
    /// `!e`
    Not(Box<Expr>),
    /// `~e`
    BitNot(Box<Expr>),
    /// A binary operation.
    Bin(BinOp, Box<Expr>, Box<Expr>),
}

/// A binary operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `|`
    BitOr,
    /// `^`
    BitXor,
    /// `&`
    BitAnd,
}

impl BinOp {
    fn precedence(self) -> u8 {
        match self {
            Self::Or => 1,
            Self::And => 2,
            Self::BitOr => 3,
            Self::BitXor => 4,
            Self::BitAnd => 5,
            Self::Eq | Self::Ne => 6,
        }
    }
}

/// Why a condition does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("condition `{text}`, at byte {at}: {problem}")]
pub struct ExprError {
    /// The condition.
    pub text: String,
    /// Where.
    pub at: usize,
    /// What is wrong.
    pub problem: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Num(u64),
    Name(String),
    Op(&'static str),
    Open,
    Close,
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let err = |at: usize, problem: String| ExprError {
        text: text.to_owned(),
        at,
        problem,
    };
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = text[start..i].replace('_', "");
            let n = if let Some(hex) = word.strip_prefix("0x") {
                u64::from_str_radix(hex, 16)
            } else {
                word.parse()
            }
            .map_err(|_| err(start, format!("`{}` is not a number", &text[start..i])))?;
            out.push((start, Tok::Num(n)));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            out.push((start, Tok::Name(text[start..i].to_owned())));
            continue;
        }
        let two = text.get(i..i + 2).unwrap_or("");
        let op: Option<&'static str> = match two {
            "&&" => Some("&&"),
            "||" => Some("||"),
            "==" => Some("=="),
            "!=" => Some("!="),
            _ => None,
        };
        if let Some(op) = op {
            out.push((start, Tok::Op(op)));
            i += 2;
            continue;
        }
        let tok = match c {
            b'(' => Tok::Open,
            b')' => Tok::Close,
            b'!' => Tok::Op("!"),
            b'~' => Tok::Op("~"),
            b'&' => Tok::Op("&"),
            b'|' => Tok::Op("|"),
            b'^' => Tok::Op("^"),
            _ => return Err(err(start, format!("unexpected `{}`", c as char))),
        };
        out.push((start, tok));
        i += 1;
    }
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(usize, Tok)>,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, problem: &str) -> ExprError {
        ExprError {
            text: self.text.to_owned(),
            at: self.toks.get(self.pos).map_or(self.text.len(), |t| t.0),
            problem: problem.to_owned(),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.1)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        let tok = self
            .peek()
            .cloned()
            .ok_or_else(|| self.err("unexpected end"))?;
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Name(n) => Ok(Expr::Name(n)),
            Tok::Op("!") => Ok(Expr::Not(Box::new(self.unary()?))),
            Tok::Op("~") => Ok(Expr::BitNot(Box::new(self.unary()?))),
            Tok::Open => {
                let e = self.binary(0)?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(self.err("expected `)`"));
                }
                self.pos += 1;
                Ok(e)
            }
            _ => {
                self.pos -= 1;
                Err(self.err("expected a number, a name, `!`, `~` or `(`"))
            }
        }
    }

    fn binary(&mut self, min: u8) -> Result<Expr, ExprError> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) => match *o {
                    "||" => BinOp::Or,
                    "&&" => BinOp::And,
                    "==" => BinOp::Eq,
                    "!=" => BinOp::Ne,
                    "|" => BinOp::BitOr,
                    "^" => BinOp::BitXor,
                    "&" => BinOp::BitAnd,
                    _ => return Err(self.err("unexpected operator")),
                },
                _ => return Ok(lhs),
            };
            if op.precedence() < min {
                return Ok(lhs);
            }
            self.pos += 1;
            let rhs = self.binary(op.precedence() + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
    }
}

impl Expr {
    /// Parses a condition.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let mut p = Parser {
            text,
            toks: lex(text)?,
            pos: 0,
        };
        let e = p.binary(0)?;
        if p.pos != p.toks.len() {
            return Err(p.err("unexpected text after the condition"));
        }
        Ok(e)
    }

    /// Every name the condition uses.
    pub fn names(&self) -> Vec<&str> {
        match self {
            Self::Num(_) => Vec::new(),
            Self::Name(n) => vec![n.as_str()],
            Self::Not(e) | Self::BitNot(e) => e.names(),
            Self::Bin(_, a, b) => {
                let mut v = a.names();
                v.extend(b.names());
                v
            }
        }
    }

    /// Evaluates with `lookup` resolving names (`None`: unknown name, evaluated as 0; names
    /// are checked when the feature file loads).
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<u64>) -> u64 {
        match self {
            Self::Num(n) => *n,
            Self::Name(n) => lookup(n).unwrap_or(0),
            Self::Not(e) => u64::from(e.eval(lookup) == 0),
            Self::BitNot(e) => !e.eval(lookup),
            Self::Bin(op, a, b) => {
                let x = a.eval(lookup);
                // `&&` and `||` short-circuit like C.
                match op {
                    BinOp::And => u64::from(x != 0 && b.eval(lookup) != 0),
                    BinOp::Or => u64::from(x != 0 || b.eval(lookup) != 0),
                    _ => {
                        let y = b.eval(lookup);
                        match op {
                            BinOp::Eq => u64::from(x == y),
                            BinOp::Ne => u64::from(x != y),
                            BinOp::BitOr => x | y,
                            BinOp::BitXor => x ^ y,
                            BinOp::BitAnd => x & y,
                            BinOp::And | BinOp::Or => unreachable!("handled above"),
                        }
                    }
                }
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Num(n) if *n > 9 => write!(f, "{n:#x}"),
            Self::Num(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
            Self::Not(e) => write!(f, "!{e}"),
            Self::BitNot(e) => write!(f, "~{e}"),
            Self::Bin(op, a, b) => {
                let o = match op {
                    BinOp::Or => "||",
                    BinOp::And => "&&",
                    BinOp::Eq => "==",
                    BinOp::Ne => "!=",
                    BinOp::BitOr => "|",
                    BinOp::BitXor => "^",
                    BinOp::BitAnd => "&",
                };
                write!(f, "({a} {o} {b})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str, names: &[(&str, u64)]) -> u64 {
        let e = Expr::parse(text).unwrap();
        e.eval(&|n| names.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
    }

    #[test]
    fn precedence_is_cs() {
        assert_eq!(eval("1 | 2 & 0", &[]), 1);
        assert_eq!(eval("(1 | 2) & 2", &[]), 2);
        assert_eq!(
            eval("new & ~ctl.writable", &[("new", 6), ("ctl.writable", 3)]),
            4
        );
        assert_eq!(
            eval(
                "new.LockOut && new.Enable",
                &[("new.LockOut", 1), ("new.Enable", 1)]
            ),
            1
        );
        assert_eq!(eval("!ctl.Enable", &[("ctl.Enable", 0)]), 1);
        assert_eq!(
            eval("a == 1 || b == 2 && c", &[("a", 0), ("b", 2), ("c", 0)]),
            0
        );
        assert_eq!(
            eval("0x8000_0000 & new", &[("new", 0x8000_0000)]),
            0x8000_0000
        );
        assert_eq!(eval("1 ^ 3 == 2", &[]), 1 ^ u64::from(3 == 2));
    }

    #[test]
    fn bad_conditions_say_where() {
        let e = Expr::parse("new & (old").unwrap_err();
        assert!(e.problem.contains("`)`"), "{e}");
        let e = Expr::parse("new $ 1").unwrap_err();
        assert_eq!(e.at, 4);
        assert!(Expr::parse("0xzz").is_err());
        assert!(Expr::parse("new old").is_err());
        assert!(Expr::parse("").is_err());
    }

    #[test]
    fn names_are_listed() {
        let e = Expr::parse("!(new.LockOut && ctl.Enable) | 3").unwrap();
        assert_eq!(e.names(), vec!["new.LockOut", "ctl.Enable"]);
    }
}
