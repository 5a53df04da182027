//! Errors of the VMM library. Every message is one line that names the cause.

use std::io;
use std::path::PathBuf;

use crate::arch::x86_64::ArchError;
use crate::host::HostCheckError;
use crate::kernel::KernelError;

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--vcpus 0`.
    #[error("--vcpus 0: a VM needs at least one vCPU")]
    NoVcpus,
    /// More vCPUs than KVM or the MP table allow.
    #[error("--vcpus {requested} is above the maximum of {max} ({limit})")]
    TooManyVcpus {
        /// Requested.
        requested: u8,
        /// Maximum.
        max: usize,
        /// What imposes the limit.
        limit: &'static str,
    },
    /// Not enough guest RAM.
    #[error("--mem {mem_mib} MiB is too small: {what} needs at least {need_mib} MiB")]
    MemTooSmall {
        /// Configured MiB.
        mem_mib: u64,
        /// MiB needed.
        need_mib: u64,
        /// What does not fit.
        what: String,
    },
    /// Absurd memory size.
    #[error("--mem {mem_mib} MiB is too large (limit {max_mib} MiB)")]
    MemTooLarge {
        /// Configured MiB.
        mem_mib: u64,
        /// Limit.
        max_mib: u64,
    },
    /// The kernel image is unreadable, not a kernel, or does not fit.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The initrd cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    InitrdIo {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The initrd is larger than the 32-bit `ramdisk_size` field.
    #[error("initrd {path} is {size} bytes; the boot protocol allows at most 4 GiB")]
    InitrdTooLarge {
        /// Path.
        path: PathBuf,
        /// Size.
        size: u64,
    },
    /// Bad command line.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// The serial log cannot be created.
    #[error("cannot create serial log {path}: {source}")]
    SerialLog {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The host cannot run this kernel under KVM.
    #[error(transparent)]
    Host(#[from] HostCheckError),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source} (if this host cannot run KVM guests, use --runner qemu)")]
    Kvm {
        /// Operation.
        op: &'static str,
        /// errno.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// A device could not be attached (overlapping bus ranges).
    #[error("device setup: {0}")]
    Device(String),
    /// A boot structure could not be built.
    #[error("boot setup: {0}")]
    Arch(#[from] ArchError),
    /// Thread or signal setup failed.
    #[error("cannot start vCPU threads: {0}")]
    Thread(io::Error),
}

impl Error {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}
