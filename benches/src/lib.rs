//! The testbed's benchmarks, out of the libraries they measure and built on
//! their public APIs only; `cargo xtask bench NAME` runs them and prints each
//! figure against a baseline measured in the same run.
//!
//! * [`net`]: virtio-net + tap throughput with a polling test guest, against
//!   host threads pushing the same frames through a tap.

#![deny(missing_docs)]

pub mod net;
