//! `--host-kcov`: coverage of the *host* kernel's vhost-net workers that serve this VM.
//!
//! A vhost worker carries the kcov common handle of the task that called `VHOST_SET_OWNER`
//! (`vhost_worker_create`, Linux 6.12), and reports every work item it runs into the area of
//! the kcov fd that registered that handle (`KCOV_REMOTE_ENABLE`). kcov binds an fd to one
//! thread, and the handle must stay registered for as long as the workers run, so
//! [`HostKcov`] owns a thread that:
//!
//! 1. opens `/sys/kernel/debug/kcov`, sets up an area and enables remote coverage with a
//!    fresh common handle ([`frontends::kcov::fresh_instance`]);
//! 2. runs the jobs it is given ([`KcovOwner::run`]): the virtio-net device's vhost backend
//!    opens `/dev/vhost-net` and calls `VHOST_SET_OWNER` there, so the host's vhost worker
//!    carries the handle;
//! 3. on [`HostKcov::finish`], copies the area out, disables and returns the PCs.
//!
//! The host must be a kcov kernel (`CONFIG_KCOV`, debugfs mounted) with vhost-net; where it is
//! not, [`HostKcov::start`] fails with a one-line reason and the caller goes on without host
//! coverage.

use std::sync::mpsc;
use std::thread::JoinHandle;

use frontends::kcov::{self, Kcov, KcovError};
pub use frontends::kcov::{Coverage, TraceMode};

/// Area size in words (including the count word): 8 MiB, room for a million PCs.
pub const DEFAULT_AREA_WORDS: usize = 1 << 20;

/// Why host coverage is not available, or failed. One line each.
#[derive(Debug, thiserror::Error)]
pub enum HostKcovError {
    /// The host kernel has no usable kcov (or it could not be set up).
    #[error("host kcov: {0}")]
    Kcov(#[from] KcovError),
    /// The owner thread could not be started or went away.
    #[error("host kcov: owner thread: {0}")]
    Thread(String),
}

type Job = Box<dyn FnOnce() + Send>;

enum Msg {
    Run(Job),
    Finish,
}

/// Runs jobs on the [`HostKcov`] owner thread (the one whose kcov handle vhost workers
/// inherit at `VHOST_SET_OWNER`). Cheap to clone.
#[derive(Clone)]
pub struct KcovOwner {
    tx: mpsc::Sender<Msg>,
    handle: u64,
}

impl std::fmt::Debug for KcovOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KcovOwner({:#018x})", self.handle)
    }
}

impl KcovOwner {
    /// Runs `f` on the owner thread and returns its result; `None` when the owner thread has
    /// finished (the job is not run).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.tx.send(Msg::Run(job)).ok()?;
        rx.recv().ok()
    }

    /// The common handle the owner thread registered.
    pub fn handle(&self) -> u64 {
        self.handle
    }
}

/// What [`HostKcov::finish`] hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCoverage {
    /// The common handle the vhost workers carried.
    pub handle: u64,
    /// `uname -r` of the host.
    pub kernel_release: String,
    /// The area's entries (PCs as return addresses, in the order the kernel wrote them).
    pub coverage: Coverage,
}

impl HostCoverage {
    /// Sorted unique PCs.
    pub fn unique_pcs(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.coverage.pcs().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// `N PCs (M distinct[, area overflowed])`, for the line that tells the user.
    pub fn summary(&self) -> String {
        format!(
            "{} PCs ({} distinct{})",
            self.coverage.entry_count(),
            self.unique_pcs().len(),
            if self.coverage.overflow {
                ", area overflowed"
            } else {
                ""
            }
        )
    }

    /// The PCs as text: a comment line, then one `0x…` PC per line, sorted and unique
    /// (the form `addr2line -e vmlinux` and syzkaller's raw cover files take).
    pub fn to_text(&self) -> String {
        let pcs = self.unique_pcs();
        let mut s = format!(
            "# host kcov: kernel {}, common handle {:#018x}, {} PCs, {} distinct, overflow {}\n",
            self.kernel_release,
            self.handle,
            self.coverage.entry_count(),
            pcs.len(),
            self.coverage.overflow
        );
        for pc in pcs {
            s.push_str(&format!("{pc:#x}\n"));
        }
        s
    }

    /// Reads [`HostCoverage::to_text`]'s form back (e.g. written by a vmm in a nested
    /// runner's L1 and sent to the host). The PCs come back sorted and unique, one entry
    /// each; the entry count of the original area is in `coverage.reported_count`. The text
    /// comes from a guest: a malformed line is an error naming it, never a panic.
    pub fn from_text(text: &str) -> Result<HostCoverage, String> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let rest = header
            .strip_prefix("# host kcov: kernel ")
            .ok_or_else(|| format!("not a host kcov file (first line {header:?})"))?;
        // `<release>, common handle <h>, <n> PCs, <m> distinct, overflow <b>`: split from the
        // right, the release is free text.
        let mut f: Vec<&str> = rest.rsplitn(5, ", ").collect();
        f.reverse();
        let bad = || format!("malformed host kcov header {header:?}");
        let [release, handle, count, _distinct, overflow] = f[..] else {
            return Err(bad());
        };
        let handle = handle
            .strip_prefix("common handle 0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(bad)?;
        let count: u64 = count
            .strip_suffix(" PCs")
            .and_then(|c| c.parse().ok())
            .ok_or_else(bad)?;
        let overflow = match overflow {
            "overflow true" => true,
            "overflow false" => false,
            _ => return Err(bad()),
        };
        let mut words = Vec::new();
        for (i, line) in lines.enumerate() {
            let pc = line
                .trim()
                .strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("line {}: not a PC: {line:?}", i + 2))?;
            words.push(pc);
        }
        words.sort_unstable();
        words.dedup();
        Ok(HostCoverage {
            handle,
            kernel_release: release.to_string(),
            coverage: Coverage {
                mode: TraceMode::Pc,
                words,
                overflow,
                reported_count: count,
            },
        })
    }
}

/// Host coverage under one fresh common handle ([module docs](self)).
pub struct HostKcov {
    owner: KcovOwner,
    thread: Option<JoinHandle<Result<Coverage, KcovError>>>,
}

impl std::fmt::Debug for HostKcov {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKcov")
            .field("handle", &format_args!("{:#018x}", self.owner.handle))
            .finish()
    }
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

impl HostKcov {
    /// Opens `path` (normally [`kcov::DEFAULT_PATH`]) on a new owner thread, with an area of
    /// `area_words` words (a page multiple) and remote coverage under a fresh common handle.
    pub fn start_at(path: &str, area_words: usize) -> Result<HostKcov, HostKcovError> {
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<u64, KcovError>>(1);
        let (tx, rx) = mpsc::channel::<Msg>();
        let path = path.to_owned();
        let thread = std::thread::Builder::new()
            .name("host-kcov".into())
            .spawn(move || -> Result<Coverage, KcovError> {
                let setup = (|| {
                    let mut k = Kcov::open(&path)?;
                    k.init_trace(area_words)?;
                    let handle = kcov::common_handle(kcov::fresh_instance())?;
                    k.remote_enable(TraceMode::Pc, handle, &[])?;
                    Ok((k, handle))
                })();
                let mut k = match setup {
                    Ok((k, handle)) => {
                        let _ = ready_tx.send(Ok(handle));
                        k
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        // Nothing was collected; the caller already has the error.
                        return Ok(Coverage {
                            mode: TraceMode::Pc,
                            words: Vec::new(),
                            overflow: false,
                            reported_count: 0,
                        });
                    }
                };
                // Jobs until Finish, or until every sender is gone.
                while let Ok(Msg::Run(job)) = rx.recv() {
                    job();
                }
                let cov = k.drain()?;
                k.disable()?;
                Ok(cov)
            })
            .map_err(|e| HostKcovError::Thread(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(handle)) => Ok(HostKcov {
                owner: KcovOwner { tx, handle },
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e.into())
            }
            Err(_) => {
                let why = match thread.join() {
                    Err(_) => "panicked during set-up".to_owned(),
                    Ok(_) => "ended during set-up".to_owned(),
                };
                Err(HostKcovError::Thread(why))
            }
        }
    }

    /// [`HostKcov::start_at`] with `/sys/kernel/debug/kcov` and [`DEFAULT_AREA_WORDS`].
    pub fn start() -> Result<HostKcov, HostKcovError> {
        Self::start_at(kcov::DEFAULT_PATH, DEFAULT_AREA_WORDS)
    }

    /// Where vhost owners run.
    pub fn owner(&self) -> KcovOwner {
        self.owner.clone()
    }

    /// Stops taking jobs, copies the area out and disables. Call it after the devices that
    /// use the owner are reset (the VM ended): PCs the workers add later are lost.
    pub fn finish(mut self) -> Result<HostCoverage, HostKcovError> {
        let _ = self.owner.tx.send(Msg::Finish);
        let thread = self
            .thread
            .take()
            .ok_or_else(|| HostKcovError::Thread("already finished".into()))?;
        let coverage = thread
            .join()
            .map_err(|_| HostKcovError::Thread("panicked".into()))??;
        Ok(HostCoverage {
            handle: self.owner.handle,
            kernel_release: host_release(),
            coverage,
        })
    }
}

impl Drop for HostKcov {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.owner.tx.send(Msg::Finish);
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_bad_text_is_named() {
        let hc = HostCoverage {
            handle: 0x0100_0000_0000_0042,
            kernel_release: "6.12.118, odd".into(),
            coverage: Coverage {
                mode: TraceMode::Pc,
                words: vec![
                    0xffff_ffff_8100_0020,
                    0xffff_ffff_8100_0010,
                    0xffff_ffff_8100_0020,
                ],
                overflow: true,
                reported_count: 3,
            },
        };
        let back = HostCoverage::from_text(&hc.to_text()).unwrap();
        assert_eq!(back.handle, hc.handle);
        assert_eq!(back.kernel_release, hc.kernel_release);
        assert_eq!(back.unique_pcs(), hc.unique_pcs());
        assert!(back.coverage.overflow);
        assert_eq!(back.coverage.reported_count, 3);
        assert_eq!(back.to_text().lines().nth(1), hc.to_text().lines().nth(1));
        for bad in [
            "",
            "hello",
            "# host kcov: kernel x",
            "# host kcov: kernel x, common handle 0xzz, 1 PCs, 1 distinct, overflow false",
        ] {
            assert!(HostCoverage::from_text(bad).is_err(), "{bad:?}");
        }
        let e = HostCoverage::from_text(&format!("{}0x12\nnope\n", hc.to_text())).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn missing_kcov_is_one_line_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-kcov-here");
        let e = HostKcov::start_at(path.to_str().unwrap(), 512).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("no-kcov-here"), "{m}");
        assert!(!m.contains('\n'), "{m}");
    }

    #[test]
    fn a_file_that_is_not_kcov_is_refused_at_init() {
        // A regular file opens, but KCOV_INIT_TRACE on it fails: set-up errors come back,
        // the thread ends, nothing hangs.
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = HostKcov::start_at(f.path().to_str().unwrap(), 512).unwrap_err();
        assert!(matches!(e, HostKcovError::Kcov(_)), "{e}");
    }

    #[test]
    fn host_kcov_on_this_host() {
        match HostKcov::start() {
            Err(e) => test_skip::skip("host_kcov_on_this_host", test_skip::HOST_KCOV, e),
            Ok(h) => {
                // A job runs on the owner thread, whose own syscalls are not traced.
                let owner = h.owner();
                let name = owner
                    .run(|| std::thread::current().name().map(str::to_owned))
                    .unwrap();
                assert_eq!(name.as_deref(), Some("host-kcov"));
                let cov = h.finish().unwrap();
                assert_ne!(cov.handle, 0);
                assert!(owner.run(|| ()).is_none(), "finished owner ran a job");
            }
        }
    }

    #[test]
    fn text_form_is_sorted_unique_hex() {
        let c = HostCoverage {
            handle: 0x1234,
            kernel_release: "6.12.0".into(),
            coverage: Coverage {
                mode: TraceMode::Pc,
                words: vec![
                    0xffff_ffff_8100_0010,
                    0xffff_ffff_8100_0008,
                    0xffff_ffff_8100_0010,
                ],
                overflow: false,
                reported_count: 3,
            },
        };
        let t = c.to_text();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("# host kcov: kernel 6.12.0"), "{t}");
        assert!(lines[0].contains("3 PCs, 2 distinct"), "{t}");
        assert_eq!(&lines[1..], ["0xffffffff81000008", "0xffffffff81000010"]);
    }
}
