//! Framing: how a guest's report crosses a noisy console intact, or is rejected with a reason.
//!
//! The guest prints its report between kernel messages, so every line of it is marked and
//! checksummed. A frame is a sequence of lines, each
//!
//! ```text
//! @kvmcap:<kind>:<seq>:<crc>:<payload>
//! ```
//!
//! - `kind` is `B` (begin; payload = stream name), `D` (data) or `E` (end; payload = the number
//!   of data lines);
//! - `seq` is decimal, 0 for `B` and counting up by one per line, so `E` has `count + 1`;
//! - `crc` is the CRC-32 (IEEE) of `<kind>:<seq>:<payload>`, as 8 lowercase hex digits;
//! - `payload` is printable text without CR or LF, at most [`MAX_PAYLOAD`] bytes.
//!
//! The marker may follow other text on a console line (a kernel message that did not end its
//! line), but nothing may follow the payload: a line that a kernel message broke fails its
//! checksum and the frame is rejected, never silently accepted. Lines without the marker are
//! ignored. A document is the concatenation of the data payloads.

mod decode;

pub use decode::{decode_all, decode_first, Decoder, Frame, Progress};

/// The marker that starts every frame line.
pub const MARKER: &str = "@kvmcap:";
/// The console line a guest prints after writing its report into the memory window instead
/// (`msr-probe init` with `KVMCAP_REPORT=mem:...`): the VMM may end the run then.
pub const WINDOW_WRITTEN: &str = "msr-probe: report in guest memory";
/// The longest payload a line may carry.
pub const MAX_PAYLOAD: usize = 240;
/// The most data lines a frame may have (bounds the decoder's memory: about 2 MiB).
pub const MAX_LINES: usize = 8192;

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// no `@kvmcap:B` begin line was found in the output
    #[error("no report frame found (no `@kvmcap:B` begin line in the output)")]
    NoFrame,
    /// the frame was cut off: it has a begin line but no end line
    #[error("frame `{stream}` is truncated: {received} data lines and no end line")]
    Truncated {
        /// The stream's name.
        stream: String,
        /// How many data lines arrived.
        received: usize,
    },
    /// a line arrived out of sequence
    #[error("frame `{stream}`: line out of order: expected sequence {expected}, got {got}")]
    Reordered {
        /// The stream's name.
        stream: String,
        /// The sequence number expected.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// a line is damaged
    #[error("frame line {seq}: corrupted: {reason}")]
    Corrupted {
        /// The line's sequence number as written (or `?`).
        seq: String,
        /// What is wrong.
        reason: String,
    },
    /// the end line's count disagrees with the data lines received
    #[error("frame `{stream}`: end line says {claimed} data lines but {received} arrived")]
    CountMismatch {
        /// The stream's name.
        stream: String,
        /// What the end line says.
        claimed: u64,
        /// What arrived.
        received: usize,
    },
    /// a frame exceeds the decoder's bounds
    #[error("frame `{stream}` exceeds {limit}")]
    TooLarge {
        /// The stream's name.
        stream: String,
        /// Which limit.
        limit: String,
    },
    /// a payload cannot be framed
    #[error("cannot frame payload: {0}")]
    Unframeable(String),
}

/// The kind of a frame line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Begin,
    Data,
    End,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Begin => 'B',
            Kind::Data => 'D',
            Kind::End => 'E',
        }
    }
}

pub(crate) fn crc(kind: Kind, seq: u64, payload: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(format!("{}:{}:", kind.letter(), seq).as_bytes());
    h.update(payload.as_bytes());
    h.finalize()
}

fn line(kind: Kind, seq: u64, payload: &str) -> String {
    format!(
        "{MARKER}{}:{seq}:{:08x}:{payload}",
        kind.letter(),
        crc(kind, seq, payload)
    )
}

fn check_payload(p: &str) -> Result<(), FrameError> {
    if p.len() > MAX_PAYLOAD {
        return Err(FrameError::Unframeable(format!(
            "payload of {} bytes exceeds {MAX_PAYLOAD}",
            p.len()
        )));
    }
    if p.chars().any(|c| c.is_control()) {
        return Err(FrameError::Unframeable(
            "payload contains a control character".into(),
        ));
    }
    Ok(())
}

/// Frames `payloads` (each one line) as stream `stream`: begin, data lines, end.
pub fn encode_lines<S: AsRef<str>>(
    stream: &str,
    payloads: &[S],
) -> Result<Vec<String>, FrameError> {
    check_payload(stream)?;
    if payloads.len() > MAX_LINES {
        return Err(FrameError::Unframeable(format!(
            "more than {MAX_LINES} lines"
        )));
    }
    let mut out = Vec::with_capacity(payloads.len() + 2);
    out.push(line(Kind::Begin, 0, stream));
    for (i, p) in payloads.iter().enumerate() {
        check_payload(p.as_ref())?;
        out.push(line(Kind::Data, i as u64 + 1, p.as_ref()));
    }
    let n = payloads.len() as u64;
    out.push(line(Kind::End, n + 1, &n.to_string()));
    Ok(out)
}

/// Frames a whole document (e.g. compact JSON without raw newlines), cut into payload-sized
/// chunks at character boundaries.
pub fn encode_document(stream: &str, document: &str) -> Result<Vec<String>, FrameError> {
    let mut chunks = Vec::new();
    let mut rest = document;
    while !rest.is_empty() {
        let mut cut = rest.len().min(MAX_PAYLOAD);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        chunks.push(head);
        rest = tail;
    }
    encode_lines(stream, &chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> String {
        let mut s = String::from("{\"readings\":[");
        for i in 0..50 {
            s.push_str(&format!(
                "{{\"cpu\":{},\"index\":{},\"v\":\"é\"}},",
                i % 2,
                i
            ));
        }
        s.push_str("]}");
        s
    }

    #[test]
    fn round_trip_through_kernel_noise() {
        let d = doc();
        let lines = encode_document("probe", &d).unwrap();
        assert!(lines.len() > 3);
        let mut out = String::from("[    0.1] Linux version 6.12\nnoise\n");
        for (i, l) in lines.iter().enumerate() {
            if i == 2 {
                out.push_str("[    0.5] random: crng init done\n");
                // A kernel message that did not end its line, before our marker.
                out.push_str("[    0.6] partial message ");
            }
            out.push_str(l);
            out.push_str("\r\n");
        }
        out.push_str("reboot: Restarting system\n");
        let f = decode_first(&out).unwrap();
        assert_eq!(f.stream, "probe");
        assert_eq!(f.document(), d);
    }

    #[test]
    fn empty_document_round_trips() {
        let lines = encode_document("x", "").unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(decode_first(&lines.join("\n")).unwrap().payloads.len(), 0);
    }

    #[test]
    fn truncated_frame_is_rejected() {
        let lines = encode_document("probe", &doc()).unwrap();
        let cut = lines[..lines.len() - 1].join("\n");
        assert!(matches!(
            decode_first(&cut),
            Err(FrameError::Truncated { received, .. }) if received == lines.len() - 2
        ));
        assert_eq!(decode_first("just a kernel\n"), Err(FrameError::NoFrame));
    }

    #[test]
    fn reordered_and_dropped_lines_are_rejected() {
        let mut lines = encode_document("probe", &doc()).unwrap();
        lines.swap(2, 3);
        assert!(matches!(
            decode_first(&lines.join("\n")),
            Err(FrameError::Reordered {
                expected: 2,
                got: 3,
                ..
            })
        ));
        let mut lines = encode_document("probe", &doc()).unwrap();
        lines.remove(2);
        assert!(matches!(
            decode_first(&lines.join("\n")),
            Err(FrameError::Reordered {
                expected: 2,
                got: 3,
                ..
            })
        ));
    }

    #[test]
    fn corrupted_lines_are_rejected() {
        let lines = encode_document("probe", &doc()).unwrap();
        let mut bad = lines.clone();
        bad[1] = bad[1].replacen("cpu", "cpV", 1);
        assert!(matches!(
            decode_first(&bad.join("\n")),
            Err(FrameError::Corrupted { ref reason, .. }) if reason == "checksum mismatch"
        ));
        // A kernel message appended to our line breaks it.
        let mut bad = lines.clone();
        bad[1].push_str("[ 1.0] oops");
        assert!(matches!(
            decode_first(&bad.join("\n")),
            Err(FrameError::Corrupted { .. })
        ));
        let mut bad = lines.clone();
        bad[1] = "@kvmcap:D:1:zz".into();
        assert!(matches!(
            decode_first(&bad.join("\n")),
            Err(FrameError::Corrupted { .. })
        ));
    }

    #[test]
    fn forged_end_count_and_second_begin_are_rejected() {
        let mut lines = encode_lines("s", &["a", "b"]).unwrap();
        let n = lines.len();
        lines[n - 1] = line(Kind::End, 3, "5");
        assert!(matches!(
            decode_first(&lines.join("\n")),
            Err(FrameError::CountMismatch {
                claimed: 5,
                received: 2,
                ..
            })
        ));
        let mut lines = encode_lines("s", &["a", "b"]).unwrap();
        lines.insert(2, line(Kind::Begin, 0, "t"));
        assert!(matches!(
            decode_first(&lines.join("\n")),
            Err(FrameError::Truncated { .. })
        ));
        // Data before any begin line.
        assert!(matches!(
            decode_first(&line(Kind::Data, 1, "x")),
            Err(FrameError::Reordered { .. })
        ));
    }

    #[test]
    fn decode_all_returns_every_frame_and_every_break() {
        let mut out = String::new();
        for (name, doc) in [("a", "1"), ("b", "2")] {
            out.push_str(&encode_document(name, doc).unwrap().join("\n"));
            out.push('\n');
        }
        let mut broken = encode_document("c", "3").unwrap();
        broken.pop();
        out.push_str(&broken.join("\n"));
        let all = decode_all(&out);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].as_ref().unwrap().stream, "a");
        assert_eq!(all[1].as_ref().unwrap().document(), "2");
        assert!(matches!(all[2], Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn encoder_refuses_what_cannot_be_framed() {
        assert!(encode_lines("s", &["a\nb"]).is_err());
        assert!(encode_lines("s", &["x".repeat(MAX_PAYLOAD + 1)]).is_err());
    }
}
