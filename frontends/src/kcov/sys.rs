//! The syscall layer (Linux): opening the kcov file, mapping its area ([`MappedArea`]),
//! issuing ioctls.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use super::area::{plan_drain, AreaWords, Coverage};
use super::error::KcovError;
use super::uapi::{TraceMode, MAX_AREA_WORDS, MIN_AREA_WORDS};

/// A shared mapping of a kcov area (`words` u64 words, word 0 = count). The kernel writes
/// it concurrently (remote sections land from other CPUs at `kcov_remote_stop()`), so it
/// is only accessed through raw pointers, every word atomically (word 0 with
/// acquire/release, entries relaxed). That makes it `Send` and `Sync`: another thread may
/// read it while the owning thread's workload runs. It is unmapped when dropped; share it
/// as an `Arc` ([`Kcov::shared_area`](crate::kcov::Kcov::shared_area)) so no reader outlives the mapping.
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
    pub(super) fn map_kcov(fd: RawFd, words: usize) -> Result<Self, KcovError> {
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
    pub fn snapshot(&self, mode: TraceMode) -> Coverage {
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

/// The system page size in bytes (4096 if sysconf fails).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|&p| p >= 8).unwrap_or(4096)
}

pub(super) fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Opens the kcov file at `path` read-write (close-on-exec, as std opens every file).
pub(super) fn open(path: &Path) -> Result<OwnedFd, KcovError> {
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
    Ok(file.into())
}

/// One kcov ioctl on `fd`.
pub(super) fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: libc::c_ulong) -> Result<(), io::Error> {
    // SAFETY: kcov ioctls either take an integer argument or (KCOV_REMOTE_ENABLE) a
    // pointer the caller keeps alive for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kcov::area::AreaCursor;

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
        let mut c = AreaCursor::new(TraceMode::Pc);
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
        let cov = area.snapshot(TraceMode::Pc);
        assert_eq!(cov.words, [0x1001, 0x1002, 0x1003]);
        assert!(!cov.overflow);
        // Untrusted huge count: clamped to the mapping, overflow reported.
        area.write_word(0, u64::MAX);
        let cov = area.snapshot(TraceMode::Pc);
        assert_eq!(cov.words.len(), 7);
        assert!(cov.overflow);
        let cmp = area.snapshot(TraceMode::Cmp);
        assert_eq!(cmp.words.len(), 4);
        assert!(cmp.overflow);
        area.reset();
        assert_eq!(area.count(), 0);
        assert!(area.snapshot(TraceMode::Pc).is_empty());
        assert_eq!(area.read_word(7), Some(0x1007));
        assert_eq!(area.read_word(8), None);
        area.write_word(8, 1); // ignored
        assert!(matches!(
            MappedArea::anonymous(1),
            Err(KcovError::InvalidAreaSize { words: 1 })
        ));
    }
}
