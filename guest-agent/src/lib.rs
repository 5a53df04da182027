//! Library part of the guest agent (shared with its tests and tools).

pub use frontends::kcov;
pub mod net;
pub mod plan;
pub mod sys;
pub mod vring;
pub mod vsock;
