//! The collector and the run store: a kcov-wire stream (from a file, or any `io::Read` such as a
//! Unix socket) → a directory of plain files that reports are made from.
//!
//! ```text
//! <store>/meta.json                  kernel identity, agent Hello, workloads and results, errors
//! <store>/w<N>-<name>.<source>.pcs   per workload and source: sorted unique PCs + hit counts
//! <store>/h-<name>.host.pcs          host kernel coverage the VMM added (source `host`)
//! <store>/COMPLETE                   written last, only after the agent's Done frame
//! ```
//!
//! Host coverage ([`Collector::add_host_coverage`] while collecting, [`add_host_coverage`] on a
//! store already written) holds PCs of the *host* kernel: it is listed apart from the workloads
//! (`host` in `meta.json`), read with [`Store::host_pcs`], and never returned by
//! [`Store::all_pcs`], so nothing symbolizes it against the guest's vmlinux. A guest stream
//! cannot claim that source: a chunk labelled `host` fails the collection as hostile.
//!
//! Every file is written atomically (temporary file in the same directory, fsync, rename), and
//! `meta.json` is rewritten after each workload, so a collector killed at any point leaves a
//! store that readers recognise as incomplete.
//!
//! The agent ships a running workload's coverage in snapshots (CoverageChunks numbered on
//! across them, each entry once). A stream that ends while a workload runs (a hang, a host
//! timeout, a kernel panic) still stores that workload's coverage up to its last snapshot, and
//! marks it `partial` in `meta.json` (it has no result; [`run_failures`] names it). A stream that ends without `Done`, fails to
//! decode, or breaks the frame order gives a store marked incomplete (with the reason);
//! [`Store::open`] refuses it, [`Store::open_partial`] reads what is there.
//!
//! PC file layout (little-endian):
//! ```text
//! "KCOVPCS\0"  u32:version  u8:mode  u8:source  u8:flags(bit0 overflow)  u8:0
//! u64:n (distinct PCs)  u64:entries (PCs received, duplicates included)
//! n × u64:pc (strictly increasing)   n × u64:hits
//! u32:crc32 (IEEE) of every byte before it
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use kcov_wire::{CoverageSource, Frame, KcovMode, StreamError};
use serde::{Deserialize, Serialize};

/// Metadata file of a store.
pub const META_FILE: &str = "meta.json";
/// Written last, only when the stream ended with `Done`.
pub const COMPLETE_MARKER: &str = "COMPLETE";
/// Version of `meta.json` and of the PC files.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Distinct PCs a collector keeps over the whole stream; more is refused as hostile (a kernel
/// has a few hundred thousand instrumented sites).
pub const MAX_DISTINCT_PCS: usize = 1 << 22;
/// Host coverage entries one store holds at most; their distinct PCs together are bounded by
/// [`MAX_DISTINCT_PCS`] as well.
pub const MAX_HOST_ENTRIES: usize = 64;
/// Longest host coverage name; names are ASCII letters, digits, `-` and `_` (they name a file).
pub const MAX_HOST_NAME_LEN: usize = 64;
/// Longest host kernel release or build-id string kept in `meta.json`.
pub const MAX_HOST_IDENT_LEN: usize = 256;
/// Lock file: held (`flock`) by a [`Collector`] for its lifetime and by [`add_host_coverage`].
pub const LOCK_FILE: &str = ".lock";

const PCS_MAGIC: &[u8; 8] = b"KCOVPCS\0";
const PCS_HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;

/// What the store layer fails with. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store exists but is not complete.
    #[error("coverage store {} is incomplete: {reason}; the run did not finish streaming \
             coverage, rerun it (or read it with the partial option)", dir.display())]
    Incomplete {
        /// The store.
        dir: PathBuf,
        /// Why (from `meta.json`, or a missing marker).
        reason: String,
    },
    /// There is no store (no `meta.json`).
    #[error("{}: no coverage store here (no {META_FILE})", dir.display())]
    Missing {
        /// The directory.
        dir: PathBuf,
    },
    /// A complete store is never collected into again.
    #[error("coverage store {} is already complete; refusing to overwrite it", dir.display())]
    AlreadyComplete {
        /// The store.
        dir: PathBuf,
    },
    /// `meta.json` cannot be parsed.
    #[error("{}: bad store metadata: {reason}", path.display())]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A PC file is truncated or corrupt.
    #[error("{}: bad PC file: {reason}; the store is damaged, collect the run again", path.display())]
    BadPcFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another writer holds the store's lock.
    #[error("coverage store {} is being written by another collector or host-coverage writer; \
             wait for it to finish (while a Collector writes the store, add host coverage \
             through that Collector)", dir.display())]
    Busy {
        /// The store.
        dir: PathBuf,
    },
    /// Host coverage that cannot be added.
    #[error("coverage store {}: refusing host coverage {name:?}: {reason}", dir.display())]
    HostCoverage {
        /// The store.
        dir: PathBuf,
        /// The entry's name (cut to [`MAX_HOST_NAME_LEN`] characters).
        name: String,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which kernel the PCs belong to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelIdentity {
    /// `uname -r` reported by the agent.
    pub release: Option<String>,
    /// GNU build-id of the vmlinux (hex), when the collector was told.
    pub build_id: Option<String>,
    /// The testbed's kernel cache key, when known.
    pub kernel_key: Option<String>,
    /// Hash of the kernel `.config`, when known.
    pub config_hash: Option<String>,
}

/// The agent's Hello frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// Agent version.
    pub agent_version: String,
    /// Kernel release.
    pub kernel_release: String,
    /// `pc` or `cmp`.
    pub kcov_mode: String,
    /// kcov area size in words.
    pub area_words: u32,
    /// Common handle used for remote coverage.
    pub common_handle: u64,
}

/// A workload's result frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadOutcome {
    /// Exit status (0 = success).
    pub status: i32,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Workload counters.
    pub counters: Vec<(String, u64)>,
    /// Error message, when it failed.
    pub error: Option<String>,
}

/// One PC file of a workload (or of a host coverage entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcFileMeta {
    /// `remote` or `local` (`host` for a [`HostCoverageMeta`]).
    pub source: String,
    /// `pc` or `cmp`.
    pub mode: String,
    /// File name inside the store.
    pub file: String,
    /// Distinct PCs.
    pub distinct_pcs: u64,
    /// PCs received (duplicates included).
    pub entries: u64,
    /// Chunks received (1 for host coverage: one add).
    pub chunks: u64,
    /// An area overflowed: coverage was lost.
    pub overflow: bool,
}

/// One workload of the run, in stream order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadMeta {
    /// Name.
    pub name: String,
    /// The result frame; `None` if the stream ended before it.
    pub result: Option<WorkloadOutcome>,
    /// Coverage files.
    pub coverage: Vec<PcFileMeta>,
    /// The run ended while this workload ran (a hang, a host timeout, a kernel panic, a
    /// stream cut short): it has no result, and its coverage files hold only what the agent's
    /// periodic snapshots shipped up to then. Absent (false) in stores written before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

impl WorkloadMeta {
    /// Coverage entries (PCs received, duplicates included) over all of its files.
    pub fn entries(&self) -> u64 {
        self.coverage
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.entries))
    }

    /// Distinct PCs, summed over its files (remote and local counted apart).
    pub fn distinct_pcs(&self) -> u64 {
        self.coverage
            .iter()
            .fold(0u64, |a, f| a.saturating_add(f.distinct_pcs))
    }

    /// One line on the coverage a [`partial`](Self::partial) workload left.
    pub fn partial_coverage(&self) -> String {
        if self.coverage.is_empty() {
            "no coverage of it reached the host (no snapshot before the end)".to_string()
        } else {
            format!(
                "coverage up to its last snapshot, {} PCs ({} distinct)",
                self.entries(),
                self.distinct_pcs()
            )
        }
    }
}

/// `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// [`STORE_FORMAT_VERSION`].
    pub format: u32,
    /// The stream ended with `Done` and everything was stored.
    pub complete: bool,
    /// Why not, when not.
    pub incomplete_reason: Option<String>,
    /// Kernel identity.
    pub kernel: KernelIdentity,
    /// The Hello frame.
    pub agent: Option<AgentHello>,
    /// Workloads in stream order.
    pub workloads: Vec<WorkloadMeta>,
    /// Messages of the agent's Error frames.
    pub errors: Vec<String>,
    /// Status of the Done frame.
    pub done_status: Option<i32>,
    /// Frames received.
    pub frames: u64,
    /// Host kernel coverage added by the VMM, in the order added. Never symbolized against the
    /// guest vmlinux. Absent (empty) in stores without host coverage, and in older stores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<HostCoverageMeta>,
}

/// What the VMM tells the store about host coverage it adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCoverageInfo {
    /// `uname -r` of the host kernel.
    pub kernel_release: Option<String>,
    /// GNU build-id (hex) of the host kernel, when known (e.g. from `/sys/kernel/notes`).
    pub kernel_build_id: Option<String>,
    /// The common handle the VMM passed to `KCOV_REMOTE_ENABLE`.
    pub common_handle: u64,
    /// Trace mode of the VMM's kcov area. The PCs given are one per entry (in CMP mode each
    /// entry's pc word).
    pub mode: KcovMode,
    /// The VMM's kcov area overflowed: coverage was lost.
    pub overflow: bool,
}

/// One host coverage entry of `meta.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCoverageMeta {
    /// Name (unique in the store; the file is `h-<name>.host.pcs`).
    pub name: String,
    /// `uname -r` of the host kernel.
    pub kernel_release: Option<String>,
    /// Build-id of the host kernel.
    pub kernel_build_id: Option<String>,
    /// The VMM's common handle.
    pub common_handle: u64,
    /// The PC file (source `host`).
    pub coverage: PcFileMeta,
}

impl StoreMeta {
    /// The workloads named `name` (a stream may run one several times).
    pub fn workload(&self, name: &str) -> Option<&WorkloadMeta> {
        self.workloads.iter().find(|w| w.name == name)
    }
}

fn mode_name(m: KcovMode) -> &'static str {
    match m {
        KcovMode::Pc => "pc",
        KcovMode::Cmp => "cmp",
    }
}

/// Sorted unique PCs with hit counts, as stored per workload and source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcCounts {
    /// Trace mode.
    pub mode: KcovMode,
    /// Coverage source.
    pub source: CoverageSource,
    /// An area overflowed.
    pub overflow: bool,
    /// PCs received, duplicates included.
    pub entries: u64,
    /// Strictly increasing PCs.
    pub pcs: Vec<u64>,
    /// `hits[i]`: how often `pcs[i]` was received.
    pub hits: Vec<u64>,
}

impl PcCounts {
    /// Builds from an unordered (pc → hits) map.
    pub fn from_map(
        mode: KcovMode,
        source: CoverageSource,
        overflow: bool,
        map: &HashMap<u64, u64>,
    ) -> Self {
        let mut pairs: Vec<(u64, u64)> = map.iter().map(|(&p, &h)| (p, h)).collect();
        pairs.sort_unstable();
        PcCounts {
            mode,
            source,
            overflow,
            entries: pairs.iter().fold(0u64, |a, p| a.saturating_add(p.1)),
            pcs: pairs.iter().map(|p| p.0).collect(),
            hits: pairs.iter().map(|p| p.1).collect(),
        }
    }

    /// (pc, hits) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pcs.iter().copied().zip(self.hits.iter().copied())
    }

    /// The file bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PCS_HEADER_LEN + 16 * self.pcs.len() + 4);
        out.extend_from_slice(PCS_MAGIC);
        out.extend_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
        out.push(self.mode as u8);
        out.push(self.source as u8);
        out.push(u8::from(self.overflow));
        out.push(0);
        out.extend_from_slice(&(self.pcs.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.entries.to_le_bytes());
        for p in &self.pcs {
            out.extend_from_slice(&p.to_le_bytes());
        }
        for h in &self.hits {
            out.extend_from_slice(&h.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses file bytes; every defect is a `reason` string (never a panic).
    pub fn decode(buf: &[u8]) -> Result<Self, String> {
        if buf.len() < PCS_HEADER_LEN + 4 {
            return Err(format!(
                "truncated: {} bytes, shorter than the {}-byte header and checksum",
                buf.len(),
                PCS_HEADER_LEN + 4
            ));
        }
        if &buf[..8] != PCS_MAGIC {
            return Err("bad magic (not a kcov-testbed PC file)".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(8);
        if version != STORE_FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads {STORE_FORMAT_VERSION}"
            ));
        }
        let mode = KcovMode::from_u8(buf[12]).ok_or("bad mode byte")?;
        let source = CoverageSource::from_u8(buf[13]).ok_or("bad source byte")?;
        if buf[14] > 1 || buf[15] != 0 {
            return Err("bad flags".into());
        }
        let n = u64_at(16);
        let entries = u64_at(24);
        let expected = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(16))
            .and_then(|b| b.checked_add(PCS_HEADER_LEN + 4));
        if expected != Some(buf.len()) {
            return Err(format!(
                "truncated or oversized: {} bytes, header says {n} PCs ({} bytes)",
                buf.len(),
                expected.map_or_else(|| "overflowing".to_string(), |e| e.to_string())
            ));
        }
        let body = buf.len() - 4;
        let crc = u32_at(body);
        let computed = crc32fast::hash(&buf[..body]);
        if crc != computed {
            return Err(format!(
                "checksum mismatch: stored {crc:#010x}, computed {computed:#010x}"
            ));
        }
        let n = n as usize;
        let pcs: Vec<u64> = (0..n).map(|i| u64_at(PCS_HEADER_LEN + 8 * i)).collect();
        let hits: Vec<u64> = (0..n)
            .map(|i| u64_at(PCS_HEADER_LEN + 8 * n + 8 * i))
            .collect();
        if pcs.windows(2).any(|w| w[0] >= w[1]) {
            return Err("PCs are not strictly increasing".into());
        }
        Ok(PcCounts {
            mode,
            source,
            overflow: buf[14] == 1,
            entries,
            pcs,
            hits,
        })
    }
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Kept in a file name: ASCII letters, digits, `-`, `_`, `.`; the rest becomes `_`; at most 64.
fn file_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unnamed".into()
    } else {
        s
    }
}

/// What went wrong in the run a store holds, one line each: agent errors, workloads that failed,
/// a non-zero final status, and (with `cut_short`) workloads that never reported and a missing
/// final status (a stream cut short). Empty for a run that succeeded.
pub fn run_failures(meta: &StoreMeta, cut_short: bool) -> Vec<String> {
    let mut out: Vec<String> = meta
        .errors
        .iter()
        .map(|e| format!("agent error: {e}"))
        .collect();
    for w in &meta.workloads {
        match &w.result {
            Some(r) if r.status != 0 => out.push(format!(
                "workload {} failed (status {}){}",
                w.name,
                r.status,
                r.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            Some(_) => {}
            None if !cut_short => {}
            None => out.push(format!(
                "workload {}: no result (the run ended while it ran: a hang, a panic or a \
                 timeout); {}",
                w.name,
                w.partial_coverage()
            )),
        }
    }
    match meta.done_status {
        Some(0) => {}
        Some(s) => out.push(format!("the agent ended with status {s}")),
        None if cut_short => out.push("the stream ended before the agent's final status".into()),
        None => {}
    }
    out
}

/// `incomplete_reason` of a store whose collector is (or was, if it died) still writing.
pub const IN_PROGRESS: &str = "collection in progress (or the collector died)";

/// True when `dir` holds a store whose collection never ended and whose lock nobody holds:
/// its collector died (e.g. `kill -9`); collecting again is safe.
pub fn collection_died(dir: &Path) -> Result<bool, StoreError> {
    let Ok(store) = Store::open_partial(dir) else {
        return Ok(false);
    };
    if store.meta.complete || store.meta.incomplete_reason.as_deref() != Some(IN_PROGRESS) {
        return Ok(false);
    }
    match lock_store(dir) {
        Ok(_lock) => Ok(true),
        Err(StoreError::Busy { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until no writer holds the store's lock (a reader that found a collection under way).
pub fn wait_for_writer(dir: &Path) -> Result<(), StoreError> {
    flock_store(dir, true).map(drop)
}

/// Takes the store's lock without waiting; [`StoreError::Busy`] when another writer holds it.
/// The lock is released when the returned file is closed.
fn lock_store(dir: &Path) -> Result<std::fs::File, StoreError> {
    flock_store(dir, false)
}

/// The store's lock file, locked exclusively: waiting for it when `wait`, else
/// [`StoreError::Busy`] when another writer holds it.
fn flock_store(dir: &Path, wait: bool) -> Result<std::fs::File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a valid open fd that `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.kind() == std::io::ErrorKind::WouldBlock {
            StoreError::Busy {
                dir: dir.to_path_buf(),
            }
        } else {
            io_err(&path)(e)
        });
    }
    Ok(file)
}

fn write_meta_file(dir: &Path, meta: &StoreMeta) -> Result<(), StoreError> {
    let path = dir.join(META_FILE);
    let json = serde_json::to_vec_pretty(meta).map_err(|e| StoreError::BadMeta {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&path, &json)
}

/// Checks a host kernel release or build-id: what the text report prints on one line.
fn check_host_ident(what: &str, v: Option<&str>) -> Result<(), String> {
    match v {
        Some(s)
            if s.is_empty() || s.len() > MAX_HOST_IDENT_LEN || s.chars().any(char::is_control) =>
        {
            Err(format!(
                "the host kernel {what} must be 1 to {MAX_HOST_IDENT_LEN} bytes without control \
                 characters (got {} bytes: {:?}...)",
                s.len(),
                s.chars().take(32).collect::<String>()
            ))
        }
        _ => Ok(()),
    }
}

/// Validates one host coverage entry against `meta`, counts its PCs (bounded) and writes its PC
/// file atomically; the caller records the returned entry in `meta.host` and rewrites
/// `meta.json` (the PC file is written first, so a crash in between leaves an unlisted file,
/// never a listed file that is missing).
fn write_host_pcs(
    dir: &Path,
    meta: &StoreMeta,
    name: &str,
    info: HostCoverageInfo,
    pcs: impl IntoIterator<Item = u64>,
) -> Result<HostCoverageMeta, StoreError> {
    let refuse = |reason: String| StoreError::HostCoverage {
        dir: dir.to_path_buf(),
        name: name.chars().take(MAX_HOST_NAME_LEN).collect(),
        reason,
    };
    if name.is_empty()
        || name.len() > MAX_HOST_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(refuse(format!(
            "a host coverage name is 1 to {MAX_HOST_NAME_LEN} ASCII letters, digits, '-' or '_'"
        )));
    }
    check_host_ident("release", info.kernel_release.as_deref()).map_err(refuse)?;
    check_host_ident("build-id", info.kernel_build_id.as_deref()).map_err(refuse)?;
    if meta.host.iter().any(|h| h.name == name) {
        return Err(refuse(
            "the store already has host coverage of that name (add each name once, with all \
             of its PCs)"
                .into(),
        ));
    }
    if meta.host.len() >= MAX_HOST_ENTRIES {
        return Err(refuse(format!(
            "the store already has {MAX_HOST_ENTRIES} host coverage entries, the most it holds"
        )));
    }
    let used = meta
        .host
        .iter()
        .fold(0u64, |a, h| a.saturating_add(h.coverage.distinct_pcs));
    let budget = MAX_DISTINCT_PCS.saturating_sub(usize::try_from(used).unwrap_or(usize::MAX));
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for pc in pcs {
        let n = counts.entry(pc).or_insert(0);
        *n = n.saturating_add(1);
        if counts.len() > budget {
            return Err(refuse(format!(
                "more than {MAX_DISTINCT_PCS} distinct host PCs in one store ({used} already \
                 stored)"
            )));
        }
    }
    let p = PcCounts::from_map(info.mode, CoverageSource::Host, info.overflow, &counts);
    let file = format!("h-{name}.{}.pcs", CoverageSource::Host.name());
    write_atomic(&dir.join(&file), &p.encode())?;
    Ok(HostCoverageMeta {
        name: name.to_string(),
        kernel_release: info.kernel_release,
        kernel_build_id: info.kernel_build_id,
        common_handle: info.common_handle,
        coverage: PcFileMeta {
            source: CoverageSource::Host.name().into(),
            mode: mode_name(info.mode).into(),
            file,
            distinct_pcs: p.pcs.len() as u64,
            entries: p.entries,
            chunks: 1,
            overflow: info.overflow,
        },
    })
}

/// Adds host kernel coverage to the store in `dir` after its collection ended (complete or
/// not; completeness and the `COMPLETE` marker are left as they are): writes
/// `h-<name>.host.pcs` (source `host`) and lists it under `host` in `meta.json`, both
/// atomically. While a [`Collector`] is writing `dir` this is [`StoreError::Busy`]; use
/// [`Collector::add_host_coverage`] then. `name` is unique per store (1 to
/// [`MAX_HOST_NAME_LEN`] ASCII letters, digits, `-`, `_`); PCs are bounded like the guest's
/// ([`MAX_DISTINCT_PCS`] distinct over all host entries).
pub fn add_host_coverage(
    dir: &Path,
    name: &str,
    info: HostCoverageInfo,
    pcs: impl IntoIterator<Item = u64>,
) -> Result<HostCoverageMeta, StoreError> {
    if !dir.join(META_FILE).is_file() {
        return Err(StoreError::Missing {
            dir: dir.to_path_buf(),
        });
    }
    let _lock = lock_store(dir)?;
    // Read under the lock: the metadata is current.
    let mut store = Store::open_partial(dir)?;
    let h = write_host_pcs(dir, &store.meta, name, info, pcs)?;
    store.meta.host.push(h.clone());
    write_meta_file(dir, &store.meta)?;
    Ok(h)
}

#[derive(Default)]
struct Acc {
    mode: Option<KcovMode>,
    overflow: bool,
    chunks: u64,
    next_seq: u32,
    counts: HashMap<u64, u64>,
}

/// What [`collect`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectSummary {
    /// The store directory.
    pub dir: PathBuf,
    /// Done was received and everything stored.
    pub complete: bool,
    /// Why not.
    pub incomplete_reason: Option<String>,
    /// Frames received.
    pub frames: u64,
    /// Workloads seen.
    pub workloads: usize,
}

/// Streaming collector: feed it frames, then [`Collector::finish`].
pub struct Collector {
    dir: PathBuf,
    /// The store's lock, held until the collector is finished or dropped.
    _lock: std::fs::File,
    meta: StoreMeta,
    /// Index into `meta.workloads` of the workload in progress, and its accumulators.
    current: Option<(usize, [Acc; 2])>,
    distinct: usize,
    done: bool,
    failed: Option<String>,
}

impl Collector {
    /// A collector writing into `dir` (created if missing). Refuses a complete store, and a
    /// store another writer holds ([`StoreError::Busy`]); files of an earlier incomplete
    /// collection are replaced.
    pub fn create(dir: &Path, kernel: KernelIdentity) -> Result<Self, StoreError> {
        if dir.join(COMPLETE_MARKER).exists() {
            return Err(StoreError::AlreadyComplete {
                dir: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = lock_store(dir)?;
        // A collector that held the lock until now may have completed the store: check again.
        if dir.join(COMPLETE_MARKER).exists() {
            return Err(StoreError::AlreadyComplete {
                dir: dir.to_path_buf(),
            });
        }
        let c = Collector {
            dir: dir.to_path_buf(),
            _lock: lock,
            meta: StoreMeta {
                format: STORE_FORMAT_VERSION,
                complete: false,
                incomplete_reason: Some(IN_PROGRESS.into()),
                kernel,
                agent: None,
                workloads: Vec::new(),
                errors: Vec::new(),
                done_status: None,
                frames: 0,
                host: Vec::new(),
            },
            current: None,
            distinct: 0,
            done: false,
            failed: None,
        };
        c.write_meta()?;
        Ok(c)
    }

    fn write_meta(&self) -> Result<(), StoreError> {
        write_meta_file(&self.dir, &self.meta)
    }

    /// Adds host kernel coverage while collecting (see [`add_host_coverage`] for a store whose
    /// collection ended): writes `h-<name>.host.pcs` and lists it in `meta.json` now, whatever
    /// state the guest stream is in. Same rules as [`add_host_coverage`].
    pub fn add_host_coverage(
        &mut self,
        name: &str,
        info: HostCoverageInfo,
        pcs: impl IntoIterator<Item = u64>,
    ) -> Result<HostCoverageMeta, StoreError> {
        let h = write_host_pcs(&self.dir, &self.meta, name, info, pcs)?;
        self.meta.host.push(h.clone());
        self.write_meta()?;
        Ok(h)
    }

    /// The first protocol error, if any (later frames are ignored after one).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Takes one frame. A frame that breaks the protocol marks the collection failed (the store
    /// will be incomplete with that reason); only store I/O errors are returned.
    pub fn frame(&mut self, frame: Frame) -> Result<(), StoreError> {
        if self.failed.is_some() {
            return Ok(());
        }
        self.meta.frames += 1;
        if let Err(reason) = self.apply(frame) {
            self.failed = Some(format!("frame {}: {reason}", self.meta.frames));
            return Ok(());
        }
        Ok(())
    }

    fn apply(&mut self, frame: Frame) -> Result<(), String> {
        if self.done {
            return Err("frame after Done".into());
        }
        if self.meta.agent.is_none() && !matches!(frame, Frame::Hello(_)) {
            return Err(format!(
                "stream starts with {:?}, not Hello",
                frame.frame_type()
            ));
        }
        match frame {
            Frame::Hello(h) => {
                if self.meta.agent.is_some() {
                    return Err("second Hello".into());
                }
                if self.meta.kernel.release.is_none() {
                    self.meta.kernel.release = Some(h.kernel_release.clone());
                }
                self.meta.agent = Some(AgentHello {
                    agent_version: h.agent_version,
                    kernel_release: h.kernel_release,
                    kcov_mode: mode_name(h.kcov_mode).into(),
                    area_words: h.area_words,
                    common_handle: h.common_handle,
                });
            }
            Frame::WorkloadStart(s) => {
                if let Some((i, _)) = &self.current {
                    return Err(format!(
                        "workload {:?} started before {:?} ended",
                        s.name, self.meta.workloads[*i].name
                    ));
                }
                self.meta.workloads.push(WorkloadMeta {
                    name: s.name,
                    result: None,
                    coverage: Vec::new(),
                    partial: false,
                });
                self.current = Some((self.meta.workloads.len() - 1, Default::default()));
            }
            Frame::CoverageChunk(c) => {
                let slot = match c.source {
                    CoverageSource::Remote => 0,
                    CoverageSource::Local => 1,
                    CoverageSource::Host => {
                        return Err(format!(
                            "coverage chunk for {:?} claims source=host: host kernel coverage \
                             is recorded by the VMM, never taken from the guest's stream \
                             (hostile or broken agent); refusing the stream",
                            c.workload
                        ))
                    }
                };
                let Some((i, accs)) = &mut self.current else {
                    return Err(format!(
                        "coverage chunk for {:?} outside a workload",
                        c.workload
                    ));
                };
                if self.meta.workloads[*i].name != c.workload {
                    return Err(format!(
                        "coverage chunk for {:?} inside workload {:?}",
                        c.workload, self.meta.workloads[*i].name
                    ));
                }
                let acc = &mut accs[slot];
                if acc.mode.is_some_and(|m| m != c.mode) {
                    return Err("coverage chunks of one source change mode".into());
                }
                // Chunks of one (workload, source) are numbered on across the agent's
                // snapshots and its final shipment: a gap or a repeat is refused.
                if c.seq != acc.next_seq {
                    let why = if c.seq.wrapping_sub(acc.next_seq) < 1 << 31 {
                        "a chunk was lost"
                    } else {
                        "a chunk was sent twice"
                    };
                    return Err(format!(
                        "coverage chunk seq {} for {:?}/{}, expected {} ({why})",
                        c.seq,
                        c.workload,
                        c.source.name(),
                        acc.next_seq
                    ));
                }
                acc.next_seq = acc.next_seq.wrapping_add(1);
                acc.mode = Some(c.mode);
                acc.overflow |= c.overflow;
                acc.chunks += 1;
                let (skip, step) = match c.mode {
                    KcovMode::Pc => (0, 1),
                    KcovMode::Cmp => (3, 4),
                };
                for pc in c.words.iter().copied().skip(skip).step_by(step) {
                    let before = acc.counts.len();
                    let n = acc.counts.entry(pc).or_insert(0);
                    *n = n.saturating_add(1);
                    if acc.counts.len() > before {
                        self.distinct += 1;
                        if self.distinct > MAX_DISTINCT_PCS {
                            return Err(format!(
                                "more than {MAX_DISTINCT_PCS} distinct PCs: refusing the stream"
                            ));
                        }
                    }
                }
            }
            Frame::WorkloadResult(r) => {
                let Some((i, _)) = &self.current else {
                    return Err(format!("result for {:?} outside a workload", r.name));
                };
                if self.meta.workloads[*i].name != r.name {
                    return Err(format!(
                        "result for {:?} inside workload {:?}",
                        r.name, self.meta.workloads[*i].name
                    ));
                }
                let i = *i;
                self.meta.workloads[i].result = Some(WorkloadOutcome {
                    status: r.status,
                    duration_us: r.duration_us,
                    counters: r.counters,
                    error: r.error,
                });
            }
            Frame::Error(e) => self.meta.errors.push(e.message),
            // A fuzz campaign's inputs and progress are `cargo xtask fuzz`'s to keep (its
            // corpus and reproducers); its coverage comes as CoverageChunks like any workload's.
            Frame::FuzzInput(_) | Frame::FuzzStatus(_) => {}
            Frame::Done(d) => {
                if let Some((i, _)) = &self.current {
                    if self.meta.workloads[*i].result.is_none() {
                        return Err(format!(
                            "Done inside workload {:?}",
                            self.meta.workloads[*i].name
                        ));
                    }
                }
                self.meta.done_status = Some(d.status);
                self.done = true;
            }
        }
        Ok(())
    }

    /// Writes the PC files of the workload in progress once its result arrived (or at the end).
    fn flush_current(&mut self, force: bool) -> Result<(), StoreError> {
        let ready = match &self.current {
            Some((i, _)) => force || self.meta.workloads[*i].result.is_some(),
            None => false,
        };
        if !ready {
            return Ok(());
        }
        let Some((i, accs)) = self.current.take() else {
            return Ok(());
        };
        // Forced without a result: the run ended while the workload ran, and what its
        // snapshots shipped is all there is.
        self.meta.workloads[i].partial = self.meta.workloads[i].result.is_none();
        let name = file_safe(&self.meta.workloads[i].name);
        for (source, acc) in [CoverageSource::Remote, CoverageSource::Local]
            .into_iter()
            .zip(accs)
        {
            let Some(mode) = acc.mode else { continue };
            let pcs = PcCounts::from_map(mode, source, acc.overflow, &acc.counts);
            let file = format!("w{i}-{name}.{}.pcs", source.name());
            write_atomic(&self.dir.join(&file), &pcs.encode())?;
            self.meta.workloads[i].coverage.push(PcFileMeta {
                source: source.name().into(),
                mode: mode_name(mode).into(),
                file,
                distinct_pcs: pcs.pcs.len() as u64,
                entries: pcs.entries,
                chunks: acc.chunks,
                overflow: acc.overflow,
            });
        }
        self.write_meta()
    }

    /// Called after each frame by [`collect`]: writes finished workloads.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.flush_current(false)
    }

    /// Ends the collection. `stream_error` is why the stream stopped early, if it did. Writes
    /// what was received, `meta.json`, and the completion marker when the stream was complete.
    pub fn finish(mut self, stream_error: Option<String>) -> Result<CollectSummary, StoreError> {
        self.flush_current(true)?;
        let reason = self.failed.clone().or(stream_error).or_else(|| {
            (!self.done).then(|| {
                "the stream ended without a Done frame (the agent died or the stream was cut)"
                    .to_string()
            })
        });
        self.meta.complete = reason.is_none();
        self.meta.incomplete_reason = reason.clone();
        self.write_meta()?;
        if self.meta.complete {
            write_atomic(&self.dir.join(COMPLETE_MARKER), b"complete\n")?;
        }
        Ok(CollectSummary {
            dir: self.dir,
            complete: self.meta.complete,
            incomplete_reason: reason,
            frames: self.meta.frames,
            workloads: self.meta.workloads.len(),
        })
    }
}

/// Reads a whole stream from `reader` into the store `dir`. Returns the summary also when the
/// store came out incomplete (check [`CollectSummary::complete`]); errors are store I/O only.
pub fn collect<R: Read>(
    reader: R,
    dir: &Path,
    kernel: KernelIdentity,
) -> Result<CollectSummary, StoreError> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
    let mut c = Collector::create(dir, kernel)?;
    let stream_error = loop {
        match kcov_wire::read_frame(&mut reader) {
            Ok(Some(frame)) => {
                c.frame(frame)?;
                c.checkpoint()?;
                if c.failed().is_some() {
                    break None;
                }
            }
            Ok(None) => break None,
            Err(StreamError::UnexpectedEof { buffered }) => {
                break Some(format!(
                    "the stream ends inside a frame ({buffered} bytes of it received): truncated"
                ))
            }
            Err(e) => break Some(e.to_string()),
        }
    };
    c.finish(stream_error)
}

/// [`collect`] from a file.
pub fn collect_file(
    stream: &Path,
    dir: &Path,
    kernel: KernelIdentity,
) -> Result<CollectSummary, StoreError> {
    let f = std::fs::File::open(stream).map_err(io_err(stream))?;
    collect(f, dir, kernel)
}

/// A store on disk.
#[derive(Clone, Debug)]
pub struct Store {
    /// Its directory.
    pub dir: PathBuf,
    /// `meta.json`.
    pub meta: StoreMeta,
}

impl Store {
    /// Opens a complete store; an incomplete one is [`StoreError::Incomplete`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let store = Self::open_partial(dir)?;
        if !store.meta.complete {
            return Err(StoreError::Incomplete {
                dir: dir.to_path_buf(),
                reason: store
                    .meta
                    .incomplete_reason
                    .clone()
                    .unwrap_or_else(|| "not marked complete".into()),
            });
        }
        if !dir.join(COMPLETE_MARKER).exists() {
            return Err(StoreError::Incomplete {
                dir: dir.to_path_buf(),
                reason: format!("no {COMPLETE_MARKER} marker"),
            });
        }
        Ok(store)
    }

    /// Opens a store whether complete or not (for diagnostics and partial reports).
    pub fn open_partial(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(META_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let meta: StoreMeta = serde_json::from_slice(&bytes).map_err(|e| StoreError::BadMeta {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if meta.format != STORE_FORMAT_VERSION {
            return Err(StoreError::BadMeta {
                path,
                reason: format!(
                    "format {}, this build reads {STORE_FORMAT_VERSION}",
                    meta.format
                ),
            });
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// Reads one PC file.
    pub fn read_pcs(&self, file: &PcFileMeta) -> Result<PcCounts, StoreError> {
        // File names come from meta.json: never follow one out of the store.
        if file.file.contains('/') || file.file.contains('\\') || file.file.starts_with('.') {
            return Err(StoreError::BadMeta {
                path: self.dir.join(META_FILE),
                reason: format!("PC file name {:?} is not a plain name", file.file),
            });
        }
        let path = self.dir.join(&file.file);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        PcCounts::decode(&bytes).map_err(|reason| StoreError::BadPcFile { path, reason })
    }

    /// Every guest PC file of the store (all workloads, or those named `workload`), checked.
    /// Never host coverage (see [`Store::host_pcs`]): a workload file whose PCs are labelled
    /// `host` is refused, so host PCs cannot reach a guest report.
    pub fn all_pcs(&self, workload: Option<&str>) -> Result<Vec<(String, PcCounts)>, StoreError> {
        let mut out = Vec::new();
        for w in &self.meta.workloads {
            if workload.is_some_and(|n| n != w.name) {
                continue;
            }
            for f in &w.coverage {
                let pcs = self.read_pcs(f)?;
                if pcs.source == CoverageSource::Host {
                    return Err(StoreError::BadPcFile {
                        path: self.dir.join(&f.file),
                        reason: format!(
                            "workload {:?} lists a file of host kernel coverage; host PCs are \
                             never merged into the guest's",
                            w.name
                        ),
                    });
                }
                out.push((w.name.clone(), pcs));
            }
        }
        Ok(out)
    }

    /// The host kernel coverage entries (`meta.json` `host`) with their PCs, checked: each file
    /// must hold PCs labelled `host`. These are PCs of the host's kernel, not the guest's.
    pub fn host_pcs(&self) -> Result<Vec<(HostCoverageMeta, PcCounts)>, StoreError> {
        let mut out = Vec::with_capacity(self.meta.host.len());
        for h in &self.meta.host {
            let pcs = self.read_pcs(&h.coverage)?;
            if pcs.source != CoverageSource::Host {
                return Err(StoreError::BadPcFile {
                    path: self.dir.join(&h.coverage.file),
                    reason: format!(
                        "host coverage {:?} points at a file of {} (guest) coverage",
                        h.name,
                        pcs.source.name()
                    ),
                });
            }
            out.push((h.clone(), pcs));
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kcov_wire::{
        encode, CoverageChunk, Done, ErrorReport, Hello, WorkloadResult, WorkloadStart,
    };

    pub(crate) fn hello() -> Frame {
        Frame::Hello(Hello {
            agent_version: "t".into(),
            kernel_release: "6.12.117".into(),
            kcov_mode: KcovMode::Pc,
            area_words: 1 << 16,
            common_handle: 0x42,
        })
    }

    pub(crate) fn chunk(w: &str, seq: u32, words: &[u64]) -> Frame {
        Frame::CoverageChunk(CoverageChunk {
            workload: w.into(),
            source: CoverageSource::Remote,
            mode: KcovMode::Pc,
            seq,
            overflow: false,
            words: words.to_vec(),
        })
    }

    pub(crate) fn result(w: &str) -> Frame {
        Frame::WorkloadResult(WorkloadResult {
            name: w.into(),
            status: 0,
            duration_us: 5,
            counters: vec![("n".into(), 1)],
            error: None,
        })
    }

    pub(crate) fn stream(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| encode(f).unwrap()).collect()
    }

    pub(super) fn good() -> Vec<Frame> {
        vec![
            hello(),
            Frame::WorkloadStart(WorkloadStart { name: "a/b".into() }),
            chunk("a/b", 0, &[3, 1, 3]),
            chunk("a/b", 1, &[2, 3]),
            result("a/b"),
            Frame::Error(ErrorReport {
                message: "unknown workload x".into(),
            }),
            Frame::Done(Done { status: 0 }),
        ]
    }

    #[test]
    fn pc_file_roundtrip_and_damage() {
        let mut m = HashMap::new();
        m.insert(7u64, 2u64);
        m.insert(3, 1);
        let p = PcCounts::from_map(KcovMode::Pc, CoverageSource::Local, true, &m);
        assert_eq!(p.pcs, [3, 7]);
        assert_eq!(p.hits, [1, 2]);
        assert_eq!(p.entries, 3);
        let bytes = p.encode();
        assert_eq!(PcCounts::decode(&bytes).unwrap(), p);
        for cut in 0..bytes.len() {
            let e = PcCounts::decode(&bytes[..cut]).unwrap_err();
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(PcCounts::decode(&b).is_err(), "flip at {i} accepted");
        }
        // A huge count never allocates.
        let mut b = bytes.clone();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(PcCounts::decode(&b).unwrap_err().contains("truncated"));
    }

    #[test]
    fn collect_complete_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = collect(
            &stream(&good())[..],
            dir.path(),
            KernelIdentity {
                build_id: Some("ab".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.complete, "{s:?}");
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.meta.kernel.release.as_deref(), Some("6.12.117"));
        assert_eq!(store.meta.kernel.build_id.as_deref(), Some("ab"));
        assert_eq!(store.meta.errors, ["unknown workload x"]);
        assert_eq!(store.meta.done_status, Some(0));
        let w = store.meta.workload("a/b").unwrap();
        assert_eq!(w.result.as_ref().unwrap().counters, [("n".to_string(), 1)]);
        assert_eq!(w.coverage[0].file, "w0-a_b.remote.pcs");
        let pcs = store.all_pcs(None).unwrap();
        assert_eq!(pcs.len(), 1);
        assert_eq!(pcs[0].1.pcs, [1, 2, 3]);
        assert_eq!(pcs[0].1.hits, [1, 1, 3]);
        // Never collected into again.
        assert!(matches!(
            collect(&stream(&good())[..], dir.path(), KernelIdentity::default()),
            Err(StoreError::AlreadyComplete { .. })
        ));
    }

    #[test]
    fn truncated_and_bad_streams_are_incomplete() {
        let full = stream(&good());
        // Cut at every byte: never a panic, complete only for the whole stream.
        for cut in 0..full.len() {
            let dir = tempfile::tempdir().unwrap();
            let s = collect(&full[..cut], dir.path(), KernelIdentity::default()).unwrap();
            assert!(!s.complete, "cut {cut}");
            let e = Store::open(dir.path()).unwrap_err();
            assert!(matches!(e, StoreError::Incomplete { .. }), "{e}");
            assert!(!dir.path().join(COMPLETE_MARKER).exists());
            // What was received is readable.
            let partial = Store::open_partial(dir.path()).unwrap();
            partial.all_pcs(None).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let cut = full.len() - 3;
        collect(&full[..cut], dir.path(), KernelIdentity::default()).unwrap();
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("incomplete") && e.contains("truncated"), "{e}");

        // Protocol violations.
        let cases: Vec<(Vec<Frame>, &str)> = vec![
            (vec![chunk("a", 0, &[1])], "not Hello"),
            (
                vec![
                    hello(),
                    Frame::WorkloadStart(WorkloadStart { name: "a".into() }),
                    chunk("a", 1, &[1]),
                ],
                "a chunk was lost",
            ),
            (
                vec![
                    hello(),
                    Frame::WorkloadStart(WorkloadStart { name: "a".into() }),
                    chunk("b", 0, &[1]),
                ],
                "inside workload",
            ),
            (
                vec![hello(), Frame::Done(Done { status: 0 }), hello()],
                "after Done",
            ),
        ];
        for (frames, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let s = collect(&stream(&frames)[..], dir.path(), KernelIdentity::default()).unwrap();
            let reason = s.incomplete_reason.unwrap();
            assert!(reason.contains(want), "{reason} vs {want}");
        }
        // A flipped byte (checksum error) makes it incomplete too.
        let mut bad = full.clone();
        bad[40] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        let s = collect(&bad[..], dir.path(), KernelIdentity::default()).unwrap();
        assert!(s.incomplete_reason.unwrap().contains("checksum"));
    }

    #[test]
    fn collect_from_a_unix_socket() {
        let (mut tx, rx) = std::os::unix::net::UnixStream::pair().unwrap();
        let bytes = stream(&good());
        let writer = std::thread::spawn(move || {
            // Dribble the stream in odd pieces, as a socket may deliver it.
            for piece in bytes.chunks(7) {
                tx.write_all(piece).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let s = collect(rx, dir.path(), KernelIdentity::default()).unwrap();
        writer.join().unwrap();
        assert!(s.complete, "{s:?}");
        assert_eq!(s.frames, 7);
        assert_eq!(
            Store::open(dir.path()).unwrap().all_pcs(None).unwrap()[0]
                .1
                .pcs,
            [1, 2, 3]
        );
    }

    fn start(w: &str) -> Frame {
        Frame::WorkloadStart(WorkloadStart { name: w.into() })
    }

    /// A run that ended while workload "b" ran: "a" finished; "b" shipped three snapshots.
    fn ended_inside_b() -> Vec<Frame> {
        vec![
            hello(),
            start("a"),
            chunk("a", 0, &[9]),
            result("a"),
            start("b"),
            chunk("b", 0, &[1, 2]),
            chunk("b", 1, &[3]),
            chunk("b", 2, &[2, 4]),
        ]
    }

    #[test]
    fn a_workload_cut_off_by_the_end_of_the_run_keeps_its_snapshots_marked_partial() {
        let dir = tempfile::tempdir().unwrap();
        let s = collect(
            &stream(&ended_inside_b())[..],
            dir.path(),
            KernelIdentity::default(),
        )
        .unwrap();
        assert!(!s.complete);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Incomplete { .. })
        ));
        let store = Store::open_partial(dir.path()).unwrap();
        let a = store.meta.workload("a").unwrap();
        assert!(a.result.is_some() && !a.partial);
        let b = store.meta.workload("b").unwrap();
        assert!(b.result.is_none() && b.partial);
        assert_eq!(b.coverage.len(), 1);
        assert_eq!(
            (b.coverage[0].chunks, b.coverage[0].entries),
            (3, 5),
            "{b:?}"
        );
        let pcs = store.all_pcs(Some("b")).unwrap();
        assert_eq!(pcs[0].1.pcs, [1, 2, 3, 4]);
        assert_eq!(pcs[0].1.hits, [1, 2, 1, 1]);
        // Visible in meta.json, only where it applies.
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(META_FILE)).unwrap()).unwrap();
        assert_eq!(json["workloads"][1]["partial"], true);
        assert!(json["workloads"][0].get("partial").is_none(), "{json}");
        // Still a failed run, and the failure says what coverage there is.
        let failures = run_failures(&store.meta, true);
        assert!(
            failures.contains(
                &"workload b: no result (the run ended while it ran: a hang, a panic or a \
                  timeout); coverage up to its last snapshot, 5 PCs (4 distinct)"
                    .to_string()
            ),
            "{failures:?}"
        );
        assert!(failures
            .iter()
            .any(|f| f.contains("before the agent's final status")));

        // A workload cut off before its first snapshot: partial, no coverage, said so.
        let dir = tempfile::tempdir().unwrap();
        let frames = [hello(), start("c")];
        collect(&stream(&frames)[..], dir.path(), KernelIdentity::default()).unwrap();
        let store = Store::open_partial(dir.path()).unwrap();
        let c = store.meta.workload("c").unwrap();
        assert!(c.partial && c.coverage.is_empty());
        assert!(run_failures(&store.meta, true)
            .iter()
            .any(|f| f.starts_with("workload c: no result")
                && f.ends_with("no coverage of it reached the host (no snapshot before the end)")));

        // A complete run marks nothing partial, and its meta.json has no such field.
        let dir = tempfile::tempdir().unwrap();
        collect(&stream(&good())[..], dir.path(), KernelIdentity::default()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.meta.workloads.iter().all(|w| !w.partial));
        let raw = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
        assert!(!raw.contains("partial"), "{raw}");
    }

    #[test]
    fn incremental_chunks_cut_anywhere_are_partial_or_complete_never_wrong() {
        let mut frames = ended_inside_b();
        frames.push(chunk("b", 3, &[5]));
        frames.push(result("b"));
        frames.push(Frame::Done(Done { status: 0 }));
        let full = stream(&frames);
        for cut in 0..=full.len() {
            let dir = tempfile::tempdir().unwrap();
            let s = collect(&full[..cut], dir.path(), KernelIdentity::default()).unwrap();
            assert_eq!(s.complete, cut == full.len(), "cut {cut}");
            let store = Store::open_partial(dir.path()).unwrap();
            for w in &store.meta.workloads {
                assert_eq!(w.partial, w.result.is_none(), "cut {cut}: {w:?}");
                // Whatever arrived is a prefix of what was shipped: no PC twice too often.
                for (_, p) in store.all_pcs(Some(&w.name)).unwrap() {
                    assert!(p.entries <= if w.name == "a" { 1 } else { 6 }, "cut {cut}");
                }
            }
        }
    }

    #[test]
    fn incremental_chunks_with_a_gap_or_a_repeat_are_refused() {
        for (bad, want) in [
            (chunk("b", 4, &[5]), "expected 3 (a chunk was lost)"),
            (
                chunk("b", 2, &[2, 4]),
                "expected 3 (a chunk was sent twice)",
            ),
            (
                chunk("b", 0, &[1, 2]),
                "expected 3 (a chunk was sent twice)",
            ),
        ] {
            let mut frames = ended_inside_b();
            frames.push(bad);
            frames.push(result("b"));
            frames.push(Frame::Done(Done { status: 0 }));
            let dir = tempfile::tempdir().unwrap();
            let s = collect(&stream(&frames)[..], dir.path(), KernelIdentity::default()).unwrap();
            assert!(!s.complete);
            let reason = s.incomplete_reason.unwrap();
            assert!(reason.contains(want), "{reason} vs {want}");
        }
    }

    #[test]
    fn damaged_pc_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        collect(&stream(&good())[..], dir.path(), KernelIdentity::default()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let f = dir.path().join(&store.meta.workloads[0].coverage[0].file);
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() - 5]).unwrap();
        let e = store.all_pcs(None).unwrap_err().to_string();
        assert!(e.contains("bad PC file") && e.contains("truncated"), "{e}");
    }
}

#[cfg(test)]
mod host_tests {
    use super::tests::{good, hello, result, stream};
    use super::*;
    use kcov_wire::{CoverageChunk, Done, WorkloadStart};

    const HOST_PCS: [u64; 5] = [
        0xffff_ffff_a000_0030,
        0xffff_ffff_a000_0010,
        0xffff_ffff_a000_0030,
        0xffff_ffff_a000_0020,
        0xffff_ffff_a000_0030,
    ];

    fn host_info() -> HostCoverageInfo {
        HostCoverageInfo {
            kernel_release: Some("6.8.0-host".into()),
            kernel_build_id: Some("abcdef01".into()),
            common_handle: 0x0100_0000_0000_0007,
            mode: KcovMode::Pc,
            overflow: false,
        }
    }

    fn host_chunk(w: &str) -> Frame {
        Frame::CoverageChunk(CoverageChunk {
            workload: w.into(),
            source: CoverageSource::Host,
            mode: KcovMode::Pc,
            seq: 0,
            overflow: false,
            words: vec![0x10, 0x20],
        })
    }

    fn host_files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("h-") || n.contains("host"))
            .collect()
    }

    fn meta_json(dir: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).unwrap()).unwrap()
    }

    #[test]
    fn host_coverage_added_to_a_finished_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(
            collect(&stream(&good())[..], d, KernelIdentity::default())
                .unwrap()
                .complete
        );
        let meta_before = meta_json(d);
        // A store without host coverage has no `host` field: meta.json is as it always was.
        assert!(meta_before.get("host").is_none(), "{meta_before}");
        let guest_before = Store::open(d).unwrap().all_pcs(None).unwrap();

        let h = add_host_coverage(d, "vhost-net", host_info(), HOST_PCS).unwrap();
        assert_eq!(h.name, "vhost-net");
        assert_eq!(h.coverage.file, "h-vhost-net.host.pcs");
        assert_eq!(h.coverage.source, "host");
        assert_eq!(h.coverage.mode, "pc");
        assert_eq!((h.coverage.distinct_pcs, h.coverage.entries), (3, 5));

        // Still complete, reopened from disk.
        assert!(d.join(COMPLETE_MARKER).exists());
        let store = Store::open(d).unwrap();
        assert_eq!(store.meta.host, std::slice::from_ref(&h));
        let host = store.host_pcs().unwrap();
        assert_eq!(host.len(), 1);
        let (m, p) = &host[0];
        assert_eq!(m, &h);
        assert_eq!(p.source, CoverageSource::Host);
        assert_eq!(p.mode, KcovMode::Pc);
        assert!(!p.overflow);
        let mut want: Vec<u64> = HOST_PCS.to_vec();
        want.sort_unstable();
        want.dedup();
        assert_eq!(p.pcs, want);
        assert_eq!(p.hits, [1, 1, 3]);
        assert_eq!(p.entries, 5);
        assert_eq!(
            (m.kernel_release.as_deref(), m.kernel_build_id.as_deref()),
            (Some("6.8.0-host"), Some("abcdef01"))
        );
        assert_eq!(m.common_handle, 0x0100_0000_0000_0007);

        // The guest's coverage is untouched and holds none of the host's PCs.
        let guest = store.all_pcs(None).unwrap();
        assert_eq!(guest, guest_before);
        assert!(guest
            .iter()
            .all(|(_, p)| p.source != CoverageSource::Host
                && p.pcs.iter().all(|pc| !want.contains(pc))));

        // Everything in meta.json but `host` is as before.
        let mut after = meta_json(d);
        let host_json = after.as_object_mut().unwrap().remove("host").unwrap();
        assert_eq!(after, meta_before);
        assert_eq!(host_json[0]["coverage"]["source"], "host");
        assert_eq!(host_json[0]["kernel_release"], "6.8.0-host");

        // A second entry: CMP, overflowed, no PCs, unknown release; order is kept.
        let info = HostCoverageInfo {
            kernel_release: None,
            kernel_build_id: None,
            mode: KcovMode::Cmp,
            overflow: true,
            ..host_info()
        };
        add_host_coverage(d, "vhost_vsock-1", info, []).unwrap();
        let host = Store::open(d).unwrap().host_pcs().unwrap();
        assert_eq!(host.len(), 2);
        assert_eq!(host[0].1.pcs, want);
        let (m, p) = &host[1];
        assert_eq!(
            (m.name.as_str(), m.kernel_release.as_deref()),
            ("vhost_vsock-1", None)
        );
        assert_eq!((p.mode, p.overflow, p.pcs.len()), (KcovMode::Cmp, true, 0));
        assert!(m.coverage.overflow);

        // A name is added once; the refused call changes nothing.
        let before = std::fs::read(d.join(META_FILE)).unwrap();
        let e = add_host_coverage(d, "vhost-net", host_info(), [1u64]).unwrap_err();
        assert!(
            matches!(e, StoreError::HostCoverage { .. }) && e.to_string().contains("already has"),
            "{e}"
        );
        assert_eq!(std::fs::read(d.join(META_FILE)).unwrap(), before);
        assert_eq!(Store::open(d).unwrap().host_pcs().unwrap()[0].1.pcs, want);
    }

    #[test]
    fn host_coverage_through_the_collector_before_finish() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let frames = good();
        let mut c = Collector::create(d, KernelIdentity::default()).unwrap();
        for f in frames[..3].iter().cloned() {
            c.frame(f).unwrap();
            c.checkpoint().unwrap();
        }
        // While the collector holds the store, nobody else writes it.
        let e = add_host_coverage(d, "other", host_info(), [1u64]).unwrap_err();
        assert!(matches!(e, StoreError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("through that Collector"), "{e}");
        assert!(matches!(
            Collector::create(d, KernelIdentity::default()),
            Err(StoreError::Busy { .. })
        ));

        let h = c
            .add_host_coverage("vhost-net", host_info(), HOST_PCS)
            .unwrap();
        // Listed at once: a collector killed now leaves it readable.
        let partial = Store::open_partial(d).unwrap();
        assert_eq!(partial.meta.host, std::slice::from_ref(&h));
        assert_eq!(partial.host_pcs().unwrap()[0].1.pcs.len(), 3);
        assert!(c
            .add_host_coverage("vhost-net", host_info(), [1u64])
            .is_err());

        for f in frames[3..].iter().cloned() {
            c.frame(f).unwrap();
            c.checkpoint().unwrap();
        }
        let s = c.finish(None).unwrap();
        assert!(s.complete, "{s:?}");
        let store = Store::open(d).unwrap();
        assert_eq!(store.meta.host, [h]);
        let guest = store.all_pcs(None).unwrap();
        assert_eq!(guest.len(), 1);
        assert_eq!(guest[0].1.pcs, [1, 2, 3]);
        assert_eq!(guest[0].1.source, CoverageSource::Remote);

        // The lock went with the collector: the VMM can add after the guest's Done.
        add_host_coverage(d, "vhost-vsock", host_info(), [5u64]).unwrap();
        let store = Store::open(d).unwrap();
        assert_eq!(store.host_pcs().unwrap().len(), 2);
        assert_eq!(store.all_pcs(None).unwrap(), guest);
    }

    #[test]
    fn guest_chunk_claiming_host_is_refused() {
        let start = |w: &str| Frame::WorkloadStart(WorkloadStart { name: w.into() });
        let cases = [
            vec![
                hello(),
                start("a"),
                host_chunk("a"),
                result("a"),
                Frame::Done(Done { status: 0 }),
            ],
            // Outside any workload, too.
            vec![hello(), host_chunk("a"), Frame::Done(Done { status: 0 })],
        ];
        for frames in cases {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let s = collect(&stream(&frames)[..], d, KernelIdentity::default()).unwrap();
            assert!(!s.complete);
            let reason = s.incomplete_reason.unwrap();
            assert!(
                reason.starts_with("frame ")
                    && reason.contains("claims source=host")
                    && reason.contains("hostile"),
                "{reason}"
            );
            let e = Store::open(d).unwrap_err();
            assert!(matches!(e, StoreError::Incomplete { .. }), "{e}");
            assert!(e.to_string().contains("claims source=host"), "{e}");
            let partial = Store::open_partial(d).unwrap();
            assert!(partial.meta.host.is_empty());
            assert!(partial.host_pcs().unwrap().is_empty());
            assert!(partial.all_pcs(None).unwrap().is_empty());
            assert!(host_files(d).is_empty(), "{:?}", host_files(d));
        }

        // The VMM's own host coverage is still taken after the guest's stream failed.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut c = Collector::create(d, KernelIdentity::default()).unwrap();
        for f in [hello(), start("a"), host_chunk("a")] {
            c.frame(f).unwrap();
        }
        assert!(c.failed().unwrap().contains("source=host"));
        c.add_host_coverage("vhost-net", host_info(), [1u64])
            .unwrap();
        assert!(!c.finish(None).unwrap().complete);
        let partial = Store::open_partial(d).unwrap();
        assert_eq!(partial.host_pcs().unwrap()[0].1.pcs, [1]);
        assert!(partial.all_pcs(None).unwrap().is_empty());
    }

    #[test]
    fn old_meta_without_host_loads() {
        // meta.json as stores were written before host coverage existed.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = r#"{
  "format": 1,
  "complete": true,
  "incomplete_reason": null,
  "kernel": {
    "release": "6.12.117",
    "build_id": "ab",
    "kernel_key": null,
    "config_hash": null
  },
  "agent": {
    "agent_version": "t",
    "kernel_release": "6.12.117",
    "kcov_mode": "pc",
    "area_words": 65536,
    "common_handle": 66
  },
  "workloads": [
    {
      "name": "a",
      "result": {
        "status": 0,
        "duration_us": 5,
        "counters": [["n", 1]],
        "error": null
      },
      "coverage": [
        {
          "source": "remote",
          "mode": "pc",
          "file": "w0-a.remote.pcs",
          "distinct_pcs": 2,
          "entries": 3,
          "chunks": 1,
          "overflow": false
        }
      ]
    }
  ],
  "errors": [],
  "done_status": 0,
  "frames": 5
}"#;
        std::fs::write(d.join(META_FILE), old).unwrap();
        let m: HashMap<u64, u64> = [(0x15, 2), (0x25, 1)].into_iter().collect();
        let pcs = PcCounts::from_map(KcovMode::Pc, CoverageSource::Remote, false, &m);
        std::fs::write(d.join("w0-a.remote.pcs"), pcs.encode()).unwrap();
        std::fs::write(d.join(COMPLETE_MARKER), b"complete\n").unwrap();

        let store = Store::open(d).unwrap();
        assert!(store.meta.host.is_empty());
        assert!(store.host_pcs().unwrap().is_empty());
        assert_eq!(
            store.all_pcs(None).unwrap(),
            [("a".to_string(), pcs.clone())]
        );

        // Host coverage can be added to it; the old fields come back unchanged.
        add_host_coverage(d, "vhost-net", host_info(), [7u64]).unwrap();
        let mut v = meta_json(d);
        assert_eq!(v["host"][0]["name"], "vhost-net");
        v.as_object_mut().unwrap().remove("host");
        assert_eq!(v, serde_json::from_str::<serde_json::Value>(old).unwrap());
        let store = Store::open(d).unwrap();
        assert_eq!(store.host_pcs().unwrap()[0].1.pcs, [7]);
        assert_eq!(store.all_pcs(None).unwrap(), [("a".to_string(), pcs)]);
    }

    #[test]
    fn host_coverage_is_validated_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        collect(&stream(&good())[..], d, KernelIdentity::default()).unwrap();
        let long = "x".repeat(MAX_HOST_NAME_LEN + 1);
        for name in [
            "",
            "a/b",
            "..",
            ".hidden",
            "a b",
            "vhost\n",
            "é",
            long.as_str(),
        ] {
            let e = add_host_coverage(d, name, host_info(), [1u64]).unwrap_err();
            assert!(
                matches!(e, StoreError::HostCoverage { .. }) && e.to_string().contains("name is"),
                "{name:?}: {e}"
            );
        }
        add_host_coverage(d, &"x".repeat(MAX_HOST_NAME_LEN), host_info(), [1u64]).unwrap();
        let bad_idents = [
            (Some("6.8\nhost coverage fake".to_string()), None),
            (Some(String::new()), None),
            (None, Some("a".repeat(MAX_HOST_IDENT_LEN + 1))),
        ];
        for (release, build_id) in bad_idents {
            let info = HostCoverageInfo {
                kernel_release: release,
                kernel_build_id: build_id,
                ..host_info()
            };
            let e = add_host_coverage(d, "ok-name", info, [1u64]).unwrap_err();
            assert!(e.to_string().contains("host kernel"), "{e}");
        }
        // Only the valid entry got in; no file of a refused one was written.
        assert_eq!(Store::open(d).unwrap().meta.host.len(), 1);
        assert_eq!(host_files(d).len(), 1, "{:?}", host_files(d));
        let missing = d.join("nothing-here");
        assert!(matches!(
            add_host_coverage(&missing, "a", host_info(), [1u64]),
            Err(StoreError::Missing { .. })
        ));

        // Distinct PCs over all host entries stay under MAX_DISTINCT_PCS: with all but 5 used,
        // an endless iterator is cut off at once and 5 more fit.
        let scratch = tempfile::tempdir().unwrap();
        let mut meta = Store::open(d).unwrap().meta;
        meta.host[0].coverage.distinct_pcs = (MAX_DISTINCT_PCS - 5) as u64;
        let e = write_host_pcs(scratch.path(), &meta, "more", host_info(), 0u64..).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        assert!(host_files(scratch.path()).is_empty());
        let h = write_host_pcs(
            scratch.path(),
            &meta,
            "fits",
            host_info(),
            [1u64, 2, 3, 4, 5, 5, 5],
        )
        .unwrap();
        assert_eq!((h.coverage.distinct_pcs, h.coverage.entries), (5, 7));
        // Hit counts saturate instead of overflowing.
        assert_eq!(
            PcCounts::decode(&std::fs::read(scratch.path().join(&h.coverage.file)).unwrap())
                .unwrap()
                .hits,
            [1, 1, 1, 1, 3]
        );

        // At most MAX_HOST_ENTRIES entries.
        let mut meta = Store::open(d).unwrap().meta;
        meta.host[0].coverage.distinct_pcs = 0;
        let first = meta.host[0].clone();
        meta.host = (0..MAX_HOST_ENTRIES)
            .map(|i| HostCoverageMeta {
                name: format!("e{i}"),
                ..first.clone()
            })
            .collect();
        let e = write_host_pcs(scratch.path(), &meta, "one-more", host_info(), [1u64]).unwrap_err();
        assert!(e.to_string().contains("the most it holds"), "{e}");
    }

    #[test]
    fn host_and_guest_files_are_never_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        collect(&stream(&good())[..], d, KernelIdentity::default()).unwrap();
        add_host_coverage(d, "vhost-net", host_info(), HOST_PCS).unwrap();
        let good_meta = Store::open(d).unwrap().meta;

        // A workload that lists the host file: all_pcs refuses it rather than merge host PCs.
        let mut meta = good_meta.clone();
        let host_file = meta.host[0].coverage.clone();
        meta.workloads[0].coverage.push(host_file);
        write_meta_file(d, &meta).unwrap();
        let e = Store::open(d)
            .unwrap()
            .all_pcs(None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("host kernel coverage"), "{e}");

        // A host entry that points at a guest file is refused as well.
        let mut meta = good_meta.clone();
        meta.host[0].coverage.file = meta.workloads[0].coverage[0].file.clone();
        write_meta_file(d, &meta).unwrap();
        let e = Store::open(d).unwrap().host_pcs().unwrap_err().to_string();
        assert!(e.contains("remote (guest) coverage"), "{e}");

        // And one that leaves the store.
        let mut meta = good_meta;
        meta.host[0].coverage.file = "../meta.json".into();
        write_meta_file(d, &meta).unwrap();
        let e = Store::open(d).unwrap().host_pcs().unwrap_err().to_string();
        assert!(e.contains("not a plain name"), "{e}");
    }
}
