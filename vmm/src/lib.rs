//! Small KVM VMM for the kcov testbed.
//!
//! * [`arch`]: pure x86_64 boot building blocks (layout, zero page/E820, PVH, paging,
//!   GDT, registers, MP table, CPUID, MSRs), no KVM calls.
//! * [`devices`]: buses (port I/O, MMIO) and the legacy devices (8250 UART, i8042 reset).
//! * [`run`] / [`run_with_devices`]: boot a bzImage or ELF vmlinux (64-bit entry,
//!   or PVH when the ELF has the note) and run it to the end; [`host_check`] says
//!   whether this host can run that kernel under KVM at all.
//! * `guests` (feature `test-guests`): tiny test guests built from source, for
//!   tests and benchmarks.
//!
//! A caller that boots Linux should call [`host_check`] first (the `vmm` binary
//! does, and so does [`run`] unless `skip_host_check` is set).

#![deny(missing_docs)]

pub mod arch;
pub mod devices;
pub mod error;
#[cfg(feature = "test-guests")]
pub mod guests;
pub mod host;
pub mod host_kcov;
pub mod kernel;
mod log;
mod vcpu;
mod vm;

pub use error::Error;
pub use host::{host_check, HostCheckError, HostKvm};
pub use kernel::BootProtocol;
pub use log::set_verbose;
pub use vcpu::VmExit;
pub use vm::{
    proc_status_kib, run, run_with_devices, ApStart, BusKind, ExtraDevice, RunOutcome, VmConfig,
    DEFAULT_CMDLINE, MAX_MEM_MIB, MIN_MEM_MIB,
};
