//! Incremental decoder for a byte stream (e.g. a vsock socket read in arbitrary pieces).

use crate::codec::decode_one;
use crate::error::WireError;
use crate::frame::Frame;

/// Incremental frame decoder: [`feed`](Decoder::feed) it the bytes read from a socket, then
/// call [`next_frame`](Decoder::next_frame) until it returns `Ok(None)`.
///
/// It only ever buffers bytes it was fed: a length field is validated against
/// [`crate::MAX_PAYLOAD_LEN`] but never used to allocate. The first decode error is sticky
/// (the stream cannot be resynchronised): every later `next_frame` returns it again.
///
/// ```
/// use kcov_wire::{encode, Decoder, Done, Frame};
/// let bytes = encode(&Frame::Done(Done { status: 0 })).unwrap();
/// let mut dec = Decoder::new();
/// for piece in bytes.chunks(3) {
///     dec.feed(piece);
/// }
/// assert_eq!(dec.next_frame().unwrap(), Some(Frame::Done(Done { status: 0 })));
/// assert_eq!(dec.next_frame().unwrap(), None);
/// dec.finish().unwrap();
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    failed: Option<WireError>,
    frames: u64,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Compact before growing so the buffer stays about one frame plus one read long.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed, or the (sticky)
    /// error if the stream is corrupt.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match decode_one(&self.buf[self.start..]) {
            Ok((frame, used)) => {
                self.start += used;
                self.frames += 1;
                Ok(Some(frame))
            }
            Err(WireError::Truncated { .. }) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Bytes fed but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Frames decoded so far.
    pub fn frames_decoded(&self) -> u64 {
        self.frames
    }

    /// Number of bytes still missing for the frame being received, as far as known (0 if none
    /// is pending).
    pub fn bytes_wanted(&self) -> usize {
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return 0;
        }
        match decode_one(pending) {
            Err(WireError::Truncated { needed, available }) => needed.saturating_sub(available),
            _ => 0,
        }
    }

    /// Call at end of stream: errors if a partial frame is left (or the stream failed).
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let available = self.buffered();
        if available == 0 {
            return Ok(());
        }
        match decode_one(&self.buf[self.start..]) {
            Err(e) => Err(e),
            // Complete frames are still buffered: next_frame was not called until it returned
            // Ok(None). Report the unread bytes.
            Ok(_) => Err(WireError::TrailingBytes {
                frame: "stream",
                count: available,
            }),
        }
    }
}
