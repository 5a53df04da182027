//! Safe wrapper over `/sys/kernel/debug/kcov` (Documentation/dev-tools/kcov.rst, kernel/kcov.c).
//!
//! ```no_run
//! use frontends::kcov::{common_handle, fresh_instance, Kcov, TraceMode};
//! # fn main() -> Result<(), frontends::kcov::KcovError> {
//! let mut kcov = Kcov::open_default()?;
//! kcov.init_trace(1 << 20)?;
//! let handle = common_handle(fresh_instance())?;
//! kcov.remote_enable(TraceMode::Pc, handle, &[])?;
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

#[cfg(target_os = "linux")]
use std::io;
#[cfg(target_os = "linux")]
use std::marker::PhantomData;
#[cfg(target_os = "linux")]
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
#[cfg(target_os = "linux")]
use std::path::Path;
#[cfg(target_os = "linux")]
use std::sync::Arc;

mod area;
mod error;
mod handle;
#[cfg(target_os = "linux")]
mod sys;
mod uapi;

pub use area::{
    parse_area, parse_cmp, plan_drain, AreaCursor, AreaWords, CmpEntry, Coverage, DrainPlan,
    NewEntries,
};
pub use error::KcovError;
pub use handle::{
    check_handle, common_handle, fresh_instance, handle_instance, handle_subsystem,
    instance_from_seed, remote_arg, usb_handle,
};
#[cfg(target_os = "linux")]
pub use sys::{page_size, MappedArea};
pub use uapi::*;

/// Where debugfs exposes kcov.
pub const DEFAULT_PATH: &str = "/sys/kernel/debug/kcov";

// ---------------------------------------------------------------------------------------------
// The kcov handle (Linux)
// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
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

#[cfg(target_os = "linux")]
/// An open kcov file descriptor with its area. Dropping it disables (if enabled) and
/// closes; the area is unmapped with the last `Arc` of it ([`Kcov::shared_area`]), which
/// may outlive the fd (the mapping keeps the kcov file, and so the area, alive).
#[derive(Debug)]
pub struct Kcov {
    area: Option<Arc<MappedArea>>,
    fd: OwnedFd,
    state: State,
    mode: TraceMode,
    path: String,
    /// kcov binds an enable to the calling thread: keep the handle on it (not Send/Sync).
    _one_thread: PhantomData<*const ()>,
}

#[cfg(target_os = "linux")]
impl Kcov {
    /// Opens [`DEFAULT_PATH`].
    pub fn open_default() -> Result<Self, KcovError> {
        Self::open(DEFAULT_PATH)
    }

    /// Opens the kcov file at `path` (read-write, close-on-exec).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, KcovError> {
        let path = path.as_ref();
        Ok(Kcov {
            area: None,
            fd: sys::open(path)?,
            state: State::Open,
            mode: TraceMode::Pc,
            path: path.display().to_string(),
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
            mode: TraceMode::Pc,
            path: format!("fd {fd}"),
            _one_thread: PhantomData,
        }
    }

    /// Path this handle was opened from.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn ioctl(&self, req: libc::c_ulong, arg: libc::c_ulong) -> Result<(), io::Error> {
        sys::ioctl(&self.fd, req, arg)
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
        self.ioctl(KCOV_INIT_TRACE(), words as libc::c_ulong)
            .map_err(|source| match sys::errno_of(&source) {
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
    pub fn enable_local(&mut self, mode: TraceMode) -> Result<(), KcovError> {
        self.ready("enable_local")?;
        self.ioctl(KCOV_ENABLE(), mode as libc::c_ulong)
            .map_err(|source| match sys::errno_of(&source) {
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
        mode: TraceMode,
        common_handle: u64,
        global_handles: &[u64],
    ) -> Result<(), KcovError> {
        let words = self.ready("remote_enable")?.words();
        let arg = remote_arg(mode, words as u32, common_handle, global_handles)?;
        self.ioctl(KCOV_REMOTE_ENABLE(), arg.as_ptr() as libc::c_ulong)
            .map_err(|source| match sys::errno_of(&source) {
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
        self.ioctl(KCOV_DISABLE(), 0)
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
    pub fn mode(&self) -> TraceMode {
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

#[cfg(target_os = "linux")]
impl AsRawFd for Kcov {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(target_os = "linux")]
impl Drop for Kcov {
    fn drop(&mut self) {
        if self.is_enabled() {
            // Best effort: fails with EINVAL if dropped on another thread than the one
            // that enabled; the kernel then drops the association at thread exit.
            let _ = self.ioctl(KCOV_DISABLE(), 0);
        }
        // `area` (munmap, unless shared) and then `fd` (close) drop in field order.
    }
}
#[cfg(test)]
mod tests {
    use super::*;

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
            k.enable_local(TraceMode::Pc),
            Err(KcovError::InvalidState { .. })
        ));
        assert!(matches!(
            k.remote_enable(TraceMode::Pc, 1, &[]),
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
}
