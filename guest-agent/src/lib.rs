//! Library part of the guest agent (shared with its tests and tools).

pub use frontends::kcov;
pub mod fuzz;
pub mod net;
pub mod net_control;
pub mod net_errors;
pub mod net_gaps;
pub mod net_matrix;
pub mod rawnet;
pub mod scsi_control;
pub mod scsi_dev;
pub mod scsi_workers;
pub mod ship;
pub mod sys;
pub mod vsock;
pub mod vsock_conns;
pub mod vsock_control;
pub mod vsock_credit;

/// The rings the agent drives live in `frontends` (shared with the vsock crate's test driver).
pub use frontends::vring;
