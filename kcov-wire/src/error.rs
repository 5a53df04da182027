//! Typed errors.

use crate::frame::{MAGIC, VERSION};

/// Encoding or decoding error. Every decode error except [`WireError::Truncated`] means the
/// stream is corrupt or speaks another protocol; a stream cannot be resynchronised after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input ends before the frame does (more bytes may complete it).
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed as far as known (the header, or header plus payload).
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The first bytes are not [`MAGIC`].
    #[error("bad magic {found:02x?}, expected {MAGIC:02x?} (\"KCVW\"): not a kcov-wire stream")]
    BadMagic {
        /// The bytes found (only the available prefix is meaningful).
        found: [u8; 4],
    },
    /// The header's version is not [`VERSION`].
    #[error("unsupported kcov-wire version {found}, this build speaks {VERSION}: rebuild agent and host from the same tree")]
    UnsupportedVersion {
        /// Version found in the header.
        found: u16,
    },
    /// The header's frame type byte is unknown.
    #[error("unknown frame type {found:#04x}")]
    UnknownFrameType {
        /// Type byte found.
        found: u8,
    },
    /// The reserved flags byte is not zero.
    #[error("reserved header flags byte is {found:#04x}, must be 0")]
    ReservedFlags {
        /// Flags byte found.
        found: u8,
    },
    /// The payload is larger than [`crate::MAX_PAYLOAD_LEN`].
    #[error("payload length {len} exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Length found (decode) or produced (encode).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CRC-32 in the header does not match header and payload.
    #[error("checksum mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// Checksum in the header.
        expected: u32,
        /// Checksum computed over the received bytes.
        computed: u32,
    },
    /// A field runs past the end of the payload.
    #[error("{frame} payload: field `{field}` runs past the end of the payload")]
    PayloadTruncated {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A string or list is longer than its limit.
    #[error("{frame}: field `{field}` has length {len}, limit is {max}")]
    TooLong {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
        /// Length found or given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string field is not UTF-8.
    #[error("{frame}: field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// An enum tag or boolean has a value outside its range.
    #[error("{frame}: field `{field}` has invalid value {value}")]
    InvalidValue {
        /// Frame type name.
        frame: &'static str,
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u64,
    },
    /// The payload has bytes after its last field.
    #[error("{frame} payload has {count} trailing bytes")]
    TrailingBytes {
        /// Frame type name.
        frame: &'static str,
        /// Number of extra bytes.
        count: usize,
    },
    /// A CMP-mode word list whose length is not a multiple of 4.
    #[error("{words} coverage words is not a multiple of {words_per_entry} words per entry")]
    MisalignedEntries {
        /// Number of words.
        words: usize,
        /// Words per entry of the mode.
        words_per_entry: usize,
    },
}

/// Error reading or writing frames on an `io::Read` / `io::Write` stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The underlying stream failed.
    #[error("kcov-wire stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes on the stream are not a valid frame (or a frame could not be encoded).
    #[error("kcov-wire: {0}")]
    Wire(#[from] WireError),
    /// The stream ended in the middle of a frame.
    #[error("kcov-wire stream ended inside a frame ({buffered} bytes of it received)")]
    UnexpectedEof {
        /// Bytes of the incomplete frame received.
        buffered: usize,
    },
}
