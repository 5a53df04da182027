//! Library part of the guest agent (shared with its tests and tools).

pub use frontends::kcov;
pub mod fuzz;
pub mod net;
pub mod ship;
pub mod sys;
pub mod vsock;

/// The rings the agent drives live in `frontends` (shared with the vsock crate's test driver).
pub use frontends::vring;
