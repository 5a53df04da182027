//! A run directory: what `cargo xtask boot` writes and every report, diff and golden reads. This
//! module owns its layout and the meaning of its files; the CLI (xtask) only finds kernels and
//! prints.
//!
//! ```text
//! run-…/run.json       RunRecord: runner, kernel cache key(s), command line, initramfs, status
//!       coverage.kcw   the agent's kcov-wire stream, byte for byte (STREAM_FILE)
//!       store/         the stream collected (crate::store): meta.json, PC files, COMPLETE
//!       serial.log     the guest console
//! ```
//!
//! The stream is interpreted once, by the [`Collector`](crate::store::Collector): `boot`
//! collects it into the store when the VM ends and prints a [`StreamSummary`] of the store; a
//! report of a run whose boot was killed collects it then ([`open_or_collect`]). A loaded run
//! ([`LoadedRun`]) is the store's PCs mapped onto a vmlinux whose build-id was checked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::map::Attribution;
use crate::report::{HostCoverageReport, Report, RunCoverage, SourceFilter};
use crate::store::{
    self, KernelIdentity, PcCounts, Store, StoreError, StoreMeta, COMPLETE_MARKER, META_FILE,
};
use crate::symbolizer::SiteTable;
use crate::PathGlob;

/// The run's record.
pub const RUN_JSON: &str = "run.json";
/// The raw kcov-wire stream of a run, exactly as the agent sent it.
pub const STREAM_FILE: &str = "coverage.kcw";
/// The stream collected.
pub const STORE_DIR: &str = "store";

/// What a run failed with before any coverage could be read.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Neither a store nor a stream.
    #[error(
        "{}: no coverage here (neither {STORE_DIR}/ nor {STREAM_FILE}); give a run directory \
         written by `cargo xtask boot` with a workload",
        .0.display()
    )]
    NoCoverage(PathBuf),
    /// The vmlinux is not the run's kernel.
    #[error(
        "{}: build-id {have} does not match the run's kernel (build-id {want}{}); pass the \
         run's vmlinux with --vmlinux",
        vmlinux.display(),
        key.as_deref().map(|k| format!(", kernel key {k}")).unwrap_or_default()
    )]
    WrongKernel {
        /// The vmlinux given.
        vmlinux: PathBuf,
        /// Its build-id.
        have: String,
        /// The run's.
        want: String,
        /// The run's kernel cache key.
        key: Option<String>,
    },
    /// `--workload` names none of the run's.
    #[error("{}: no workload {name:?} in this run (it has: {})", dir.display(), have.join(", "))]
    NoSuchWorkload {
        /// The store.
        dir: PathBuf,
        /// Asked for.
        name: String,
        /// The run's workloads.
        have: Vec<String>,
    },
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `run.json` says about the initramfs a run booted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitramfsRef {
    /// SHA-256 of the image's bytes (hex): the cache entry's name.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// The cache entry it booted from.
    pub path: PathBuf,
}

/// `run.json`: written by `boot` before the VM starts and completed when it ends. Every field
/// is optional when read, so runs of older versions and killed boots still load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `qemu`, `kvm` or `nested`.
    #[serde(default)]
    pub runner: Option<String>,
    /// The guest kernel's cache key.
    #[serde(default)]
    pub kernel_key: Option<String>,
    /// The host kernel's cache key where it is ours (nested runner: L1), for host coverage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_kernel_key: Option<String>,
    /// The guest kernel's release.
    #[serde(default)]
    pub kernel_release: Option<String>,
    /// The guest kernel command line (the agent's plan words included).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// `-- CMD ARGS`.
    #[serde(default)]
    pub command: Vec<String>,
    /// The image booted (the run directory holds no copy). None for runs from before the
    /// initramfs cache.
    #[serde(default)]
    pub initramfs: Option<InitramfsRef>,
    /// How the VM ended, in words.
    #[serde(default)]
    pub status: Option<String>,
    /// None while the VM runs (or when the boot was killed before it ended).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// From the VM's start to the agent's ready line.
    #[serde(default)]
    pub ready_after_ms: Option<u128>,
    /// From the VM's start to its end.
    #[serde(default)]
    pub total_ms: Option<u128>,
}

impl RunRecord {
    /// `RUN_DIR/run.json`, when it is there and readable.
    pub fn read(run_dir: &Path) -> Option<RunRecord> {
        serde_json::from_slice(&std::fs::read(run_dir.join(RUN_JSON)).ok()?).ok()
    }

    /// Writes `RUN_DIR/run.json` atomically (a reader never sees half a file).
    pub fn write(&self, run_dir: &Path) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Io {
            path: run_dir.join(RUN_JSON),
            source: std::io::Error::other(e),
        })?;
        store::write_atomic(&run_dir.join(RUN_JSON), &bytes)
    }

    /// The workloads the run asked the agent for, then `-- CMD` when it ran a command.
    pub fn work(&self) -> String {
        let mut parts: Vec<String> = self
            .cmdline
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("testbed.workloads="))
            .map(str::to_string)
            .collect();
        if !self.command.is_empty() {
            parts.push(format!("-- {}", self.command.join(" ")));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// The store of a run directory (`RUN_DIR/store`), or `RUN_DIR` itself when it is a store.
pub fn store_dir(run_dir: &Path) -> PathBuf {
    if run_dir.join(META_FILE).is_file() {
        run_dir.to_path_buf()
    } else {
        run_dir.join(STORE_DIR)
    }
}

/// Opens the run's store, collecting `coverage.kcw` into it first when there is none yet, or
/// when the collector of the one there died (its lock is free). A store another process is
/// collecting right now is waited for, not refused. `identity` (called only when collecting) is
/// the kernel the run booted. What the user should know (an interrupted collection, an
/// incomplete stream) goes to `notes`. An incomplete store is an error unless `partial`.
pub fn open_or_collect(
    run_dir: &Path,
    partial: bool,
    identity: impl FnOnce() -> KernelIdentity,
    notes: &mut Vec<String>,
) -> Result<Store, RunError> {
    let dir = store_dir(run_dir);
    let stream = run_dir.join(STREAM_FILE);
    let missing = !dir.join(META_FILE).is_file();
    if missing && !stream.is_file() {
        return Err(RunError::NoCoverage(run_dir.to_path_buf()));
    }
    let died = !missing && stream.is_file() && store::collection_died(&dir)?;
    if died {
        notes.push(format!(
            "the collection of {} was interrupted (its collector died); collecting again",
            dir.display()
        ));
    }
    if missing || died {
        match store::collect_file(&stream, &dir, identity()) {
            Ok(s) if !s.complete => notes.push(format!(
                "{} is incomplete: {}",
                stream.display(),
                s.incomplete_reason.as_deref().unwrap_or("?")
            )),
            Ok(_) => {}
            // Another process is collecting it: wait for it to finish.
            Err(StoreError::Busy { .. }) => store::wait_for_writer(&dir)?,
            // Another process finished it between our checks.
            Err(StoreError::AlreadyComplete { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    } else if !dir.join(COMPLETE_MARKER).exists() {
        // A live collector may be writing it (its meta.json and the marker come last, under
        // its lock): wait for the lock; without a writer this returns at once.
        store::wait_for_writer(&dir)?;
    }
    Ok(if partial {
        Store::open_partial(&dir)?
    } else {
        Store::open(&dir)?
    })
}

/// What to load of a run.
#[derive(Clone, Debug, Default)]
pub struct LoadOpts {
    /// vmlinux (default: the run's kernel).
    pub vmlinux: Option<PathBuf>,
    /// Sources to merge.
    pub sources: SourceFilter,
    /// Only this workload.
    pub workload: Option<String>,
    /// Accept an incomplete store.
    pub partial: bool,
}

/// A run's coverage mapped onto its kernel.
pub struct LoadedRun {
    /// The store.
    pub store: Store,
    /// The vmlinux used.
    pub vmlinux: PathBuf,
    /// Its build-id.
    pub build_id: Option<String>,
    /// Coverage (the guest's only).
    pub coverage: RunCoverage,
    /// The vmlinux's site table.
    pub table: Arc<SiteTable>,
    /// The run's host kernel coverage: counted in reports, never mapped onto `table`.
    pub host: Vec<HostCoverageReport>,
}

impl LoadedRun {
    /// Maps `store`'s guest PCs (of `opts.workload`, or all) onto `table`, the site table of
    /// `vmlinux` (build-id `build_id`), after checking that it is the run's kernel. The store's
    /// host kernel coverage is only read and counted.
    pub fn new(
        store: Store,
        opts: &LoadOpts,
        vmlinux: PathBuf,
        table: Arc<SiteTable>,
        build_id: Option<String>,
    ) -> Result<LoadedRun, RunError> {
        if let (Some(want), Some(have)) = (&store.meta.kernel.build_id, &build_id) {
            if want != have {
                return Err(RunError::WrongKernel {
                    vmlinux,
                    have: have.clone(),
                    want: want.clone(),
                    key: store.meta.kernel.kernel_key.clone(),
                });
            }
        }
        if let Some(w) = &opts.workload {
            if store.meta.workload(w).is_none() {
                return Err(RunError::NoSuchWorkload {
                    dir: store.dir.clone(),
                    name: w.clone(),
                    have: store
                        .meta
                        .workloads
                        .iter()
                        .map(|w| w.name.clone())
                        .collect(),
                });
            }
        }
        let pcs: Vec<PcCounts> = store
            .all_pcs(opts.workload.as_deref())?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let coverage = RunCoverage::build(&table, &pcs, opts.sources, Attribution::AllFrames);
        let host = HostCoverageReport::from_store(&store)?;
        Ok(LoadedRun {
            store,
            vmlinux,
            build_id,
            coverage,
            table,
            host,
        })
    }

    /// `6.12.117, build-id ab12…, key …`.
    pub fn kernel_desc(&self) -> String {
        let k = &self.store.meta.kernel;
        let mut s = k
            .release
            .clone()
            .unwrap_or_else(|| "unknown release".into());
        if let Some(b) = &self.build_id {
            s.push_str(&format!(", build-id {b}"));
        }
        if let Some(key) = &k.kernel_key {
            s.push_str(&format!(", kernel key {key}"));
        }
        s.push_str(&format!(", vmlinux {}", self.vmlinux.display()));
        s
    }

    /// The report under `filter` (host coverage listed, not mapped).
    pub fn report(&self, filter: &[PathGlob], title: &str) -> Report {
        Report::new(
            &self.table,
            &self.coverage,
            filter,
            title,
            &self.kernel_desc(),
        )
        .with_host(self.host.clone())
    }

    /// One report per workload of the run (in run order), each of that workload's PCs from
    /// `sources` alone: the columns of a [`crate::matrix::FunctionMatrix`].
    pub fn workload_reports(
        &self,
        filter: &[PathGlob],
        sources: SourceFilter,
    ) -> Result<Vec<(String, Report)>, RunError> {
        let mut out = Vec::new();
        for w in &self.store.meta.workloads {
            let pcs: Vec<PcCounts> = self
                .store
                .all_pcs(Some(&w.name))?
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            let cov = RunCoverage::build(&self.table, &pcs, sources, Attribution::AllFrames);
            let report = Report::new(&self.table, &cov, filter, &w.name, &self.kernel_desc());
            out.push((w.name.clone(), report));
        }
        Ok(out)
    }

    /// What failed in the run (see [`store::run_failures`]).
    pub fn failures(&self, cut_short: bool) -> Vec<String> {
        store::run_failures(&self.store.meta, cut_short)
    }
}

/// One workload of a run, as its collected stream tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadSummary {
    /// Name.
    pub name: String,
    /// From WorkloadResult (None: the stream ended before it).
    pub status: Option<i32>,
    /// Its duration.
    pub duration_us: u64,
    /// Its counters.
    pub counters: Vec<(String, u64)>,
    /// Its error.
    pub error: Option<String>,
    /// Remote coverage entries (PCs, or comparisons in CMP mode).
    pub pcs: u64,
    /// Distinct remote PCs.
    pub unique_pcs: u64,
    /// A remote area overflowed: coverage was lost.
    pub overflow: bool,
    /// Local coverage entries, if the agent collected any.
    pub local_pcs: u64,
}

impl WorkloadSummary {
    /// Workload iterations (frames, messages) per second of its data loop (counters
    /// `iterations` and `loop_us`), the figure to compare with coverage on and off.
    pub fn iterations_per_sec(&self) -> Option<f64> {
        let (n, us) = (self.counter("iterations")?, self.counter("loop_us")?);
        (us > 0).then(|| n as f64 * 1e6 / us as f64)
    }

    /// Remote PCs shipped per second over the stream transport (counters `remote_pcs`,
    /// `ship_us`: the agent's time to write the coverage frames).
    pub fn pcs_shipped_per_sec(&self) -> Option<f64> {
        let (n, us) = (self.counter("remote_pcs")?, self.counter("ship_us")?);
        (us > 0 && n > 0).then(|| n as f64 * 1e6 / us as f64)
    }

    /// A counter from the WorkloadResult.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

/// What a run's stream says, from its collected store: the summary `boot` prints.
#[derive(Clone, Debug, Default)]
pub struct StreamSummary {
    /// Trace mode (`pc`, `cmp`) and common handle of the Hello (None: no Hello).
    pub hello: Option<(String, u64)>,
    /// Workloads in stream order.
    pub workloads: Vec<WorkloadSummary>,
    /// Error frames.
    pub errors: Vec<String>,
    /// Done status (None: the stream ended early).
    pub done: Option<i32>,
    /// Stream bytes.
    pub bytes: u64,
    /// Why the stream is incomplete or was refused, if it is.
    pub problem: Option<String>,
}

impl StreamSummary {
    /// The summary of a collected store whose stream had `bytes` bytes.
    pub fn from_meta(meta: &StoreMeta, bytes: u64) -> StreamSummary {
        let workloads = meta
            .workloads
            .iter()
            .map(|w| {
                let mut s = WorkloadSummary {
                    name: w.name.clone(),
                    ..Default::default()
                };
                if let Some(r) = &w.result {
                    s.status = Some(r.status);
                    s.duration_us = r.duration_us;
                    s.counters = r.counters.clone();
                    s.error = r.error.clone();
                }
                for f in &w.coverage {
                    match f.source.as_str() {
                        "remote" => {
                            s.pcs += f.entries;
                            s.unique_pcs += f.distinct_pcs;
                            s.overflow |= f.overflow;
                        }
                        "local" => s.local_pcs += f.entries,
                        _ => {}
                    }
                }
                s
            })
            .collect();
        StreamSummary {
            hello: meta
                .agent
                .as_ref()
                .map(|h| (h.kcov_mode.clone(), h.common_handle)),
            workloads,
            errors: meta.errors.clone(),
            done: meta.done_status,
            bytes,
            problem: (!meta.complete).then(|| {
                meta.incomplete_reason
                    .clone()
                    .unwrap_or_else(|| "incomplete".into())
            }),
        }
    }

    /// The summary of a run directory's stream, collecting it first if nobody has (with an
    /// unknown kernel identity: `boot` collects with the real one).
    pub fn of_run(run_dir: &Path) -> Result<StreamSummary, RunError> {
        let store = open_or_collect(run_dir, true, KernelIdentity::default, &mut Vec::new())?;
        let bytes = std::fs::metadata(run_dir.join(STREAM_FILE)).map_or(0, |m| m.len());
        Ok(StreamSummary::from_meta(&store.meta, bytes))
    }

    /// A workload by name.
    pub fn workload(&self, name: &str) -> Option<&WorkloadSummary> {
        self.workloads.iter().find(|w| w.name == name)
    }
}

impl fmt::Display for StreamSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.hello {
            Some((_, 0)) => "coverage off".to_string(),
            Some((m, h)) => {
                // As the agent's KcovMode prints: `Pc`, `Cmp`.
                let mut m = m.clone();
                if let Some(c) = m.get_mut(..1) {
                    c.make_ascii_uppercase();
                }
                format!("{m} mode, common handle {h:#x}")
            }
            None => "no Hello".to_string(),
        };
        writeln!(f, "coverage stream: {} bytes, {mode}", self.bytes)?;
        for e in &self.errors {
            writeln!(f, "  agent error: {e}")?;
        }
        let overflowed = |w: &WorkloadSummary| {
            if w.overflow {
                ", OVERFLOW (raise testbed.area)"
            } else {
                ""
            }
        };
        for w in &self.workloads {
            if w.status.is_none() {
                // The run ended while it ran: the agent's snapshots are all there is.
                let coverage = if w.pcs == 0 {
                    "no coverage of it reached the host".to_string()
                } else {
                    format!(
                        "coverage up to its last snapshot, {} remote PCs, {} unique{}",
                        w.pcs,
                        w.unique_pcs,
                        overflowed(w)
                    )
                };
                writeln!(
                    f,
                    "  {:<14} no result (the run ended while it ran): {coverage}",
                    w.name
                )?;
                continue;
            }
            let status = match (w.status, &w.error) {
                (Some(0), _) => "ok".to_string(),
                (Some(s), Some(e)) => format!("FAILED ({s}): {e}"),
                (Some(s), None) => format!("FAILED ({s})"),
                (None, _) => "no result".to_string(),
            };
            let its = w.counter("iterations").unwrap_or(0);
            let mut rates = String::new();
            if let Some(r) = w.iterations_per_sec() {
                rates.push_str(&format!(", {r:.0} it/s"));
            }
            if let Some(r) = w.pcs_shipped_per_sec() {
                rates.push_str(&format!(", shipped {r:.0} PCs/s"));
            }
            writeln!(
                f,
                "  {:<14} {status}; {} remote PCs, {} unique{}; {} iterations in {:.1} ms{rates}",
                w.name,
                w.pcs,
                w.unique_pcs,
                overflowed(w),
                its,
                w.duration_us as f64 / 1000.0
            )?;
        }
        match (self.done, &self.problem) {
            (_, Some(p)) => write!(f, "  stream problem: {p}"),
            (Some(s), None) => write!(f, "  done, agent status {s}"),
            (None, None) => write!(f, "  no Done frame"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kcov_wire::{
        encode, CoverageChunk, CoverageSource, Done, ErrorReport, Frame, Hello, KcovMode,
        WorkloadResult, WorkloadStart,
    };

    fn stream(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| encode(f).unwrap()).collect()
    }

    /// The summary `boot` prints of a run whose stream is `bytes`.
    fn summarize(bytes: &[u8]) -> StreamSummary {
        let run = tempfile::tempdir().unwrap();
        std::fs::write(run.path().join(STREAM_FILE), bytes).unwrap();
        StreamSummary::of_run(run.path()).unwrap()
    }

    #[test]
    fn summary_counts_and_flags() {
        let chunk = |seq, words: Vec<u64>, overflow| {
            Frame::CoverageChunk(CoverageChunk {
                workload: "tx".into(),
                source: CoverageSource::Remote,
                mode: KcovMode::Pc,
                seq,
                overflow,
                words,
            })
        };
        let frames = [
            Frame::Hello(Hello {
                agent_version: "0".into(),
                kernel_release: "6.12".into(),
                kcov_mode: KcovMode::Pc,
                area_words: 512,
                common_handle: 7,
            }),
            Frame::WorkloadStart(WorkloadStart { name: "tx".into() }),
            chunk(0, vec![1, 2, 2], false),
            chunk(1, vec![3, 1], true),
            Frame::WorkloadResult(WorkloadResult {
                name: "tx".into(),
                status: 0,
                duration_us: 5000,
                counters: vec![
                    ("iterations".into(), 10),
                    ("loop_us".into(), 1000),
                    ("remote_pcs".into(), 5),
                    ("ship_us".into(), 10),
                ],
                error: None,
            }),
            Frame::Error(ErrorReport {
                message: "note".into(),
            }),
            Frame::Done(Done { status: 0 }),
        ];
        let bytes = stream(&frames);
        let r = summarize(&bytes);
        assert_eq!(r.problem, None);
        assert_eq!(r.done, Some(0));
        let w = r.workload("tx").unwrap();
        assert_eq!((w.pcs, w.unique_pcs, w.overflow), (5, 3, true));
        assert_eq!(w.iterations_per_sec(), Some(10_000.0));
        assert_eq!(w.pcs_shipped_per_sec(), Some(500_000.0));
        let text = r.to_string();
        assert!(text.contains("OVERFLOW"), "{text}");
        assert!(text.contains("agent error: note"), "{text}");

        // Truncated and garbage streams are reported, never panic.
        let cut = summarize(&bytes[..bytes.len() - 3]);
        assert!(cut.problem.is_some());
        let junk = summarize(b"not a stream at all");
        assert!(junk.problem.is_some());
        let no_done = summarize(&bytes[..bytes.len() - 20]);
        assert!(no_done.problem.unwrap().contains("Done"));

        // A run that ended while "tx" ran: its snapshots are shown as what they are.
        let cut: Vec<Frame> = frames
            .iter()
            .filter(|f| {
                !matches!(
                    f,
                    Frame::WorkloadResult(_) | Frame::Error(_) | Frame::Done(_)
                )
            })
            .cloned()
            .collect();
        let text = summarize(&stream(&cut)).to_string();
        assert!(
            text.contains(
                "  tx             no result (the run ended while it ran): coverage up to its \
                 last snapshot, 5 remote PCs, 3 unique, OVERFLOW"
            ),
            "{text}"
        );
        // One that ended before its first snapshot.
        let text = summarize(&stream(&[
            frames[0].clone(),
            Frame::WorkloadStart(WorkloadStart { name: "cmd".into() }),
        ]))
        .to_string();
        assert!(
            text.contains(
                "  cmd            no result (the run ended while it ran): no coverage of it \
                 reached the host"
            ),
            "{text}"
        );
    }

    #[test]
    fn run_records_round_trip_and_old_ones_load() {
        let run = tempfile::tempdir().unwrap();
        assert_eq!(RunRecord::read(run.path()), None);
        let r = RunRecord {
            runner: Some("qemu".into()),
            kernel_key: Some("abc".into()),
            cmdline: Some("console=ttyS0 testbed.workloads=vhost-net-tx".into()),
            command: vec!["/bin/x".into()],
            exit_code: Some(0),
            ..RunRecord::default()
        };
        r.write(run.path()).unwrap();
        assert_eq!(RunRecord::read(run.path()), Some(r.clone()));
        assert_eq!(r.work(), "vhost-net-tx -- /bin/x");
        // A record of an older version, with fields missing: still read.
        std::fs::write(run.path().join(RUN_JSON), br#"{"kernel_key":"k"}"#).unwrap();
        assert_eq!(
            RunRecord::read(run.path()).and_then(|r| r.kernel_key),
            Some("k".into())
        );
        // A run without coverage says so.
        let e = open_or_collect(run.path(), true, KernelIdentity::default, &mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("no coverage here"), "{e}");
    }
}
