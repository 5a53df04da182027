//! The agent's serial-console protocol, read by every runner before any
//! vsock stream exists: one line when the agent starts, one as its last line,
//! and (console transport) the kcov-wire byte stream as marker lines.
//!
//! # Stream lines
//!
//! With `testbed.transport=console` the agent writes its kcov-wire stream (the exact bytes it
//! would send over AF_VSOCK) onto the serial console as lines
//!
//! ```text
//! @@KCOV@@ <seq> <crc> <base64>
//! ```
//!
//! `seq` (8 hex digits) numbers the lines from 0, `crc` (8 hex digits) is the CRC-32 of the
//! decoded bytes, `base64` (standard alphabet, padded) carries at most [`MAX_LINE_BYTES`]
//! bytes of the stream. Lines cut a stream anywhere (not at frame boundaries); the host
//! concatenates them in `seq` order ([`LineAssembler`]) and decodes frames from the result.
//! Sequence numbers and per-line checksums catch lines that the console lost or that a
//! kernel message interleaved with; such a stream is reported corrupt, never half-decoded.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::io::{self, Write};

/// `READY_MARKER <kernel release>`: the agent runs as /init.
pub const READY_MARKER: &str = "@@TESTBED-READY@@";
/// `EXIT_MARKER <status>`: the agent's final status; the VM ends right after.
pub const EXIT_MARKER: &str = "@@TESTBED-EXIT@@";
/// Host → agent: the user command's argv, NUL-separated, in the initramfs.
pub const CMD_FILE: &str = "/etc/testbed/cmd";
/// Renders an argv as NUL-separated bytes (the form of [`CMD_FILE`]).
pub fn render_argv(argv: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in argv {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

/// Parses NUL-separated argv bytes (empty words dropped, invalid UTF-8 replaced).
pub fn parse_argv(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Prefix of a stream line (see the module docs).
pub const STREAM_MARKER: &str = "@@KCOV@@";
/// Most stream bytes one line carries (a multiple of 3, so only the last line of a flush
/// has base64 padding): 1536 bytes = 2048 base64 characters.
pub const MAX_LINE_BYTES: usize = 1536;

/// A malformed stream line or a broken line sequence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// The line has the marker but not the `<seq> <crc> <base64>` fields.
    #[error("stream line {line_no}: malformed ({why})")]
    Malformed {
        /// 1-based number of the line among the stream lines seen.
        line_no: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The base64 text does not decode.
    #[error("stream line seq {seq}: bad base64: {why}")]
    BadBase64 {
        /// Line sequence number.
        seq: u32,
        /// Decoder message.
        why: String,
    },
    /// Longer than [`MAX_LINE_BYTES`].
    #[error("stream line seq {seq}: {len} bytes, at most {MAX_LINE_BYTES} allowed")]
    TooLong {
        /// Line sequence number.
        seq: u32,
        /// Decoded length.
        len: usize,
    },
    /// The CRC does not match the decoded bytes (console corruption).
    #[error("stream line seq {seq}: checksum {expected:08x} but bytes give {computed:08x} (console output interleaved or corrupted)")]
    Checksum {
        /// Line sequence number.
        seq: u32,
        /// CRC in the line.
        expected: u32,
        /// CRC of the decoded bytes.
        computed: u32,
    },
    /// A line is missing or out of order.
    #[error("stream line seq {got} where {expected} was expected (console lost lines)")]
    Sequence {
        /// Next sequence number expected.
        expected: u32,
        /// Sequence number found.
        got: u32,
    },
}

/// True if `line` carries a stream line (the marker anywhere in it).
pub fn is_stream_line(line: &str) -> bool {
    line.contains(STREAM_MARKER)
}

/// Encodes one stream line (without the newline). `bytes` should be at most
/// [`MAX_LINE_BYTES`] long; [`LineWriter`] guarantees that.
pub fn encode_line(seq: u32, bytes: &[u8]) -> String {
    let crc = crc32fast::hash(bytes);
    format!(
        "{STREAM_MARKER} {seq:08x} {crc:08x} {}",
        STANDARD.encode(bytes)
    )
}

/// A decoded stream line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLine {
    /// Sequence number.
    pub seq: u32,
    /// The stream bytes it carries.
    pub bytes: Vec<u8>,
}

/// Decodes the stream line in `line` (text before the marker, e.g. a partial kernel message,
/// and trailing whitespace such as `\r` are ignored). `line_no` only labels errors.
/// Returns `None` if the line has no marker.
pub fn parse_line(line: &str, line_no: u64) -> Option<Result<StreamLine, ConsoleError>> {
    let pos = line.find(STREAM_MARKER)?;
    Some(parse_fields(&line[pos + STREAM_MARKER.len()..], line_no))
}

fn parse_fields(rest: &str, line_no: u64) -> Result<StreamLine, ConsoleError> {
    let malformed = |why| ConsoleError::Malformed { line_no, why };
    let mut fields = rest.split_ascii_whitespace();
    let seq = fields.next().ok_or(malformed("no sequence number"))?;
    let crc = fields.next().ok_or(malformed("no checksum"))?;
    // An empty line (no bytes) has no base64 field.
    let b64 = fields.next().unwrap_or("");
    if fields.next().is_some() {
        return Err(malformed("extra fields"));
    }
    let hex8 = |s: &str, what| {
        if s.len() != 8 {
            return Err(malformed(what));
        }
        u32::from_str_radix(s, 16).map_err(|_| malformed(what))
    };
    let seq = hex8(seq, "sequence number is not 8 hex digits")?;
    let expected = hex8(crc, "checksum is not 8 hex digits")?;
    // Bound the work before decoding: base64 of MAX_LINE_BYTES is 4/3 as long.
    if b64.len() > MAX_LINE_BYTES.div_ceil(3) * 4 {
        return Err(ConsoleError::TooLong {
            seq,
            len: b64.len() / 4 * 3,
        });
    }
    let bytes = STANDARD.decode(b64).map_err(|e| ConsoleError::BadBase64 {
        seq,
        why: e.to_string(),
    })?;
    if bytes.len() > MAX_LINE_BYTES {
        return Err(ConsoleError::TooLong {
            seq,
            len: bytes.len(),
        });
    }
    let computed = crc32fast::hash(&bytes);
    if computed != expected {
        return Err(ConsoleError::Checksum {
            seq,
            expected,
            computed,
        });
    }
    Ok(StreamLine { seq, bytes })
}

/// Agent side: an `io::Write` that turns the bytes written into stream lines on `out`.
///
/// Bytes are buffered until [`MAX_LINE_BYTES`] are pending or [`flush`](Write::flush) is
/// called; each line (with its `\n`) goes to `out` in a single `write_all`, so lines from
/// other writers of the same console only ever appear between whole lines.
#[derive(Debug)]
pub struct LineWriter<W: Write> {
    out: W,
    pending: Vec<u8>,
    seq: u32,
}

impl<W: Write> LineWriter<W> {
    /// A writer that starts at sequence number 0.
    pub fn new(out: W) -> Self {
        LineWriter {
            out,
            pending: Vec::with_capacity(MAX_LINE_BYTES),
            seq: 0,
        }
    }

    /// Sequence number of the next line.
    pub fn next_seq(&self) -> u32 {
        self.seq
    }

    /// Flushes and returns the inner writer. (Dropping a `LineWriter` without flushing loses
    /// the pending bytes: call [`flush`](Write::flush) or this.)
    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.out)
    }

    fn emit(&mut self, n: usize) -> io::Result<()> {
        let mut line = encode_line(self.seq, &self.pending[..n]);
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.pending.drain(..n);
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }
}

impl<W: Write> Write for LineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = MAX_LINE_BYTES - self.pending.len();
        let n = buf.len().min(room);
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == MAX_LINE_BYTES {
            self.emit(MAX_LINE_BYTES)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            self.emit(n)?;
        }
        self.out.flush()
    }
}

/// Host side: reassembles the stream from console lines.
///
/// Feed every console line to [`push`](Self::push); lines without the marker are ignored.
/// The first error is sticky: after a lost or corrupt line the rest of the stream cannot be
/// trusted, so later lines are counted but not appended.
#[derive(Debug, Default)]
pub struct LineAssembler {
    next_seq: u32,
    lines: u64,
    stream: Vec<u8>,
    error: Option<ConsoleError>,
}

impl LineAssembler {
    /// An empty assembler expecting sequence number 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one console line. Returns `Ok(true)` if it was a stream line that was appended,
    /// `Ok(false)` if it was no stream line, the (sticky) error otherwise.
    pub fn push(&mut self, line: &str) -> Result<bool, ConsoleError> {
        let Some(parsed) = parse_line(line, self.lines + 1) else {
            return Ok(false);
        };
        self.lines += 1;
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let result = parsed.and_then(|l| {
            if l.seq != self.next_seq {
                return Err(ConsoleError::Sequence {
                    expected: self.next_seq,
                    got: l.seq,
                });
            }
            Ok(l)
        });
        match result {
            Ok(l) => {
                self.next_seq = self.next_seq.wrapping_add(1);
                self.stream.extend_from_slice(&l.bytes);
                Ok(true)
            }
            Err(e) => {
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Stream lines seen (including bad ones).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The first error, if any.
    pub fn error(&self) -> Option<&ConsoleError> {
        self.error.as_ref()
    }

    /// The bytes reassembled so far (up to the first error).
    pub fn stream(&self) -> &[u8] {
        &self.stream
    }

    /// The reassembled bytes and the first error.
    pub fn finish(self) -> (Vec<u8>, Option<ConsoleError>) {
        (self.stream, self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_round_trips() {
        let a: Vec<String> = ["--cmdline", "console=ttyS0 quiet", "--mem", "256"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse_argv(&render_argv(&a)), a);
        assert_eq!(parse_argv(b"\0\0a\0"), vec!["a".to_string()]);
    }

    fn lines_of(bytes: &[u8], writes: usize) -> Vec<String> {
        let mut w = LineWriter::new(Vec::new());
        for piece in bytes.chunks(writes.max(1)) {
            w.write_all(piece).unwrap();
        }
        let out = w.into_inner().unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn round_trip_any_split() {
        for n in [0, 1, 2, 3, 1535, 1536, 1537, 5000, 20_000] {
            for writes in [1, 7, 1536, 4096] {
                let d = data(n);
                let lines = lines_of(&d, writes);
                assert_eq!(lines.len(), n.div_ceil(MAX_LINE_BYTES), "n {n}");
                let mut asm = LineAssembler::new();
                for l in &lines {
                    assert!(l.len() <= STREAM_MARKER.len() + 20 + 2048);
                    assert_eq!(asm.push(l), Ok(true));
                }
                assert_eq!(asm.push("[ 1.0] a kernel message"), Ok(false));
                let (s, e) = asm.finish();
                assert_eq!(e, None);
                assert_eq!(s, d, "n {n} writes {writes}");
            }
        }
    }

    #[test]
    fn line_format_is_stable() {
        assert_eq!(
            encode_line(0x1f, b"hi"),
            format!("@@KCOV@@ 0000001f {:08x} aGk=", crc32fast::hash(b"hi"))
        );
        assert_eq!(
            parse_line("junk@@KCOV@@ 00000000 00000000 \r", 1),
            Some(Ok(StreamLine {
                seq: 0,
                bytes: vec![]
            }))
        );
        assert_eq!(parse_line("no marker", 1), None);
    }

    #[test]
    fn corruption_is_detected_and_sticky() {
        let d = data(4000);
        let lines = lines_of(&d, 4000);
        assert_eq!(lines.len(), 3);

        // A lost line.
        let mut asm = LineAssembler::new();
        asm.push(&lines[0]).unwrap();
        let e = asm.push(&lines[2]).unwrap_err();
        assert_eq!(
            e,
            ConsoleError::Sequence {
                expected: 1,
                got: 2
            }
        );
        assert!(asm.push(&lines[1]).is_err(), "sticky");
        assert_eq!(asm.stream().len(), MAX_LINE_BYTES);
        assert_eq!(asm.lines(), 3);

        // A kernel message printed into the middle of a line.
        let l = &lines[0];
        let mid = l.len() / 2;
        let spliced = format!("{}[   3.1] vhost: x{}", &l[..mid], &l[mid..]);
        assert!(matches!(
            parse_line(&spliced, 1),
            Some(Err(ConsoleError::Malformed { .. }))
        ));
        // A flipped base64 character that still decodes: the checksum catches it.
        let mut chars: Vec<char> = l.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        assert!(matches!(
            parse_line(&flipped, 1),
            Some(Err(ConsoleError::Checksum { .. }))
        ));
    }

    #[test]
    fn hostile_lines_are_rejected() {
        for bad in [
            "@@KCOV@@",
            "@@KCOV@@ 0",
            "@@KCOV@@ 00000000",
            "@@KCOV@@ 0000000g 00000000 AAAA",
            "@@KCOV@@ 00000000 0000000 AAAA",
            "@@KCOV@@ 00000000 00000000 AAAA extra",
            "@@KCOV@@ 00000000 00000000 !!!!",
            "@@KCOV@@ 00000000 00000000 AAA",
        ] {
            assert!(matches!(parse_line(bad, 1), Some(Err(_))), "{bad}");
        }
        let huge = format!("@@KCOV@@ 00000000 00000000 {}", "A".repeat(1 << 20));
        assert!(matches!(
            parse_line(&huge, 1),
            Some(Err(ConsoleError::TooLong { .. }))
        ));
    }

    #[test]
    fn frames_survive_the_console() {
        use crate::{encode, Decoder, Done, Frame};
        let mut w = LineWriter::new(Vec::new());
        let f1 = Frame::Done(Done { status: 7 });
        w.write_all(&encode(&f1).unwrap()).unwrap();
        w.flush().unwrap();
        w.write_all(&encode(&f1).unwrap()).unwrap();
        assert_eq!(w.next_seq(), 1);
        let out = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let mut asm = LineAssembler::new();
        for l in out.lines() {
            asm.push(l).unwrap();
        }
        let mut dec = Decoder::new();
        dec.feed(asm.stream());
        assert_eq!(dec.next_frame().unwrap(), Some(f1.clone()));
        assert_eq!(dec.next_frame().unwrap(), Some(f1));
        assert_eq!(dec.next_frame().unwrap(), None);
    }
}
