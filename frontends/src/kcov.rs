//! Safe wrapper over `/sys/kernel/debug/kcov` (Documentation/dev-tools/kcov.rst, kernel/kcov.c).
//!
//! ```no_run
//! use frontends::kcov::{common_handle, fresh_instance, Kcov, KcovMode};
//! # fn main() -> Result<(), frontends::kcov::KcovError> {
//! let mut kcov = Kcov::open_default()?;
//! kcov.init_trace(1 << 20)?;
//! let handle = common_handle(fresh_instance())?;
//! kcov.remote_enable(KcovMode::Pc, handle, &[])?;
//! // ... VHOST_SET_OWNER from this thread (or a child forked now), drive the device ...
//! let cov = kcov.drain()?;
//! println!("{} PCs, overflow: {}", cov.entry_count(), cov.overflow);
//! kcov.disable()?;
//! # Ok(()) }
//! ```
//!
//! Split into pure building blocks that are tested without kcov (ioctl numbers, handle
//! encoding, `struct kcov_remote_arg` layout, area parsing via [`plan_drain`] / [`parse_area`],
//! CMP entry decoding) and the [`Kcov`] handle that performs the syscalls (Linux only).
//!
//! kcov rules that shape the API: one kcov fd per thread (so [`Kcov`] is neither `Send` nor
//! `Sync`: create, enable, drain and drop it on one thread); a remote-enabled thread's own
//! syscalls are not traced; `kcov_handle` is inherited at fork; a common handle still
//! registered by another fd gives EEXIST (use [`fresh_instance`] per run).
//!
//! The area itself may be read from another thread while the owner's workload runs:
//! [`Kcov::shared_area`] hands out an `Arc` of the mapping (unmapped when the last owner
//! drops it, so no reader outlives the munmap), and an [`AreaCursor`] takes the entries the
//! kernel appended since its last read, never one twice and never one not yet written.

use std::mem::{offset_of, size_of};

pub use kcov_wire::KcovMode;

/// Where debugfs exposes kcov.
pub const DEFAULT_PATH: &str = "/sys/kernel/debug/kcov";

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

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// kcov errors, with errno values mapped to what they mean for kcov.
#[derive(Debug, thiserror::Error)]
pub enum KcovError {
    /// The kcov file does not exist.
    #[error("kcov not available at {path}: {source} (CONFIG_KCOV=y kernel, debugfs mounted on /sys/kernel/debug?)")]
    NotAvailable {
        /// Path tried.
        path: String,
        /// The open error.
        source: std::io::Error,
    },
    /// The kcov file exists but cannot be opened.
    #[error("cannot open {path}: {source} (run as root?)")]
    Open {
        /// Path tried.
        path: String,
        /// The open error.
        source: std::io::Error,
    },
    /// `KCOV_INIT_TRACE` size out of the kernel's range.
    #[error("kcov area of {words} words is out of range {MIN_AREA_WORDS}..={MAX_AREA_WORDS}")]
    InvalidAreaSize {
        /// Requested size.
        words: usize,
    },
    /// The area is not a whole number of pages: kcov's mmap handler requires the mapping
    /// length (page-rounded) to equal the area size exactly, so such an area cannot be mapped.
    #[error("kcov area of {words} words is not a multiple of the page size ({page_words} words): kcov cannot mmap it")]
    AreaNotPageSized {
        /// Requested size.
        words: usize,
        /// Words per page.
        page_words: usize,
    },
    /// An operation was called in the wrong state (e.g. enable before init_trace).
    #[error("kcov {op}: {why}")]
    InvalidState {
        /// Operation.
        op: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// EBUSY from KCOV_ENABLE / KCOV_REMOTE_ENABLE (or KCOV_INIT_TRACE twice).
    #[error("kcov {op}: thread already has a kcov fd enabled (one kcov fd per thread: disable it or use another thread)")]
    ThreadBusy {
        /// Operation.
        op: &'static str,
    },
    /// EEXIST from KCOV_REMOTE_ENABLE.
    #[error("KCOV_REMOTE_ENABLE: common handle {handle:#018x} already registered, use a fresh instance (kcov::fresh_instance)")]
    HandleInUse {
        /// The common handle.
        handle: u64,
    },
    /// `common_handle(0)`: instance 0 means "no handle" to the kernel.
    #[error("kcov common handle instance must be non-zero")]
    ZeroInstance,
    /// A handle the kernel would reject.
    #[error("invalid kcov handle {handle:#018x}: {why}")]
    InvalidHandle {
        /// The handle.
        handle: u64,
        /// Why it is invalid.
        why: &'static str,
    },
    /// More than [`KCOV_REMOTE_MAX_HANDLES`] global handles.
    #[error("{count} global kcov handles, the kernel accepts at most {KCOV_REMOTE_MAX_HANDLES}")]
    TooManyHandles {
        /// Number given.
        count: usize,
    },
    /// mmap of the area failed.
    #[error("mmap of the kcov area ({words} words) failed: {source}")]
    Mmap {
        /// Area size.
        words: usize,
        /// The error.
        source: std::io::Error,
    },
    /// Any other ioctl failure.
    #[error("kcov {op} failed: {source}")]
    Ioctl {
        /// Operation.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------------------------

/// The common handle for `instance`: subsystem 0 (top byte zero), bytes 4..7 zero, instance in
/// the low 4 bytes. Instance 0 is refused (the kernel reads it as "no common handle").
pub fn common_handle(instance: u32) -> Result<u64, KcovError> {
    if instance == 0 {
        return Err(KcovError::ZeroInstance);
    }
    Ok(KCOV_SUBSYSTEM_COMMON | u64::from(instance))
}

/// A USB (global) handle for `bus` (`kcov_remote_handle(KCOV_SUBSYSTEM_USB, bus)`).
pub fn usb_handle(bus: u32) -> u64 {
    KCOV_SUBSYSTEM_USB | u64::from(bus)
}

/// Subsystem byte of a handle (0 = common, 1 = USB).
pub fn handle_subsystem(handle: u64) -> u8 {
    (handle >> 56) as u8
}

/// Instance part of a handle.
pub fn handle_instance(handle: u64) -> u32 {
    (handle & KCOV_INSTANCE_MASK) as u32
}

/// Mirror of the kernel's `kcov_check_handle()`: bytes 4..7 must be zero, the subsystem known;
/// a common handle is valid if `common_valid` (instance non-zero) or `zero_valid` (instance
/// zero), a USB handle if `uncommon_valid`.
pub fn check_handle(
    handle: u64,
    common_valid: bool,
    uncommon_valid: bool,
    zero_valid: bool,
) -> bool {
    if handle & !(KCOV_SUBSYSTEM_MASK | KCOV_INSTANCE_MASK) != 0 {
        return false;
    }
    match handle & KCOV_SUBSYSTEM_MASK {
        KCOV_SUBSYSTEM_COMMON => {
            if handle & KCOV_INSTANCE_MASK != 0 {
                common_valid
            } else {
                zero_valid
            }
        }
        KCOV_SUBSYSTEM_USB => uncommon_valid,
        _ => false,
    }
}

fn validate_handles(common: u64, global: &[u64]) -> Result<(), KcovError> {
    if !check_handle(common, true, false, true) {
        return Err(KcovError::InvalidHandle {
            handle: common,
            why: "a common handle needs subsystem 0 and bytes 4..7 zero",
        });
    }
    if global.len() > KCOV_REMOTE_MAX_HANDLES {
        return Err(KcovError::TooManyHandles {
            count: global.len(),
        });
    }
    for &h in global {
        if !check_handle(h, false, true, false) {
            return Err(KcovError::InvalidHandle {
                handle: h,
                why: "a global handle needs a non-common subsystem (USB) and bytes 4..7 zero",
            });
        }
    }
    Ok(())
}

/// Mixes a 64-bit seed into a non-zero u32 instance (splitmix64 finaliser).
pub fn instance_from_seed(seed: u64) -> u32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    match (z ^ (z >> 32)) as u32 {
        0 => 1,
        v => v,
    }
}

/// A fresh non-zero instance for [`common_handle`], different for each call: getrandom(2)
/// without blocking (early boot may lack entropy), else time, pid and a per-process counter.
pub fn fresh_instance() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut seed = os_random().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    seed ^= now ^ (u64::from(std::process::id()) << 32);
    seed ^= n.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    instance_from_seed(seed)
}

#[cfg(target_os = "linux")]
fn os_random() -> Option<u64> {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    (n == buf.len() as isize).then(|| u64::from_ne_bytes(buf))
}

#[cfg(not(target_os = "linux"))]
fn os_random() -> Option<u64> {
    None
}

// ---------------------------------------------------------------------------------------------
// struct kcov_remote_arg
// ---------------------------------------------------------------------------------------------

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

/// Builds the `KCOV_REMOTE_ENABLE` argument: header plus handles, as u64 words so the buffer
/// is 8-byte aligned. Validates the handles as the kernel would.
pub fn remote_arg(
    mode: KcovMode,
    area_words: u32,
    common_handle: u64,
    global_handles: &[u64],
) -> Result<Vec<u64>, KcovError> {
    validate_handles(common_handle, global_handles)?;
    let hdr = KcovRemoteArg {
        trace_mode: mode as u32,
        area_size: area_words,
        num_handles: global_handles.len() as u32,
        pad: 0,
        common_handle,
    };
    let mut bytes = [0u8; size_of::<KcovRemoteArg>()];
    let mut put = |off: usize, b: &[u8]| bytes[off..off + b.len()].copy_from_slice(b);
    put(
        offset_of!(KcovRemoteArg, trace_mode),
        &hdr.trace_mode.to_ne_bytes(),
    );
    put(
        offset_of!(KcovRemoteArg, area_size),
        &hdr.area_size.to_ne_bytes(),
    );
    put(
        offset_of!(KcovRemoteArg, num_handles),
        &hdr.num_handles.to_ne_bytes(),
    );
    put(offset_of!(KcovRemoteArg, pad), &hdr.pad.to_ne_bytes());
    put(
        offset_of!(KcovRemoteArg, common_handle),
        &hdr.common_handle.to_ne_bytes(),
    );
    let mut words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_ne_bytes(a)
        })
        .collect();
    words.extend_from_slice(global_handles);
    Ok(words)
}

// ---------------------------------------------------------------------------------------------
// Area parsing (pure)
// ---------------------------------------------------------------------------------------------

/// What to copy out of an area whose word 0 (kernel-written, untrusted) says `reported_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPlan {
    /// Entries to copy (reported count clamped to the area's capacity).
    pub entries: usize,
    /// Words to copy, starting at word 1 (`entries * words_per_entry`).
    pub words: usize,
    /// The area has no room for another entry: the kernel may have dropped coverage.
    pub overflow: bool,
}

/// Decides what to copy from an area of `area_words` words (including the count word).
///
/// Capacity is `(area_words - 1) / words_per_entry` entries. Overflow is reported when
/// `reported_count >= capacity`, i.e. no further entry fits: in PC mode that is
/// `count >= area_words - 1`; in CMP mode it includes `count * 4 + 1 >= area_words` and also
/// catches a full area whose size is not `4k + 1`. A count beyond capacity (corrupt or racing)
/// is clamped.
pub fn plan_drain(reported_count: u64, area_words: usize, mode: KcovMode) -> DrainPlan {
    let wpe = mode.words_per_entry();
    let capacity = area_words.saturating_sub(1) / wpe;
    let count = usize::try_from(reported_count).unwrap_or(usize::MAX);
    let entries = count.min(capacity);
    DrainPlan {
        entries,
        words: entries * wpe,
        overflow: count >= capacity,
    }
}

/// Coverage copied out of a kcov area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Trace mode the area was filled in.
    pub mode: KcovMode,
    /// Raw entry words after the count word: PCs, or 4 words per CMP entry.
    pub words: Vec<u64>,
    /// The area was full: coverage may be missing.
    pub overflow: bool,
    /// Word 0 as the kernel wrote it (before clamping).
    pub reported_count: u64,
}

impl Coverage {
    /// Number of entries (PCs or comparisons).
    pub fn entry_count(&self) -> usize {
        self.words.len() / self.mode.words_per_entry()
    }

    /// True if no entries were collected.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// PCs: every word in PC mode, the `pc` of each entry in CMP mode.
    pub fn pcs(&self) -> impl Iterator<Item = u64> + '_ {
        let (skip, step) = match self.mode {
            KcovMode::Pc => (0, 1),
            KcovMode::Cmp => (3, 4),
        };
        self.words.iter().copied().skip(skip).step_by(step)
    }

    /// CMP entries (empty in PC mode).
    pub fn cmp_entries(&self) -> impl Iterator<Item = CmpEntry> + '_ {
        let words: &[u64] = match self.mode {
            KcovMode::Pc => &[],
            KcovMode::Cmp => &self.words,
        };
        parse_cmp(words)
    }

    /// Splits into wire chunks (see [`kcov_wire::chunk_coverage`]).
    pub fn chunks<'a>(
        &'a self,
        workload: &'a str,
        source: kcov_wire::CoverageSource,
        first_seq: u32,
        max_words: usize,
    ) -> Result<kcov_wire::CoverageChunks<'a>, kcov_wire::WireError> {
        kcov_wire::chunk_coverage(
            workload,
            source,
            self.mode,
            self.overflow,
            &self.words,
            first_seq,
            max_words,
        )
    }
}

/// Parses an area snapshot (`area[0]` = count, entries follow). Pure: used on in-memory copies
/// and in tests; [`Kcov::drain`] applies the same [`plan_drain`] to the live mapping.
pub fn parse_area(area: &[u64], mode: KcovMode) -> Coverage {
    let reported_count = area.first().copied().unwrap_or(0);
    let plan = plan_drain(reported_count, area.len(), mode);
    Coverage {
        mode,
        words: area.iter().skip(1).take(plan.words).copied().collect(),
        overflow: plan.overflow,
        reported_count,
    }
}

/// Word access to a kcov area (word 0 = count, entries follow), as an [`AreaCursor`] reads it.
/// Implemented by the live mapping ([`MappedArea`]: word 0 an acquire load, entries relaxed
/// atomic loads) and by plain slices (tests, in-memory copies).
pub trait AreaWords {
    /// Area size in words, including the count word.
    fn area_len(&self) -> usize;
    /// Word `i` (`i < area_len()`); word 0 is the kernel's entry count (untrusted).
    fn area_word(&self, i: usize) -> u64;
}

impl AreaWords for [u64] {
    fn area_len(&self) -> usize {
        self.len()
    }
    fn area_word(&self, i: usize) -> u64 {
        self.get(i).copied().unwrap_or(0)
    }
}

/// What one [`AreaCursor::take_new`] read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewEntries {
    /// Raw words of the entries appended since the last read (whole entries, in area order).
    pub words: Vec<u64>,
    /// The area is full (see [`plan_drain`]): the kernel may have dropped coverage.
    pub overflow: bool,
    /// Counted entries left for a later read because their pc word still reads 0 (a local
    /// writer bumps the count before it stores the pc).
    pub held_back: usize,
}

/// Reads a kcov area incrementally while the kernel still appends to it: each
/// [`take_new`](Self::take_new) returns the entries after those already taken, so shipping
/// every result in turn ships each entry exactly once, in area order.
///
/// When an entry may be taken: remote sections are copied into the area by
/// `kcov_move_area()` at `kcov_remote_stop()`, entries first and the count after (x86 keeps
/// the stores in order), so every counted entry is written. Local tracing
/// (`__sanitizer_cov_trace_pc`, `write_comp_data`) stores the count *before* the entry, so a
/// freshly counted slot may still read 0: an entry whose pc word (the last of its words) is
/// 0, and everything after it, is held back until a later read — no kernel PC is 0. The
/// last read after the writer stopped (`final_read`) takes every counted entry as it is, as a
/// one-shot drain would.
///
/// Nothing here resets the area; a count below what was taken (someone reset it) yields
/// nothing until it grows past the taken part again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaCursor {
    mode: KcovMode,
    /// Words after the count word already taken (a multiple of the entry size).
    taken: usize,
}

impl AreaCursor {
    /// A cursor at the start of a fresh area filled in `mode`.
    pub fn new(mode: KcovMode) -> Self {
        AreaCursor { mode, taken: 0 }
    }

    /// Trace mode the cursor reads.
    pub fn mode(&self) -> KcovMode {
        self.mode
    }

    /// Words (after the count word) taken so far.
    pub fn taken_words(&self) -> usize {
        self.taken
    }

    /// The entries appended since the last call. Reads word 0 once (clamped with
    /// [`plan_drain`], so never past the area), then the new entries' words.
    pub fn take_new<A: AreaWords + ?Sized>(&mut self, area: &A, final_read: bool) -> NewEntries {
        let len = area.area_len();
        let plan = plan_drain(area.area_word(0), len, self.mode);
        let wpe = self.mode.words_per_entry();
        let mut out = NewEntries {
            overflow: plan.overflow,
            ..NewEntries::default()
        };
        let end = plan.words;
        if end <= self.taken {
            return out;
        }
        out.words.reserve(end - self.taken);
        let mut pos = self.taken;
        while pos < end {
            // Entry words are area words 1 + pos .. 1 + pos + wpe; end < len, so in bounds.
            let pc = area.area_word(pos + wpe);
            if pc == 0 && !final_read {
                out.held_back = (end - pos) / wpe;
                break;
            }
            out.words.extend((1..=wpe).map(|k| area.area_word(pos + k)));
            pos += wpe;
        }
        self.taken = pos;
        out
    }
}

/// One CMP-mode record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmpEntry {
    /// Raw type word: bit 0 [`KCOV_CMP_CONST`], bits 1-2 log2(size).
    pub ty: u64,
    /// First operand.
    pub arg1: u64,
    /// Second operand.
    pub arg2: u64,
    /// PC of the comparison (return address of the hook call).
    pub pc: u64,
}

impl CmpEntry {
    /// From the 4 area words `type, arg1, arg2, pc`.
    pub fn from_words(w: [u64; 4]) -> Self {
        CmpEntry {
            ty: w[0],
            arg1: w[1],
            arg2: w[2],
            pc: w[3],
        }
    }

    /// One operand is a compile-time constant (`__sanitizer_cov_trace_const_cmp*`).
    pub fn is_const(&self) -> bool {
        self.ty & KCOV_CMP_CONST != 0
    }

    /// Operand size in bytes: 1, 2, 4 or 8.
    pub fn size_bytes(&self) -> u8 {
        1 << ((self.ty & KCOV_CMP_SIZE_MASK) >> 1)
    }
}

/// CMP entries of raw area words (4 per entry; a trailing partial entry is ignored).
pub fn parse_cmp(words: &[u64]) -> impl Iterator<Item = CmpEntry> + '_ {
    words
        .chunks_exact(4)
        .map(|c| CmpEntry::from_words([c[0], c[1], c[2], c[3]]))
}

// ---------------------------------------------------------------------------------------------
// The kcov handle (Linux)
// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
pub use sys::{page_size, Kcov, MappedArea};

#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::marker::PhantomData;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::path::Path;
    use std::ptr::NonNull;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A shared mapping of a kcov area (`words` u64 words, word 0 = count). The kernel writes
    /// it concurrently (remote sections land from other CPUs at `kcov_remote_stop()`), so it
    /// is only accessed through raw pointers, every word atomically (word 0 with
    /// acquire/release, entries relaxed). That makes it `Send` and `Sync`: another thread may
    /// read it while the owning thread's workload runs. It is unmapped when dropped; share it
    /// as an `Arc` ([`Kcov::shared_area`]) so no reader outlives the mapping.
    #[derive(Debug)]
    pub struct MappedArea {
        ptr: NonNull<u64>,
        words: usize,
    }

    // SAFETY: the mapping is owned by the MappedArea (unmapped only in Drop) and every access
    // to it is an atomic load or store, so using it from several threads is free of data
    // races on our side; the kernel's concurrent writes are what the atomics are for.
    unsafe impl Send for MappedArea {}
    // SAFETY: as for Send: `&MappedArea` only allows atomic word accesses.
    unsafe impl Sync for MappedArea {}

    impl MappedArea {
        /// Maps `words` words of `fd` at offset 0 (exactly `words * 8` bytes, MAP_SHARED).
        fn map_kcov(fd: RawFd, words: usize) -> Result<Self, KcovError> {
            Self::mmap(fd, words, libc::MAP_SHARED)
        }

        /// An anonymous private area of `words` words (tests; an in-memory stand-in).
        pub fn anonymous(words: usize) -> Result<Self, KcovError> {
            Self::mmap(-1, words, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
        }

        fn mmap(fd: RawFd, words: usize, flags: libc::c_int) -> Result<Self, KcovError> {
            if !(MIN_AREA_WORDS..=MAX_AREA_WORDS).contains(&words) {
                return Err(KcovError::InvalidAreaSize { words });
            }
            // SAFETY: a fresh mapping at a kernel-chosen address; no existing memory is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    words * 8,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    fd,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(KcovError::Mmap {
                    words,
                    source: io::Error::last_os_error(),
                });
            }
            let ptr = NonNull::new(p.cast::<u64>()).ok_or(KcovError::Mmap {
                words,
                source: io::Error::other("mmap returned NULL"),
            })?;
            Ok(MappedArea { ptr, words })
        }

        /// Area size in words, including the count word.
        pub fn words(&self) -> usize {
            self.words
        }

        fn cell(&self, i: usize) -> Option<&AtomicU64> {
            // SAFETY: i < words, so the word lies inside the mapping, which is page aligned
            // (so every word is 8-byte aligned) and lives as long as self; from our side every
            // word is only ever accessed atomically.
            (i < self.words).then(|| unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(i)) })
        }

        fn count_cell(&self) -> &AtomicU64 {
            // SAFETY: the mapping is page aligned (so 8-byte aligned), at least 2 words long
            // (checked when mapping) and lives as long as self; accessed only atomically.
            unsafe { AtomicU64::from_ptr(self.ptr.as_ptr()) }
        }

        /// Word 0 as the kernel wrote it (acquire load; untrusted).
        pub fn count(&self) -> u64 {
            self.count_cell().load(Ordering::Acquire)
        }

        /// Sets word 0 to 0 (release store), so the kernel starts appending at word 1 again.
        pub fn reset(&self) {
            self.count_cell().store(0, Ordering::Release);
        }

        /// Reads word `i` (word 0 an acquire load, entries relaxed), `None` out of bounds.
        pub fn read_word(&self, i: usize) -> Option<u64> {
            let order = if i == 0 {
                Ordering::Acquire
            } else {
                Ordering::Relaxed
            };
            self.cell(i).map(|c| c.load(order))
        }

        /// Writes word `i` (word 0 a release store, entries relaxed). For tests and for
        /// seeding; ignored out of bounds.
        pub fn write_word(&self, i: usize, v: u64) {
            let order = if i == 0 {
                Ordering::Release
            } else {
                Ordering::Relaxed
            };
            if let Some(c) = self.cell(i) {
                c.store(v, order);
            }
        }

        /// Copies the coverage out: reads the count once, clamps it with [`plan_drain`], then
        /// copies exactly the planned words (never past the mapping).
        pub fn snapshot(&self, mode: KcovMode) -> Coverage {
            let reported_count = self.count();
            let plan = plan_drain(reported_count, self.words, mode);
            // plan.words <= words - 1, so 1..=plan.words is inside the mapping.
            let words: Vec<u64> = (1..=plan.words).map(|i| self.area_word(i)).collect();
            Coverage {
                mode,
                words,
                overflow: plan.overflow,
                reported_count,
            }
        }
    }

    impl AreaWords for MappedArea {
        fn area_len(&self) -> usize {
            self.words
        }
        fn area_word(&self, i: usize) -> u64 {
            self.read_word(i).unwrap_or(0)
        }
    }

    impl Drop for MappedArea {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly the range mapped in `mmap`; nothing borrows it any more.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.words * 8);
            }
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum State {
        /// Opened; KCOV_INIT_TRACE not done.
        Open,
        /// Initialised and mapped, not enabled.
        Ready,
        /// KCOV_ENABLE done on this thread.
        Local,
        /// KCOV_REMOTE_ENABLE done on this thread.
        Remote,
    }

    /// An open kcov file descriptor with its area. Dropping it disables (if enabled) and
    /// closes; the area is unmapped with the last `Arc` of it ([`Kcov::shared_area`]), which
    /// may outlive the fd (the mapping keeps the kcov file, and so the area, alive).
    #[derive(Debug)]
    pub struct Kcov {
        area: Option<Arc<MappedArea>>,
        fd: OwnedFd,
        state: State,
        mode: KcovMode,
        path: String,
        /// kcov binds an enable to the calling thread: keep the handle on it (not Send/Sync).
        _one_thread: PhantomData<*const ()>,
    }

    /// The system page size in bytes (4096 if sysconf fails).
    pub fn page_size() -> usize {
        // SAFETY: sysconf has no memory-safety preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(p).ok().filter(|&p| p >= 8).unwrap_or(4096)
    }

    fn errno_of(e: &io::Error) -> i32 {
        e.raw_os_error().unwrap_or(0)
    }

    impl Kcov {
        /// Opens [`DEFAULT_PATH`].
        pub fn open_default() -> Result<Self, KcovError> {
            Self::open(DEFAULT_PATH)
        }

        /// Opens the kcov file at `path` (read-write, close-on-exec).
        pub fn open(path: impl AsRef<Path>) -> Result<Self, KcovError> {
            let path = path.as_ref();
            let shown = path.display().to_string();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|source| {
                    if source.kind() == io::ErrorKind::NotFound {
                        KcovError::NotAvailable {
                            path: shown.clone(),
                            source,
                        }
                    } else {
                        KcovError::Open {
                            path: shown.clone(),
                            source,
                        }
                    }
                })?;
            Ok(Kcov {
                area: None,
                fd: file.into(),
                state: State::Open,
                mode: KcovMode::Pc,
                path: shown,
                _one_thread: PhantomData,
            })
        }

        /// Wraps an already open kcov fd (state: not initialised).
        ///
        /// # Safety
        /// `fd` must be an open file descriptor that nothing else owns.
        pub unsafe fn from_raw_fd(fd: RawFd) -> Self {
            Kcov {
                area: None,
                // SAFETY: forwarded to the caller.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                state: State::Open,
                mode: KcovMode::Pc,
                path: format!("fd {fd}"),
                _one_thread: PhantomData,
            }
        }

        /// Path this handle was opened from.
        pub fn path(&self) -> &str {
            &self.path
        }

        fn ioctl(&self, req: u32, arg: libc::c_ulong) -> Result<(), io::Error> {
            // SAFETY: kcov ioctls either take an integer argument or (KCOV_REMOTE_ENABLE) a
            // pointer the caller keeps alive for the call.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }

        /// `KCOV_INIT_TRACE(words)` then mmap of exactly `words * 8` bytes.
        /// `words` must be in `2..=INT_MAX/8` and counts the count word.
        pub fn init_trace(&mut self, words: usize) -> Result<(), KcovError> {
            if self.state != State::Open {
                return Err(KcovError::InvalidState {
                    op: "init_trace",
                    why: "already initialised (KCOV_INIT_TRACE can be done once per fd)",
                });
            }
            if !(MIN_AREA_WORDS..=MAX_AREA_WORDS).contains(&words) {
                return Err(KcovError::InvalidAreaSize { words });
            }
            // kcov_mmap() fails with EINVAL unless vm_end - vm_start == size * 8, and the
            // mapping length is page-rounded (found on the guest kernel: 64 words fails).
            let page_words = page_size() / 8;
            if !words.is_multiple_of(page_words) {
                return Err(KcovError::AreaNotPageSized { words, page_words });
            }
            self.ioctl(KCOV_INIT_TRACE, words as libc::c_ulong)
                .map_err(|source| match errno_of(&source) {
                    libc::EBUSY => KcovError::ThreadBusy {
                        op: "KCOV_INIT_TRACE",
                    },
                    _ => KcovError::Ioctl {
                        op: "KCOV_INIT_TRACE",
                        source,
                    },
                })?;
            self.area = Some(Arc::new(MappedArea::map_kcov(self.fd.as_raw_fd(), words)?));
            self.state = State::Ready;
            Ok(())
        }

        fn ready(&self, op: &'static str) -> Result<&MappedArea, KcovError> {
            match (self.area.as_deref(), self.state) {
                (Some(a), State::Ready) => Ok(a),
                (None, _) => Err(KcovError::InvalidState {
                    op,
                    why: "call init_trace first",
                }),
                _ => Err(KcovError::InvalidState {
                    op,
                    why: "already enabled; disable first",
                }),
            }
        }

        /// `KCOV_ENABLE(mode)`: trace the calling thread's own syscalls.
        pub fn enable_local(&mut self, mode: KcovMode) -> Result<(), KcovError> {
            self.ready("enable_local")?;
            self.ioctl(KCOV_ENABLE, mode as libc::c_ulong)
                .map_err(|source| match errno_of(&source) {
                    libc::EBUSY => KcovError::ThreadBusy { op: "KCOV_ENABLE" },
                    _ => KcovError::Ioctl {
                        op: "KCOV_ENABLE",
                        source,
                    },
                })?;
            self.state = State::Local;
            self.mode = mode;
            Ok(())
        }

        /// `KCOV_REMOTE_ENABLE`: collect coverage of kernel threads that run remote sections
        /// under `common_handle` (0 = none; see [`common_handle`]) or one of `global_handles`
        /// (USB subsystem). The remote area size is the area size given to `init_trace`.
        pub fn remote_enable(
            &mut self,
            mode: KcovMode,
            common_handle: u64,
            global_handles: &[u64],
        ) -> Result<(), KcovError> {
            let words = self.ready("remote_enable")?.words();
            let arg = remote_arg(mode, words as u32, common_handle, global_handles)?;
            self.ioctl(KCOV_REMOTE_ENABLE, arg.as_ptr() as libc::c_ulong)
                .map_err(|source| match errno_of(&source) {
                    libc::EBUSY => KcovError::ThreadBusy {
                        op: "KCOV_REMOTE_ENABLE",
                    },
                    libc::EEXIST => KcovError::HandleInUse {
                        handle: common_handle,
                    },
                    _ => KcovError::Ioctl {
                        op: "KCOV_REMOTE_ENABLE",
                        source,
                    },
                })?;
            self.state = State::Remote;
            self.mode = mode;
            Ok(())
        }

        /// `KCOV_DISABLE` (must run on the thread that enabled). The area stays mapped and
        /// can still be drained; the fd can be enabled again.
        pub fn disable(&mut self) -> Result<(), KcovError> {
            if !self.is_enabled() {
                return Err(KcovError::InvalidState {
                    op: "disable",
                    why: "not enabled",
                });
            }
            self.ioctl(KCOV_DISABLE, 0)
                .map_err(|source| KcovError::Ioctl {
                    op: "KCOV_DISABLE (from another thread than the one that enabled?)",
                    source,
                })?;
            self.state = State::Ready;
            Ok(())
        }

        /// True between a successful enable and disable.
        pub fn is_enabled(&self) -> bool {
            matches!(self.state, State::Local | State::Remote)
        }

        /// Mode of the last enable (PC before any).
        pub fn mode(&self) -> KcovMode {
            self.mode
        }

        /// The mapped area, once `init_trace` succeeded.
        pub fn area(&self) -> Option<&MappedArea> {
            self.area.as_deref()
        }

        /// The mapped area as a shared handle, once `init_trace` succeeded: another thread
        /// may read it (e.g. with an [`AreaCursor`]) while this thread's workload runs, and
        /// the mapping stays until the last handle is dropped, after this `Kcov` if need be.
        pub fn shared_area(&self) -> Option<Arc<MappedArea>> {
            self.area.clone()
        }

        fn mapped(&self, op: &'static str) -> Result<&MappedArea, KcovError> {
            self.area.as_deref().ok_or(KcovError::InvalidState {
                op,
                why: "call init_trace first",
            })
        }

        /// Area size in words (including the count word), once initialised.
        pub fn area_words(&self) -> Option<usize> {
            self.area.as_deref().map(MappedArea::words)
        }

        /// Writes 0 to word 0 (atomic store): coverage collected from now on starts at word 1.
        pub fn reset(&self) -> Result<(), KcovError> {
            self.mapped("reset")?.reset();
            Ok(())
        }

        /// Copies the coverage out of the area (count read atomically, clamped, entries read
        /// volatile) in the mode of the last enable. Does not reset.
        pub fn drain(&self) -> Result<Coverage, KcovError> {
            Ok(self.mapped("drain")?.snapshot(self.mode))
        }

        /// [`drain`](Self::drain) then [`reset`](Self::reset). Coverage the kernel appends
        /// between the two is lost: quiesce the workload first.
        pub fn take(&self) -> Result<Coverage, KcovError> {
            let area = self.mapped("take")?;
            let cov = area.snapshot(self.mode);
            area.reset();
            Ok(cov)
        }
    }

    impl AsRawFd for Kcov {
        fn as_raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
    }

    impl Drop for Kcov {
        fn drop(&mut self) {
            if self.is_enabled() {
                // Best effort: fails with EINVAL if dropped on another thread than the one
                // that enabled; the kernel then drops the association at thread exit.
                let _ = self.ioctl(KCOV_DISABLE, 0);
            }
            // `area` (munmap, unless shared) and then `fd` (close) drop in field order.
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn remote_arg_layout() {
        assert_eq!(size_of::<KcovRemoteArg>(), 24);
        assert_eq!(std::mem::align_of::<KcovRemoteArg>(), 8);
        assert_eq!(offset_of!(KcovRemoteArg, trace_mode), 0);
        assert_eq!(offset_of!(KcovRemoteArg, area_size), 4);
        assert_eq!(offset_of!(KcovRemoteArg, num_handles), 8);
        assert_eq!(offset_of!(KcovRemoteArg, common_handle), 16);

        let h = common_handle(0xdead_beef).unwrap();
        let arg = remote_arg(KcovMode::Cmp, 1 << 20, h, &[usb_handle(3), usb_handle(7)]).unwrap();
        assert_eq!(arg.len(), 5);
        let bytes: Vec<u8> = arg.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0), KCOV_TRACE_CMP);
        assert_eq!(u32_at(4), 1 << 20);
        assert_eq!(u32_at(8), 2);
        assert_eq!(u32_at(12), 0, "padding is zero");
        assert_eq!(u64_at(16), 0xdead_beef);
        assert_eq!(u64_at(24), 0x0100_0000_0000_0003);
        assert_eq!(u64_at(32), 0x0100_0000_0000_0007);
        assert_eq!(arg.as_ptr() as usize % 8, 0);

        let plain = remote_arg(KcovMode::Pc, 64, 1, &[]).unwrap();
        assert_eq!(plain.len(), 3);
        // Little-endian targets: the exact bytes.
        #[cfg(target_endian = "little")]
        assert_eq!(plain, [64 << 32, 0, 1]);
    }

    #[test]
    fn remote_arg_validates_handles() {
        assert!(
            remote_arg(KcovMode::Pc, 64, 0, &[]).is_ok(),
            "no common handle is fine"
        );
        for bad in [
            1u64 << 32,
            0x00ff_0000_0000_0001,
            usb_handle(1),
            0x0200_0000_0000_0001,
        ] {
            assert!(
                matches!(
                    remote_arg(KcovMode::Pc, 64, bad, &[]),
                    Err(KcovError::InvalidHandle { .. })
                ),
                "{bad:#x}"
            );
        }
        for bad in [1u64, 0, 0x0100_0001_0000_0000, 0x0200_0000_0000_0000] {
            assert!(matches!(
                remote_arg(KcovMode::Pc, 64, 1, &[bad]),
                Err(KcovError::InvalidHandle { .. })
            ));
        }
        let many = vec![usb_handle(1); KCOV_REMOTE_MAX_HANDLES + 1];
        assert!(matches!(
            remote_arg(KcovMode::Pc, 64, 1, &many),
            Err(KcovError::TooManyHandles { count: 257 })
        ));
        assert!(remote_arg(KcovMode::Pc, 64, 1, &many[1..]).is_ok());
    }

    #[test]
    fn handle_construction() {
        assert!(matches!(common_handle(0), Err(KcovError::ZeroInstance)));
        for inst in [1u32, 0x42, 0xdead_beef, u32::MAX] {
            let h = common_handle(inst).unwrap();
            assert_eq!(h, u64::from(inst));
            assert_eq!(handle_subsystem(h), 0);
            assert_eq!(handle_instance(h), inst);
            assert_eq!(h >> 32, 0, "bytes 4..7 and the subsystem byte are zero");
            assert!(check_handle(h, true, false, false));
        }
        assert_eq!(usb_handle(5), 0x0100_0000_0000_0005);
        assert_eq!(handle_subsystem(usb_handle(5)), 1);
        // kcov_check_handle semantics.
        assert!(check_handle(0, false, false, true));
        assert!(!check_handle(0, true, true, false));
        assert!(!check_handle(1, false, true, true));
        assert!(check_handle(usb_handle(0), false, true, false));
        assert!(!check_handle(usb_handle(0), true, false, true));
        assert!(
            !check_handle(1 << 40, true, true, true),
            "bytes 4..7 must be zero"
        );
        assert!(
            !check_handle(0x0200_0000_0000_0001, true, true, true),
            "unknown subsystem"
        );
    }

    #[test]
    fn fresh_instances_are_nonzero_and_vary() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let i = fresh_instance();
            assert_ne!(i, 0);
            assert!(common_handle(i).is_ok());
            seen.insert(i);
        }
        assert!(seen.len() > 990, "only {} distinct instances", seen.len());
        for s in 0..10_000u64 {
            assert_ne!(instance_from_seed(s), 0);
        }
    }

    #[test]
    fn cmp_entries_decode_type_bits() {
        let words = [
            0,
            1,
            2,
            0x100, // 1 byte, not const
            1,
            3,
            4,
            0x200, // 1 byte, const
            2,
            5,
            6,
            0x300, // 2 bytes
            5,
            7,
            8,
            0x400, // 4 bytes, const
            6,
            u64::MAX,
            0,
            0x500, // 8 bytes
            7,
            9, // trailing partial entry: ignored
        ];
        let e: Vec<CmpEntry> = parse_cmp(&words).collect();
        assert_eq!(e.len(), 5);
        assert_eq!(
            e.iter()
                .map(|e| (e.is_const(), e.size_bytes()))
                .collect::<Vec<_>>(),
            [(false, 1), (true, 1), (false, 2), (true, 4), (false, 8)]
        );
        assert_eq!(
            e[4],
            CmpEntry {
                ty: 6,
                arg1: u64::MAX,
                arg2: 0,
                pc: 0x500
            }
        );
        // Upper type bits do not disturb the decode.
        let odd = CmpEntry::from_words([0xf0 | 7, 0, 0, 0]);
        assert!(odd.is_const());
        assert_eq!(odd.size_bytes(), 8);

        let cov = parse_area(&[2, 5, 1, 2, 0xa, 3, 3, 4, 0xb, 0], KcovMode::Cmp);
        assert_eq!(cov.entry_count(), 2);
        assert_eq!(cov.pcs().collect::<Vec<_>>(), [0xa, 0xb]);
        assert_eq!(
            cov.cmp_entries()
                .map(|e| e.size_bytes())
                .collect::<Vec<_>>(),
            [4, 2]
        );
        assert_eq!(
            parse_area(&[1, 7, 0], KcovMode::Pc).cmp_entries().count(),
            0
        );
    }

    #[test]
    fn drain_plan_pc_mode() {
        // 8-word area: count word + 7 PCs.
        let p = |c| plan_drain(c, 8, KcovMode::Pc);
        assert_eq!(
            p(0),
            DrainPlan {
                entries: 0,
                words: 0,
                overflow: false
            }
        );
        assert_eq!(
            p(6),
            DrainPlan {
                entries: 6,
                words: 6,
                overflow: false
            }
        );
        assert_eq!(
            p(7),
            DrainPlan {
                entries: 7,
                words: 7,
                overflow: true
            },
            "count == words - 1"
        );
        assert_eq!(
            p(8),
            DrainPlan {
                entries: 7,
                words: 7,
                overflow: true
            },
            "clamped"
        );
        assert_eq!(
            p(u64::MAX),
            DrainPlan {
                entries: 7,
                words: 7,
                overflow: true
            }
        );
        // Degenerate areas never index out of bounds.
        assert_eq!(plan_drain(5, 0, KcovMode::Pc).words, 0);
        assert_eq!(plan_drain(5, 1, KcovMode::Pc).words, 0);
        assert_eq!(
            plan_drain(0, 2, KcovMode::Pc),
            DrainPlan {
                entries: 0,
                words: 0,
                overflow: false
            }
        );
        assert!(plan_drain(1, 2, KcovMode::Pc).overflow);
    }

    #[test]
    fn drain_plan_cmp_mode() {
        // 9 words = count + 2 entries exactly.
        let p = |c| plan_drain(c, 9, KcovMode::Cmp);
        assert_eq!(
            p(1),
            DrainPlan {
                entries: 1,
                words: 4,
                overflow: false
            }
        );
        assert_eq!(
            p(2),
            DrainPlan {
                entries: 2,
                words: 8,
                overflow: true
            },
            "2*4+1 >= 9"
        );
        assert_eq!(
            p(3),
            DrainPlan {
                entries: 2,
                words: 8,
                overflow: true
            }
        );
        // 12 words: room for 2 entries (11 / 4); full at 2 even though 2*4+1 < 12.
        let q = |c| plan_drain(c, 12, KcovMode::Cmp);
        assert!(!q(1).overflow);
        assert_eq!(
            q(2),
            DrainPlan {
                entries: 2,
                words: 8,
                overflow: true
            }
        );
        assert_eq!(plan_drain(u64::MAX, 12, KcovMode::Cmp).words, 8);
        // Too small for any entry: always "full".
        assert_eq!(
            plan_drain(0, 4, KcovMode::Cmp),
            DrainPlan {
                entries: 0,
                words: 0,
                overflow: true
            }
        );
        // The brief's rule is implied: count*4+1 >= area_words => overflow.
        for area in 2..40usize {
            for c in 0..12u64 {
                let plan = plan_drain(c, area, KcovMode::Cmp);
                if c * 4 + 1 >= area as u64 {
                    assert!(plan.overflow, "area {area} count {c}");
                }
                assert!(plan.words < area);
            }
        }
    }

    #[test]
    fn parse_area_copies_and_clamps() {
        let cov = parse_area(&[3, 10, 20, 30, 99, 99], KcovMode::Pc);
        assert_eq!(cov.words, [10, 20, 30]);
        assert!(!cov.overflow);
        assert_eq!(cov.reported_count, 3);
        let cov = parse_area(&[1000, 10, 20, 30], KcovMode::Pc);
        assert_eq!(cov.words, [10, 20, 30]);
        assert!(cov.overflow);
        assert_eq!(cov.reported_count, 1000);
        let cov = parse_area(&[], KcovMode::Pc);
        assert!(cov.is_empty());
        let cov = parse_area(&[0, 0], KcovMode::Pc);
        assert!(cov.is_empty() && !cov.overflow);
    }

    #[test]
    fn coverage_chunks_for_the_wire() {
        let cov = parse_area(&[3, 10, 20, 30, 0], KcovMode::Pc);
        let chunks: Vec<_> = cov
            .chunks("w", kcov_wire::CoverageSource::Remote, 0, 2)
            .unwrap()
            .collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].words, [10, 20]);
        assert_eq!(chunks[1].words, [30]);
    }

    /// Takes everything through `c` until nothing new comes, then a final read.
    fn take_all(c: &mut AreaCursor, area: &[u64]) -> Vec<u64> {
        let mut all = c.take_new(area, false).words;
        all.extend(c.take_new(area, true).words);
        all
    }

    #[test]
    fn cursor_takes_each_remote_entry_once() {
        // Remote sections land entries first, count after: every counted entry is written.
        let mut area = vec![0u64; 8];
        let mut c = AreaCursor::new(KcovMode::Pc);
        assert_eq!(c.take_new(&area[..], false), NewEntries::default());
        area[1..4].copy_from_slice(&[0x11, 0x12, 0x13]);
        area[0] = 2; // the third is written but not counted yet: not taken
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [0x11, 0x12]);
        assert!(!n.overflow);
        assert_eq!(c.taken_words(), 2);
        assert!(c.take_new(&area[..], false).words.is_empty(), "nothing new");
        area[0] = 3;
        area[4] = 0x14;
        assert_eq!(c.take_new(&area[..], false).words, [0x13]);
        area[0] = 4;
        assert_eq!(c.take_new(&area[..], false).words, [0x14]);
        // Full: 7 entries fit; a hostile count is clamped to the area and says overflow.
        area[5..8].copy_from_slice(&[0x15, 0x16, 0x17]);
        area[0] = u64::MAX;
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [0x15, 0x16, 0x17]);
        assert!(n.overflow);
        let n = c.take_new(&area[..], true);
        assert!(n.words.is_empty() && n.overflow, "{n:?}");
        assert_eq!(c.taken_words(), 7);
        // Concatenated, the reads are exactly what one drain at the end copies.
        let mut fresh = AreaCursor::new(KcovMode::Pc);
        assert_eq!(
            take_all(&mut fresh, &area),
            parse_area(&area, KcovMode::Pc).words
        );
    }

    #[test]
    fn cursor_holds_back_counted_but_unwritten_entries() {
        // Local tracing counts first and stores the pc after: a counted 0 is not written yet.
        let mut area = vec![0u64; 16];
        let mut c = AreaCursor::new(KcovMode::Pc);
        area[1] = 0x21;
        area[0] = 3; // slots 2 and 3 counted, not written
        let n = c.take_new(&area[..], false);
        assert_eq!((n.words.as_slice(), n.held_back), (&[0x21][..], 2));
        area[3] = 0x23; // the later slot lands first: still held behind slot 2
        let n = c.take_new(&area[..], false);
        assert_eq!((n.words.len(), n.held_back), (0, 2));
        area[2] = 0x22;
        assert_eq!(c.take_new(&area[..], false).words, [0x22, 0x23]);
        // The final read (writer stopped) takes what is counted as it is, zeros included,
        // exactly as a one-shot drain would.
        area[0] = 5;
        area[4] = 0x24;
        let n = c.take_new(&area[..], true);
        assert_eq!((n.words.as_slice(), n.held_back), (&[0x24, 0][..], 0));
        assert_eq!(c.taken_words(), 5);
        let mut fresh = AreaCursor::new(KcovMode::Pc);
        assert_eq!(
            take_all(&mut fresh, &area),
            parse_area(&area, KcovMode::Pc).words
        );
    }

    #[test]
    fn cursor_cmp_mode_takes_whole_entries() {
        // 13 words = count + 3 CMP entries (type, arg1, arg2, pc).
        let mut area = [0u64; 13];
        let mut c = AreaCursor::new(KcovMode::Cmp);
        area[1..5].copy_from_slice(&[1, 2, 3, 0xa0]);
        area[5..8].copy_from_slice(&[4, 5, 6]); // pc of entry 2 not written yet
        area[0] = 2;
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [1, 2, 3, 0xa0]);
        assert_eq!(n.held_back, 1);
        area[8] = 0xb0;
        area[9..13].copy_from_slice(&[7, 8, 9, 0xc0]);
        area[0] = 3;
        let n = c.take_new(&area[..], false);
        assert_eq!(n.words, [4, 5, 6, 0xb0, 7, 8, 9, 0xc0]);
        assert!(n.overflow, "3 entries fill 13 words");
        assert_eq!(c.taken_words(), 12);
        assert_eq!(c.mode(), KcovMode::Cmp);
    }

    #[test]
    fn cursor_ignores_a_shrinking_count_and_tiny_areas() {
        let mut area = [3u64, 0x31, 0x32, 0x33, 0];
        let mut c = AreaCursor::new(KcovMode::Pc);
        assert_eq!(c.take_new(&area[..], false).words.len(), 3);
        area[0] = 1; // reset behind our back: nothing is taken twice
        assert!(c.take_new(&area[..], true).words.is_empty());
        area[0] = 4;
        area[4] = 0x34;
        assert_eq!(c.take_new(&area[..], false).words, [0x34]);
        for len in 0..3 {
            let tiny = vec![u64::MAX; len];
            let mut c = AreaCursor::new(KcovMode::Cmp);
            assert!(c.take_new(&tiny[..], true).words.is_empty());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn cursor_reads_a_shared_area_while_another_thread_writes_it() {
        use std::sync::Arc;
        // A writer in the order local tracing uses (count, then pc) and a reader on another
        // thread: every entry is taken once, in order, none before it was written; the
        // reader's handle keeps the mapping alive after the writer dropped its own.
        const N: u64 = 20_000;
        let area = Arc::new(MappedArea::anonymous(32 * 1024).unwrap());
        let writer_area = Arc::clone(&area);
        let writer = std::thread::spawn(move || {
            for i in 1..=N {
                writer_area.write_word(0, i);
                // Widen the window in which the slot is counted but still 0.
                for _ in 0..200 {
                    std::hint::spin_loop();
                }
                writer_area.write_word(i as usize, 0x1000_0000 + i);
            }
            drop(writer_area);
        });
        let mut c = AreaCursor::new(KcovMode::Pc);
        let mut got = Vec::new();
        let mut reads = 0;
        while !writer.is_finished() {
            got.extend(c.take_new(&*area, false).words);
            reads += 1;
        }
        writer.join().unwrap();
        got.extend(c.take_new(&*area, true).words);
        assert_eq!(Arc::strong_count(&area), 1);
        let want: Vec<u64> = (1..=N).map(|i| 0x1000_0000 + i).collect();
        assert_eq!(got.len(), want.len(), "after {reads} reads");
        assert!(got == want, "entries out of order, repeated or torn");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn mapped_area_snapshot_reset_and_bounds() {
        let area = MappedArea::anonymous(8).unwrap();
        assert_eq!(area.words(), 8);
        assert_eq!(area.count(), 0);
        for i in 1..8 {
            area.write_word(i, 0x1000 + i as u64);
        }
        area.write_word(0, 3);
        let cov = area.snapshot(KcovMode::Pc);
        assert_eq!(cov.words, [0x1001, 0x1002, 0x1003]);
        assert!(!cov.overflow);
        // Untrusted huge count: clamped to the mapping, overflow reported.
        area.write_word(0, u64::MAX);
        let cov = area.snapshot(KcovMode::Pc);
        assert_eq!(cov.words.len(), 7);
        assert!(cov.overflow);
        let cmp = area.snapshot(KcovMode::Cmp);
        assert_eq!(cmp.words.len(), 4);
        assert!(cmp.overflow);
        area.reset();
        assert_eq!(area.count(), 0);
        assert!(area.snapshot(KcovMode::Pc).is_empty());
        assert_eq!(area.read_word(7), Some(0x1007));
        assert_eq!(area.read_word(8), None);
        area.write_word(8, 1); // ignored
        assert!(matches!(
            MappedArea::anonymous(1),
            Err(KcovError::InvalidAreaSize { words: 1 })
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn kcov_errors_without_kcov() {
        // This host has no kcov: a missing file gives the "not available" hint.
        let e = Kcov::open("/nonexistent/sys/kernel/debug/kcov").unwrap_err();
        assert!(matches!(e, KcovError::NotAvailable { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("kcov not available") && msg.contains("CONFIG_KCOV"),
            "{msg}"
        );

        // State checks happen before any syscall.
        let mut k = Kcov::open("/dev/null").unwrap();
        assert!(matches!(
            k.enable_local(KcovMode::Pc),
            Err(KcovError::InvalidState { .. })
        ));
        assert!(matches!(
            k.remote_enable(KcovMode::Pc, 1, &[]),
            Err(KcovError::InvalidState { .. })
        ));
        assert!(matches!(k.disable(), Err(KcovError::InvalidState { .. })));
        assert!(matches!(k.drain(), Err(KcovError::InvalidState { .. })));
        assert!(matches!(k.reset(), Err(KcovError::InvalidState { .. })));
        assert!(matches!(
            k.init_trace(1),
            Err(KcovError::InvalidAreaSize { words: 1 })
        ));
        assert!(matches!(
            k.init_trace(MAX_AREA_WORDS + 1),
            Err(KcovError::InvalidAreaSize { .. })
        ));
        // Not a whole page: kcov could not mmap it.
        assert!(matches!(
            k.init_trace(64),
            Err(KcovError::AreaNotPageSized { words: 64, .. })
        ));
        // /dev/null does not know KCOV_INIT_TRACE: a typed ioctl error, nothing mapped.
        let e = k.init_trace(page_size() / 8).unwrap_err();
        assert!(
            matches!(
                e,
                KcovError::Ioctl {
                    op: "KCOV_INIT_TRACE",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(k.area_words(), None);
        assert!(!k.is_enabled());
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let e = KcovError::HandleInUse { handle: 5 };
        assert!(e
            .to_string()
            .contains("common handle 0x0000000000000005 already registered, use a fresh instance"));
        let e = KcovError::ThreadBusy {
            op: "KCOV_REMOTE_ENABLE",
        };
        assert!(e
            .to_string()
            .contains("thread already has a kcov fd enabled"));
    }
}
