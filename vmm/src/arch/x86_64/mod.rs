//! x86_64 boot building blocks: layout, zero page/E820, PVH start info, paging,
//! GDT, registers, MP table, CPUID, MSRs, local APIC.

pub mod apic;
pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msrs;
pub mod paging;
pub mod pvh;
pub mod regs;

/// Errors of the pure building blocks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchError {
    /// Not enough guest RAM for what has to be placed.
    #[error("guest memory too small: need at least {need:#x} bytes, have {have:#x}")]
    MemoryTooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// An address or size does not fit the field it goes into.
    #[error("address or size overflows its boot-protocol field")]
    Overflow,
    /// Writing guest memory failed (the area is not backed by RAM).
    #[error("cannot write the {0} to guest memory")]
    WriteMemory(&'static str),
    /// The zero page holds at most 128 E820 entries.
    #[error("too many E820 entries for the zero page")]
    TooManyE820Entries,
    /// Command line too long.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong {
        /// Length given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Too many (or zero) CPUs for the MP table / topology.
    #[error("{requested} vCPUs requested, at most {max} supported")]
    TooManyCpus {
        /// Requested count or index.
        requested: u8,
        /// Maximum.
        max: u8,
    },
    /// The CPUID array has no room for the hypervisor leaf.
    #[error("no room in the CPUID table for the hypervisor leaf")]
    CpuidFull,
    /// linux-loader's configurator failed.
    #[error("{0}")]
    BootConfigurator(String),
}
