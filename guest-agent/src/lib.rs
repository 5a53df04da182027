//! Library part of the guest agent (shared with its tests and tools).

pub mod kcov;
