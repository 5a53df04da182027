//! The agent protocol: the plan the host gives the kcov guest agent ([`plan`]: `testbed.*`
//! kernel command-line words, rendered by the host and parsed by the agent with the same
//! code) and the stream of frames the agent sends back to the host collector.
//!
//! A stream (one AF_VSOCK connection) is a sequence of frames: a 16-byte little-endian header
//! (magic `KCVW`, version, frame type, payload length, CRC-32) followed by the payload. A
//! typical stream is `Hello, (WorkloadStart, CoverageChunk*, WorkloadResult)*, Done`, with
//! `Error` frames wherever the agent has something to report. The byte layout is in the
//! crate's README.md.
//!
//! * Encoding: [`encode`], [`encode_into`], [`write_frame`]; [`chunk_coverage`] splits a
//!   drained kcov area into chunks that fit the limits.
//! * Decoding: [`decode_one`] on a buffer, [`Decoder`] for bytes arriving in pieces,
//!   [`read_frame`] on a blocking `io::Read`.
//!
//! Decoding never panics and never allocates ahead of the bytes it has received beyond the
//! limits ([`MAX_PAYLOAD_LEN`], [`MAX_STRING_LEN`], [`MAX_COUNTERS`], [`MAX_CHUNK_WORDS`]);
//! the encoder enforces the same limits, so whatever encodes also decodes.

#![deny(missing_docs)]

mod chunk;
mod codec;
pub mod console;
mod decoder;
mod error;
mod frame;
pub mod nested;
pub mod plan;
pub mod program;

pub use chunk::{chunk_coverage, CoverageChunks};
pub use codec::{
    decode_one, decode_payload, encode, encode_into, read_frame, write_frame, FrameHeader,
};
pub use decoder::Decoder;
pub use error::{StreamError, WireError};
pub use frame::{
    CoverageChunk, CoverageSource, Done, ErrorReport, Frame, FrameType, FuzzInput, FuzzStatus,
    Hello, KcovMode, WorkloadResult, WorkloadStart, HEADER_LEN, MAGIC, MAX_CHUNK_WORDS,
    MAX_COUNTERS, MAX_PAYLOAD_LEN, MAX_STRING_LEN, VERSION,
};
