//! The kcov uapi (include/uapi/linux/kcov.h): ioctl numbers, trace modes, handle layout,
//! CMP entry bits, area size limits and `struct kcov_remote_arg`. Checked values are in
//! KERNEL-FACTS.md.

// ---------------------------------------------------------------------------------------------
// ioctl numbers (include/uapi/asm-generic/ioctl.h, x86_64 layout)
// ---------------------------------------------------------------------------------------------

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}
/// `_IO(type, nr)`.
pub const fn io(ty: u8, nr: u8) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}
/// `_IOR(type, nr, size)`.
pub const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}
/// `_IOW(type, nr, size)`.
pub const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// `_IOR('c', 1, unsigned long)`: set the area size in u64 words.
pub const KCOV_INIT_TRACE: u32 = 0x8008_6301;
/// `_IO('c', 100)`: enable coverage of the calling thread; argument = trace mode.
pub const KCOV_ENABLE: u32 = 0x6364;
/// `_IO('c', 101)`: disable (local or remote) coverage of the calling thread.
pub const KCOV_DISABLE: u32 = 0x6365;
/// `_IOW('c', 102, struct kcov_remote_arg)`: enable remote coverage.
pub const KCOV_REMOTE_ENABLE: u32 = 0x4018_6366;

/// Trace mode argument: PCs.
pub const KCOV_TRACE_PC: u32 = 0;
/// Trace mode argument: comparison operands.
pub const KCOV_TRACE_CMP: u32 = 1;

/// Handle subsystem of common handles (top byte 0).
pub const KCOV_SUBSYSTEM_COMMON: u64 = 0x00 << 56;
/// Handle subsystem of USB handles.
pub const KCOV_SUBSYSTEM_USB: u64 = 0x01 << 56;
/// Subsystem byte of a handle.
pub const KCOV_SUBSYSTEM_MASK: u64 = 0xff << 56;
/// Instance part of a handle.
pub const KCOV_INSTANCE_MASK: u64 = 0xffff_ffff;
/// Most global handles one `KCOV_REMOTE_ENABLE` accepts.
pub const KCOV_REMOTE_MAX_HANDLES: usize = 0x100;

/// CMP entry type bit: one operand is a compile-time constant.
pub const KCOV_CMP_CONST: u64 = 1;
/// CMP entry type bits 1-2: log2 of the operand size in bytes.
pub const KCOV_CMP_SIZE_MASK: u64 = 6;

/// Smallest `KCOV_INIT_TRACE` size in words (count word plus one entry).
pub const MIN_AREA_WORDS: usize = 2;
/// Largest `KCOV_INIT_TRACE` size in words: `INT_MAX / sizeof(unsigned long)`.
pub const MAX_AREA_WORDS: usize = (i32::MAX as usize) / 8;

/// Fixed part of `struct kcov_remote_arg` (include/uapi/linux/kcov.h); `u64 handles[]`
/// follows at offset 24.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KcovRemoteArg {
    /// `KCOV_TRACE_PC` or `KCOV_TRACE_CMP`.
    pub trace_mode: u32,
    /// Size of the per-section remote area in u64 words.
    pub area_size: u32,
    /// Number of `handles[]` that follow.
    pub num_handles: u32,
    /// The implicit padding, explicit so it is always zero.
    pub pad: u32,
    /// Common handle (0 = none).
    pub common_handle: u64,
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use kcov_wire::KcovMode;

    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_formulas() {
        assert_eq!(ior(b'c', 1, size_of::<libc::c_ulong>()), KCOV_INIT_TRACE);
        assert_eq!(io(b'c', 100), KCOV_ENABLE);
        assert_eq!(io(b'c', 101), KCOV_DISABLE);
        assert_eq!(
            iow(b'c', 102, size_of::<KcovRemoteArg>()),
            KCOV_REMOTE_ENABLE
        );
        assert_eq!(KCOV_INIT_TRACE, 0x8008_6301);
        assert_eq!(KCOV_REMOTE_ENABLE, 0x4018_6366);
        assert_eq!(KCOV_TRACE_PC, KcovMode::Pc as u32);
        assert_eq!(KCOV_TRACE_CMP, KcovMode::Cmp as u32);
        // Spot-check the formula against vhost numbers from KERNEL-FACTS.md.
        assert_eq!(io(0xaf, 0x01), 0xaf01);
        assert_eq!(ior(0xaf, 0x00, 8), 0x8008_af00);
        assert_eq!(iow(0xaf, 0x11, 40), 0x4028_af11);
    }
}
