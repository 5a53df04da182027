//! The kcov uapi (include/uapi/linux/kcov.h): ioctl numbers, trace modes, handle layout,
//! CMP entry bits, area size limits and `struct kcov_remote_arg`. Checked values are in
//! KERNEL-FACTS.md.

// ---------------------------------------------------------------------------------------------
// ioctl numbers: `_IO`/`_IOR`/`_IOW` of include/uapi/asm-generic/ioctl.h, by vmm-sys-util's
// macros; each is a function returning the number.
// ---------------------------------------------------------------------------------------------

/// The ioctl type of every kcov request: `'c'`.
pub const KCOV_IOC_TYPE: std::os::raw::c_uint = b'c' as std::os::raw::c_uint;

// `_IOR('c', 1, unsigned long)`: set the area size in u64 words.
vmm_sys_util::ioctl_ior_nr!(KCOV_INIT_TRACE, KCOV_IOC_TYPE, 1, std::os::raw::c_ulong);
// `_IO('c', 100)`: enable coverage of the calling thread; argument = trace mode.
vmm_sys_util::ioctl_io_nr!(KCOV_ENABLE, KCOV_IOC_TYPE, 100);
// `_IO('c', 101)`: disable (local or remote) coverage of the calling thread.
vmm_sys_util::ioctl_io_nr!(KCOV_DISABLE, KCOV_IOC_TYPE, 101);
// `_IOW('c', 102, struct kcov_remote_arg)`: enable remote coverage.
vmm_sys_util::ioctl_iow_nr!(KCOV_REMOTE_ENABLE, KCOV_IOC_TYPE, 102, KcovRemoteArg);

/// Trace mode argument: PCs.
pub const KCOV_TRACE_PC: u32 = 0;
/// Trace mode argument: comparison operands.
pub const KCOV_TRACE_CMP: u32 = 1;

/// kcov trace mode: the `KCOV_ENABLE` argument and `kcov_remote_arg.trace_mode`. The
/// discriminants are [`KCOV_TRACE_PC`] / [`KCOV_TRACE_CMP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TraceMode {
    /// One u64 word per entry: a PC (return address of the `__sanitizer_cov_trace_pc` call).
    Pc = KCOV_TRACE_PC,
    /// Four u64 words per entry: type, arg1, arg2, pc.
    Cmp = KCOV_TRACE_CMP,
}

impl TraceMode {
    /// Number of u64 words one entry occupies in a kcov area.
    pub fn words_per_entry(self) -> usize {
        match self {
            TraceMode::Pc => 1,
            TraceMode::Cmp => 4,
        }
    }
}

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

    use super::*;

    #[test]
    fn ioctl_numbers_are_the_checked_values() {
        // KERNEL-FACTS.md, compiled against the 6.12 uapi headers.
        assert_eq!(KCOV_INIT_TRACE(), 0x8008_6301);
        assert_eq!(KCOV_ENABLE(), 0x6364);
        assert_eq!(KCOV_DISABLE(), 0x6365);
        assert_eq!(KCOV_REMOTE_ENABLE(), 0x4018_6366);
        assert_eq!(size_of::<KcovRemoteArg>(), 24, "the size _IOW encodes");
        assert_eq!(KCOV_TRACE_PC, TraceMode::Pc as u32);
        assert_eq!(KCOV_TRACE_CMP, TraceMode::Cmp as u32);
        assert_eq!(TraceMode::Pc.words_per_entry(), 1);
        assert_eq!(TraceMode::Cmp.words_per_entry(), 4);
    }
}
