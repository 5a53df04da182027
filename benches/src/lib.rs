//! The testbed's benchmarks, out of the libraries they measure and built on
//! their public APIs only; `cargo xtask bench NAME` runs them and prints each
//! figure against a baseline measured in the same run.
//!
//! * [`vmm_start`]: VMM start to the test guest's first port write, in process.
//! * [`vsock_device`]: guest → host throughput through our VMM's virtio-vsock
//!   device with a polling test guest.
//! * [`vsock_core`]: packets/s of the vsock core with a synthetic driver, no VM.
//! * [`net`]: virtio-net + tap throughput with a polling test guest, against
//!   host threads pushing the same frames through a tap.
//! * [`coverage`]: symbolizing every instrumented site against binutils
//!   `addr2line`, and report generation for a synthetic run.

#![deny(missing_docs)]

use std::io;
use std::path::{Path, PathBuf};

pub mod coverage;
pub mod net;
pub mod vmm_start;
pub mod vsock_core;
pub mod vsock_device;

/// Why a benchmark could not run or did not add up. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VM could not be built or run.
    #[error(transparent)]
    Vm(#[from] vmm::Error),
    /// A scratch directory, guest image or socket could not be made.
    #[error("benchmark scratch {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The vsock core refused a step.
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    /// The guest or the host end did not behave.
    #[error("benchmark: {0}")]
    Failed(String),
}

impl Error {
    /// `map_err` helper: an I/O error at `path`.
    fn io(path: &Path) -> impl Fn(io::Error) -> Error + Copy + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
