//! Decoding: console output in, verified frames (or the reason a frame was rejected) out.

use std::fmt;

use super::{crc, FrameError, Kind, MARKER, MAX_LINES, MAX_PAYLOAD};

/// A complete, verified frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The stream's name (the begin line's payload).
    pub stream: String,
    /// The data payloads, in order.
    pub payloads: Vec<String>,
}

impl Frame {
    /// The document the payloads carry.
    pub fn document(&self) -> String {
        self.payloads.concat()
    }
}

/// What one line of console output did to the decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not a frame line (kernel noise); ignored.
    Ignored,
    /// A frame line was accepted; the frame is not complete yet.
    Accepted,
    /// The frame is complete.
    Complete(Frame),
}

/// An incremental decoder: feed it console lines as they arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    current: Option<Frame>,
}

struct Parsed<'a> {
    kind: Kind,
    seq: u64,
    payload: &'a str,
}

fn parse_line(text: &str) -> Option<Result<Parsed<'_>, FrameError>> {
    let at = text.find(MARKER)?;
    let rest = text[at + MARKER.len()..].trim_end_matches(['\r', '\n']);
    let corrupt = |seq: &str, reason: &str| {
        Some(Err(FrameError::Corrupted {
            seq: seq.to_owned(),
            reason: reason.to_owned(),
        }))
    };
    let mut parts = rest.splitn(4, ':');
    let (Some(k), Some(seq_s), Some(crc_s), Some(payload)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return corrupt("?", "fewer than four `:`-separated parts");
    };
    let kind = match k {
        "B" => Kind::Begin,
        "D" => Kind::Data,
        "E" => Kind::End,
        _ => return corrupt("?", "unknown line kind"),
    };
    let Ok(seq) = seq_s.parse::<u64>() else {
        return corrupt(seq_s, "sequence is not a number");
    };
    if crc_s.len() != 8 {
        return corrupt(seq_s, "checksum is not 8 hex digits");
    }
    let Ok(want) = u32::from_str_radix(crc_s, 16) else {
        return corrupt(seq_s, "checksum is not 8 hex digits");
    };
    if payload.len() > MAX_PAYLOAD {
        return corrupt(seq_s, "payload too long");
    }
    if crc(kind, seq, payload) != want {
        return corrupt(seq_s, "checksum mismatch");
    }
    Some(Ok(Parsed { kind, seq, payload }))
}

impl Decoder {
    /// A decoder waiting for a begin line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a frame has begun and not yet ended.
    pub fn in_frame(&self) -> bool {
        self.current.is_some()
    }

    /// Feeds one console line.
    pub fn feed(&mut self, text: &str) -> Result<Progress, FrameError> {
        let parsed = match parse_line(text) {
            None => return Ok(Progress::Ignored),
            Some(p) => p?,
        };
        match (parsed.kind, self.current.as_mut()) {
            (Kind::Begin, None) => {
                if parsed.seq != 0 {
                    return Err(FrameError::Reordered {
                        stream: parsed.payload.to_owned(),
                        expected: 0,
                        got: parsed.seq,
                    });
                }
                self.current = Some(Frame {
                    stream: parsed.payload.to_owned(),
                    payloads: Vec::new(),
                });
                Ok(Progress::Accepted)
            }
            (Kind::Begin, Some(f)) => Err(FrameError::Truncated {
                stream: f.stream.clone(),
                received: f.payloads.len(),
            }),
            (_, None) => Err(FrameError::Reordered {
                stream: "?".into(),
                expected: 0,
                got: parsed.seq,
            }),
            (kind, Some(f)) => {
                let expected = f.payloads.len() as u64 + 1;
                if parsed.seq != expected {
                    return Err(FrameError::Reordered {
                        stream: f.stream.clone(),
                        expected,
                        got: parsed.seq,
                    });
                }
                if kind == Kind::Data {
                    if f.payloads.len() >= MAX_LINES {
                        return Err(FrameError::TooLarge {
                            stream: f.stream.clone(),
                            limit: format!("{MAX_LINES} lines"),
                        });
                    }
                    f.payloads.push(parsed.payload.to_owned());
                    return Ok(Progress::Accepted);
                }
                let claimed: u64 = parsed.payload.parse().map_err(|_| FrameError::Corrupted {
                    seq: parsed.seq.to_string(),
                    reason: "end line's count is not a number".into(),
                })?;
                if claimed != f.payloads.len() as u64 {
                    return Err(FrameError::CountMismatch {
                        stream: f.stream.clone(),
                        claimed,
                        received: f.payloads.len(),
                    });
                }
                let done = self.current.take().ok_or(FrameError::NoFrame)?;
                Ok(Progress::Complete(done))
            }
        }
    }

    /// Says the output has ended: an open frame is truncated.
    pub fn finish(self) -> Result<(), FrameError> {
        match self.current {
            Some(f) => Err(FrameError::Truncated {
                stream: f.stream,
                received: f.payloads.len(),
            }),
            None => Ok(()),
        }
    }
}

/// Decodes the first complete frame in `output`, skipping everything that is not a frame line.
pub fn decode_first(output: &str) -> Result<Frame, FrameError> {
    let mut d = Decoder::new();
    for l in output.lines() {
        if let Progress::Complete(f) = d.feed(l)? {
            return Ok(f);
        }
    }
    d.finish()?;
    Err(FrameError::NoFrame)
}

/// Decodes every frame in `output`, in order: each complete frame, or the reason one broke
/// (after a broken frame the decoder starts afresh at the next begin line).
pub fn decode_all(output: &str) -> Vec<Result<Frame, FrameError>> {
    let mut out = Vec::new();
    let mut d = Decoder::new();
    for l in output.lines() {
        match d.feed(l) {
            Ok(Progress::Complete(f)) => out.push(Ok(f)),
            Ok(_) => {}
            Err(e) => {
                out.push(Err(e));
                d = Decoder::new();
            }
        }
    }
    if let Err(e) = d.finish() {
        out.push(Err(e));
    }
    out
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame `{}` ({} lines)", self.stream, self.payloads.len())
    }
}
