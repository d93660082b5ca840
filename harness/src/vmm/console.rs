//! The guest console: a bounded sink for everything the guest prints, scanned line by line
//! for the framed report. The guest is untrusted: memory is bounded, long lines are cut, and a
//! guest that prints more than the limit is reported as a flood.

use std::io::Write;
use std::sync::{Arc, Mutex};

use msr_probe::frame::{Decoder, Frame, FrameError, Progress};

/// The longest console line kept whole (longer ones cannot be frame lines anyway).
pub const MAX_LINE: usize = 4096;

/// The console's state.
#[derive(Debug)]
pub struct Console {
    limit: u64,
    kept: Vec<u8>,
    total: u64,
    line: Vec<u8>,
    line_cut: bool,
    decoder: Decoder,
    frame: Option<Frame>,
    error: Option<FrameError>,
    echo: bool,
    window_written: bool,
}

impl Console {
    /// A console keeping at most `limit` bytes; `echo` copies output to stderr.
    pub fn new(limit: u64, echo: bool) -> Self {
        Self {
            limit,
            kept: Vec::new(),
            total: 0,
            line: Vec::new(),
            line_cut: false,
            decoder: Decoder::new(),
            frame: None,
            error: None,
            echo,
            window_written: false,
        }
    }

    /// Takes bytes from the guest.
    pub fn push(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len() as u64);
        let room = self.limit.saturating_sub(self.kept.len() as u64) as usize;
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if self.echo {
            let _ = std::io::stderr().write_all(bytes);
        }
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.line_cut = true;
            }
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let cut = std::mem::replace(&mut self.line_cut, false);
        if self.frame.is_some() || self.error.is_some() {
            return;
        }
        let text = String::from_utf8_lossy(&line);
        if text.contains(msr_probe::frame::WINDOW_WRITTEN) {
            // The report is in the memory window; the VMM reads it after the run.
            self.window_written = true;
            return;
        }
        if cut && text.contains(msr_probe::frame::MARKER) {
            self.error = Some(FrameError::Corrupted {
                seq: "?".into(),
                reason: format!("console line longer than {MAX_LINE} bytes"),
            });
            return;
        }
        match self.decoder.feed(&text) {
            Ok(Progress::Complete(f)) => self.frame = Some(f),
            Ok(_) => {}
            Err(e) => self.error = Some(e),
        }
    }

    /// Whether the report arrived (or failed): nothing more is needed from the guest.
    pub fn settled(&self) -> bool {
        self.frame.is_some() || self.error.is_some() || self.window_written
    }

    /// Whether the guest printed more than the limit.
    pub fn flooded(&self) -> bool {
        self.total > self.limit
    }

    /// Bytes the guest printed in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The output kept, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }

    /// The last `n` lines kept, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The report frame, or why there is none.
    pub fn result(&self) -> Result<Frame, FrameError> {
        if let Some(f) = &self.frame {
            return Ok(f.clone());
        }
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.decoder.in_frame() {
            return Err(FrameError::Truncated {
                stream: "?".into(),
                received: 0,
            });
        }
        Err(FrameError::NoFrame)
    }
}

/// A `Write` handle onto a shared console (the serial device's output).
#[derive(Clone, Debug)]
pub struct ConsoleWriter(pub Arc<Mutex<Console>>);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut c) = self.0.lock() {
            c.push(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msr_probe::frame::encode_document;

    #[test]
    fn finds_the_frame_among_noise_and_bounds_memory() {
        let mut c = Console::new(1 << 20, false);
        c.push(b"[ 0.1] booting\n");
        for l in encode_document("s", "{\"a\":1}").unwrap() {
            c.push(l.as_bytes());
            c.push(b"\r\n");
        }
        assert!(c.settled());
        assert_eq!(c.result().unwrap().document(), "{\"a\":1}");

        let mut flood = Console::new(1000, false);
        for _ in 0..1000 {
            flood.push(&[b'x'; 100]);
        }
        assert!(flood.flooded());
        assert_eq!(flood.text().len(), 1000);
        assert_eq!(flood.result(), Err(FrameError::NoFrame));
        assert!(!flood.settled());
    }

    #[test]
    fn the_window_line_settles_the_console() {
        let mut c = Console::new(1 << 20, false);
        c.push(b"[ 1.0] noise\n");
        assert!(!c.settled());
        c.push(
            format!(
                "{} at 0xa0000 (100 bytes)\n",
                msr_probe::frame::WINDOW_WRITTEN
            )
            .as_bytes(),
        );
        assert!(c.settled());
        assert_eq!(c.result(), Err(FrameError::NoFrame));
    }

    #[test]
    fn corrupted_and_overlong_frames_are_rejected() {
        let mut c = Console::new(1 << 20, false);
        let lines = encode_document("s", "{\"a\":1}").unwrap();
        c.push(lines[0].as_bytes());
        c.push(b"\n");
        c.push(lines[1].replace("\"a\"", "\"b\"").as_bytes());
        c.push(b"\n");
        assert!(matches!(c.result(), Err(FrameError::Corrupted { .. })));
        let mut c = Console::new(1 << 20, false);
        c.push(b"@kvmcap:");
        c.push(&vec![b'z'; MAX_LINE * 2]);
        c.push(b"\n");
        assert!(matches!(c.result(), Err(FrameError::Corrupted { .. })));
    }
}
