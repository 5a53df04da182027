//! [`KcovError`]: kcov's errno values mapped to what they mean for kcov.

use super::uapi::{KCOV_REMOTE_MAX_HANDLES, MAX_AREA_WORDS, MIN_AREA_WORDS};

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

#[cfg(test)]
mod tests {
    use super::*;

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
