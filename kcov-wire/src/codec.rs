//! Encoding and one-shot decoding of frames.

use std::io::{Read, Write};

use crate::error::{StreamError, WireError};
use crate::frame::*;

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

/// A validated frame header (see the README for the byte layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Frame type.
    pub frame_type: FrameType,
    /// Payload length in bytes, at most [`MAX_PAYLOAD_LEN`].
    pub payload_len: usize,
    /// CRC-32 over header bytes 0..12 followed by the payload.
    pub checksum: u32,
}

impl FrameHeader {
    /// Total frame length (header plus payload).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Validates the fixed header: magic, version, frame type, flags and payload length limit.
    /// Does not check the checksum (that needs the payload).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&bytes[0..4]);
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(WireError::UnsupportedVersion { found: version });
        }
        let frame_type =
            FrameType::from_u8(bytes[6]).ok_or(WireError::UnknownFrameType { found: bytes[6] })?;
        if bytes[7] != 0 {
            return Err(WireError::ReservedFlags { found: bytes[7] });
        }
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        // u32 always fits usize on the 32/64-bit targets we build for; saturate otherwise.
        let payload_len = usize::try_from(len).unwrap_or(usize::MAX);
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(WireError::PayloadTooLarge {
                len: payload_len,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let checksum = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        Ok(FrameHeader {
            frame_type,
            payload_len,
            checksum,
        })
    }

    /// Checks as much of a header as `prefix` (shorter than [`HEADER_LEN`]) contains, so that a
    /// streaming reader rejects garbage without waiting for a whole header.
    pub(crate) fn check_prefix(prefix: &[u8]) -> Result<(), WireError> {
        let n = prefix.len().min(HEADER_LEN);
        if n >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&prefix[..HEADER_LEN]);
            return Self::parse(&h).map(|_| ());
        }
        let m = n.min(4);
        if prefix[..m] != MAGIC[..m] {
            let mut found = [0u8; 4];
            found[..m].copy_from_slice(&prefix[..m]);
            return Err(WireError::BadMagic { found });
        }
        if n >= 6 {
            let version = u16::from_le_bytes([prefix[4], prefix[5]]);
            if version != VERSION {
                return Err(WireError::UnsupportedVersion { found: version });
            }
        }
        if n >= 7 && FrameType::from_u8(prefix[6]).is_none() {
            return Err(WireError::UnknownFrameType { found: prefix[6] });
        }
        if n >= 8 && prefix[7] != 0 {
            return Err(WireError::ReservedFlags { found: prefix[7] });
        }
        Ok(())
    }
}

fn checksum(header_head: &[u8], payload: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(header_head);
    c.update(payload);
    c.finalize()
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

struct Enc<'a> {
    out: &'a mut Vec<u8>,
    frame: &'static str,
}

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn len(&mut self, field: &'static str, len: usize, max: usize) -> Result<(), WireError> {
        if len > max {
            return Err(WireError::TooLong {
                frame: self.frame,
                field,
                len,
                max,
            });
        }
        // max <= MAX_PAYLOAD_LEN < u32::MAX, so this cannot truncate.
        self.u32(len as u32);
        Ok(())
    }
    fn str(&mut self, field: &'static str, s: &str) -> Result<(), WireError> {
        self.len(field, s.len(), MAX_STRING_LEN)?;
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn opt_str(&mut self, field: &'static str, s: Option<&str>) -> Result<(), WireError> {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(field, s)?;
            }
        }
        Ok(())
    }
}

fn encode_payload(frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
    let mut e = Enc {
        out,
        frame: frame.frame_type().name(),
    };
    match frame {
        Frame::Hello(h) => {
            e.str("agent_version", &h.agent_version)?;
            e.str("kernel_release", &h.kernel_release)?;
            e.u8(h.kcov_mode as u8);
            e.u32(h.area_words);
            e.u64(h.common_handle);
        }
        Frame::WorkloadStart(w) => e.str("name", &w.name)?,
        Frame::WorkloadResult(r) => {
            e.str("name", &r.name)?;
            e.i32(r.status);
            e.u64(r.duration_us);
            e.len("counters", r.counters.len(), MAX_COUNTERS)?;
            for (name, value) in &r.counters {
                e.str("counter name", name)?;
                e.u64(*value);
            }
            e.opt_str("error", r.error.as_deref())?;
        }
        Frame::CoverageChunk(c) => {
            let wpe = c.mode.words_per_entry();
            if c.words.len() % wpe != 0 {
                return Err(WireError::MisalignedEntries {
                    words: c.words.len(),
                    words_per_entry: wpe,
                });
            }
            e.str("workload", &c.workload)?;
            e.u8(c.source as u8);
            e.u8(c.mode as u8);
            e.bool(c.overflow);
            e.u32(c.seq);
            e.len("words", c.words.len(), MAX_CHUNK_WORDS)?;
            e.out.reserve(c.words.len() * 8);
            for w in &c.words {
                e.u64(*w);
            }
        }
        Frame::Error(m) => e.str("message", &m.message)?,
        Frame::Done(d) => e.i32(d.status),
        Frame::FuzzInput(f) => {
            e.u64(f.seq);
            e.len("data", f.data.len(), crate::program::MAX_PROGRAM_BYTES)?;
            e.out.extend_from_slice(&f.data);
        }
        Frame::FuzzStatus(s) => {
            e.u64(s.seq);
            e.u32(s.new_pcs);
            e.u64(s.execs);
            e.u32(s.pcs);
            e.u32(s.remote_pcs);
            e.u32(s.corpus);
            e.u64(s.elapsed_ms);
            e.u64(s.stream_us);
        }
    }
    Ok(())
}

/// Appends the encoded `frame` to `out` and returns the number of bytes appended. On error
/// (a field over its limit) `out` is left as it was.
pub fn encode_into(frame: &Frame, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    if let Err(e) = encode_payload(frame, out) {
        out.truncate(start);
        return Err(e);
    }
    let payload_len = out.len() - start - HEADER_LEN;
    if payload_len > MAX_PAYLOAD_LEN {
        out.truncate(start);
        return Err(WireError::PayloadTooLarge {
            len: payload_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    let (head, payload) = out[start..].split_at_mut(HEADER_LEN);
    head[0..4].copy_from_slice(&MAGIC);
    head[4..6].copy_from_slice(&VERSION.to_le_bytes());
    head[6] = frame.frame_type() as u8;
    head[7] = 0;
    head[8..12].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = checksum(&head[0..12], payload);
    head[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(HEADER_LEN + payload_len)
}

/// Encodes `frame` into a new buffer.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Encodes `frame` and writes it with one `write_all` call.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, frame: &Frame) -> Result<(), StreamError> {
    let bytes = encode(frame)?;
    w.write_all(&bytes)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    frame: &'static str,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(WireError::PayloadTruncated {
                frame: self.frame,
                field,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, WireError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn invalid(&self, field: &'static str, value: u64) -> WireError {
        WireError::InvalidValue {
            frame: self.frame,
            field,
            value,
        }
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.invalid(field, v.into())),
        }
    }
    /// Reads a u32 count, checks it against `max` and against the bytes left (each element is
    /// at least `min_elem_size` bytes), so callers may allocate `count` elements.
    fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_elem_size: usize,
    ) -> Result<usize, WireError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(WireError::TooLong {
                frame: self.frame,
                field,
                len,
                max,
            });
        }
        if len.saturating_mul(min_elem_size) > self.remaining() {
            return Err(WireError::PayloadTruncated {
                frame: self.frame,
                field,
            });
        }
        Ok(len)
    }
    fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = self.count(field, MAX_STRING_LEN, 1)?;
        let bytes = self.take(len, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(WireError::InvalidUtf8 {
                frame: self.frame,
                field,
            }),
        }
    }
    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, WireError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.string(field)?)),
            v => Err(self.invalid(field, v.into())),
        }
    }
    fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes {
                frame: self.frame,
                count,
            }),
        }
    }
}

/// Decodes a payload of the given type (without header or checksum). Strict: every byte must
/// belong to a field, enum tags and booleans must be in range, so encoding is canonical.
pub fn decode_payload(frame_type: FrameType, payload: &[u8]) -> Result<Frame, WireError> {
    let mut d = Dec {
        buf: payload,
        pos: 0,
        frame: frame_type.name(),
    };
    let frame = match frame_type {
        FrameType::Hello => {
            let agent_version = d.string("agent_version")?;
            let kernel_release = d.string("kernel_release")?;
            let mode = d.u8("kcov_mode")?;
            let kcov_mode = KcovMode::from_u8(mode).ok_or(d.invalid("kcov_mode", mode.into()))?;
            Frame::Hello(Hello {
                agent_version,
                kernel_release,
                kcov_mode,
                area_words: d.u32("area_words")?,
                common_handle: d.u64("common_handle")?,
            })
        }
        FrameType::WorkloadStart => Frame::WorkloadStart(WorkloadStart {
            name: d.string("name")?,
        }),
        FrameType::WorkloadResult => {
            let name = d.string("name")?;
            let status = d.i32("status")?;
            let duration_us = d.u64("duration_us")?;
            // Each counter is at least a 4-byte length plus an 8-byte value.
            let n = d.count("counters", MAX_COUNTERS, 12)?;
            let mut counters = Vec::with_capacity(n);
            for _ in 0..n {
                let cname = d.string("counter name")?;
                counters.push((cname, d.u64("counter value")?));
            }
            Frame::WorkloadResult(WorkloadResult {
                name,
                status,
                duration_us,
                counters,
                error: d.opt_string("error")?,
            })
        }
        FrameType::CoverageChunk => {
            let workload = d.string("workload")?;
            let s = d.u8("source")?;
            let source = CoverageSource::from_u8(s).ok_or(d.invalid("source", s.into()))?;
            let m = d.u8("mode")?;
            let mode = KcovMode::from_u8(m).ok_or(d.invalid("mode", m.into()))?;
            let overflow = d.bool("overflow")?;
            let seq = d.u32("seq")?;
            let n = d.count("words", MAX_CHUNK_WORDS, 8)?;
            if n % mode.words_per_entry() != 0 {
                return Err(WireError::MisalignedEntries {
                    words: n,
                    words_per_entry: mode.words_per_entry(),
                });
            }
            let raw = d.take(n * 8, "words")?;
            let words = raw
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    u64::from_le_bytes(a)
                })
                .collect();
            Frame::CoverageChunk(CoverageChunk {
                workload,
                source,
                mode,
                seq,
                overflow,
                words,
            })
        }
        FrameType::Error => Frame::Error(ErrorReport {
            message: d.string("message")?,
        }),
        FrameType::Done => Frame::Done(Done {
            status: d.i32("status")?,
        }),
        FrameType::FuzzInput => {
            let seq = d.u64("seq")?;
            let n = d.count("data", crate::program::MAX_PROGRAM_BYTES, 1)?;
            Frame::FuzzInput(FuzzInput {
                seq,
                data: d.take(n, "data")?.to_vec(),
            })
        }
        FrameType::FuzzStatus => Frame::FuzzStatus(FuzzStatus {
            seq: d.u64("seq")?,
            new_pcs: d.u32("new_pcs")?,
            execs: d.u64("execs")?,
            pcs: d.u32("pcs")?,
            remote_pcs: d.u32("remote_pcs")?,
            corpus: d.u32("corpus")?,
            elapsed_ms: d.u64("elapsed_ms")?,
            stream_us: d.u64("stream_us")?,
        }),
    };
    d.finish()?;
    Ok(frame)
}

/// Decodes the first frame in `buf` and returns it with the number of bytes it occupied.
///
/// When `buf` holds only part of a frame, returns [`WireError::Truncated`] — unless the part
/// already present is invalid (bad magic, version, type, flags or length), which is reported
/// at once.
pub fn decode_one(buf: &[u8]) -> Result<(Frame, usize), WireError> {
    if buf.len() < HEADER_LEN {
        FrameHeader::check_prefix(buf)?;
        return Err(WireError::Truncated {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    let header = FrameHeader::parse(&h)?;
    let total = header.frame_len();
    if buf.len() < total {
        return Err(WireError::Truncated {
            needed: total,
            available: buf.len(),
        });
    }
    let payload = &buf[HEADER_LEN..total];
    let computed = checksum(&buf[..12], payload);
    if computed != header.checksum {
        return Err(WireError::ChecksumMismatch {
            expected: header.checksum,
            computed,
        });
    }
    Ok((decode_payload(header.frame_type, payload)?, total))
}

/// Reads one frame from a blocking stream. Returns `Ok(None)` on a clean end of stream (EOF at
/// a frame boundary) and [`StreamError::UnexpectedEof`] on EOF inside a frame. The payload
/// buffer grows with the bytes actually received, never ahead of them from the length field.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>, StreamError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(StreamError::UnexpectedEof { buffered: got }),
            Ok(n) => {
                got += n;
                FrameHeader::check_prefix(&head[..got])?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let header = FrameHeader::parse(&head)?;
    let mut payload = Vec::new();
    r.take(header.payload_len as u64)
        .read_to_end(&mut payload)?;
    if payload.len() < header.payload_len {
        return Err(StreamError::UnexpectedEof {
            buffered: HEADER_LEN + payload.len(),
        });
    }
    let computed = checksum(&head[..12], &payload);
    if computed != header.checksum {
        return Err(WireError::ChecksumMismatch {
            expected: header.checksum,
            computed,
        }
        .into());
    }
    Ok(Some(decode_payload(header.frame_type, &payload)?))
}
