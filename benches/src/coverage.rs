//! Benchmarks of the host coverage pipeline (the `coverage` crate), each with its
//! baseline measured in the same run (`cargo xtask bench symbolize` prints them;
//! `benches/tests/coverage.rs` runs them by hand).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kcov_wire::{
    chunk_coverage, encode_into, CoverageSource, Done, Frame, Hello, KcovMode, WorkloadResult,
    WorkloadStart,
};

use coverage::glob::PathGlob;
use coverage::html::write_html;
use coverage::map::Attribution;
use coverage::report::{Report, RunCoverage, SourceFilter, DEFAULT_FILTER};
use coverage::store::{collect, KernelIdentity, PcCounts, Store};
use coverage::symbolizer::{SiteKind, SiteTable, SymbolCache, Vmlinux};

/// What a benchmark can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The symbolizer.
    #[error(transparent)]
    Symbolize(#[from] coverage::symbolizer::Error),
    /// The store.
    #[error(transparent)]
    Store(#[from] coverage::store::StoreError),
    /// The stream encoder.
    #[error("encoding the synthetic stream: {0}")]
    Wire(#[from] kcov_wire::WireError),
    /// The baseline tool.
    #[error("addr2line (binutils): {0}")]
    Addr2line(String),
}

/// Figures of [`symbolize_vs_addr2line`].
#[derive(Clone, Copy, Debug)]
pub struct SymbolizeBench {
    /// Instrumented sites.
    pub sites: usize,
    /// Frames we produced.
    pub frames: usize,
    /// Our enumerate + symbolize of every site.
    pub ours: Duration,
    /// Of which symbolizing, after the sites are known (the DWARF unit index is parsed while
    /// the code is decoded).
    pub ours_symbolize: Duration,
    /// GNU `addr2line -f -i -e vmlinux` on the same addresses.
    pub addr2line: Duration,
    /// Lines addr2line printed.
    pub addr2line_lines: usize,
    /// Loading the same table from the per-build-id cache (what every report after the first
    /// one on a kernel pays), when the image has a build-id.
    pub cached: Option<Duration>,
}

impl SymbolizeBench {
    /// addr2line time / our whole time (enumerate + symbolize).
    pub fn ratio(&self) -> f64 {
        self.addr2line.as_secs_f64() / self.ours.as_secs_f64().max(1e-9)
    }

    /// addr2line time / cached table load time.
    pub fn cached_ratio(&self) -> Option<f64> {
        self.cached
            .map(|c| self.addr2line.as_secs_f64() / c.as_secs_f64().max(1e-9))
    }
}

/// Enumerates and symbolizes every instrumented site of `vmlinux` (no cache), then runs
/// binutils `addr2line -f -i -e vmlinux` on the same addresses (fed on stdin); also stores the
/// table in a cache under `cache_dir` and times loading it back.
pub fn symbolize_vs_addr2line(
    vmlinux: &Path,
    cache_dir: &Path,
) -> Result<SymbolizeBench, BenchError> {
    let vm = Vmlinux::open(vmlinux)?;
    let (table, stats) = SiteTable::build_timed(&vm)?;
    let cached = match &table.build_id {
        Some(id) => {
            let cache = SymbolCache::new(cache_dir);
            cache.store(&table)?;
            let t = Instant::now();
            let loaded = cache.load(id).ok().flatten();
            let d = t.elapsed();
            (loaded.as_ref() == Some(&table)).then_some(d)
        }
        None => None,
    };
    let addrs: String = table
        .sites
        .iter()
        .map(|s| format!("{:#x}\n", s.call_addr))
        .collect();
    let a2l = |e: std::io::Error| BenchError::Addr2line(e.to_string());
    let start = Instant::now();
    let mut child = Command::new("addr2line")
        .args(["-f", "-i", "-e"])
        .arg(vmlinux)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(a2l)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| BenchError::Addr2line("no stdin".into()))?;
    let writer = std::thread::spawn(move || stdin.write_all(addrs.as_bytes()));
    let out = child.wait_with_output().map_err(a2l)?;
    let addr2line = start.elapsed();
    writer
        .join()
        .map_err(|_| BenchError::Addr2line("writer thread panicked".into()))?
        .map_err(a2l)?;
    if !out.status.success() {
        return Err(BenchError::Addr2line(format!("exited with {}", out.status)));
    }
    Ok(SymbolizeBench {
        sites: stats.sites,
        frames: stats.frames,
        ours: stats.total,
        ours_symbolize: stats.symbolize,
        addr2line,
        addr2line_lines: out.stdout.iter().filter(|b| **b == b'\n').count(),
        cached,
    })
}

/// Figures of [`report_generation`].
#[derive(Clone, Debug)]
pub struct ReportBench {
    /// PC entries in the synthetic run.
    pub entries: usize,
    /// Distinct PCs.
    pub distinct: usize,
    /// Stage timings, in order.
    pub stages: Vec<(&'static str, Duration)>,
}

impl ReportBench {
    /// Sum of the stages.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.1).sum()
    }
}

/// A synthetic stream of `entries` PCs: return addresses of `table`'s PC sites, cycled.
pub fn synthetic_stream(table: &SiteTable, entries: usize) -> Result<Vec<u8>, BenchError> {
    let pcs: Vec<u64> = table
        .sites
        .iter()
        .filter(|s| s.kind == SiteKind::Pc)
        .map(|s| s.ret_addr)
        .cycle()
        .take(entries)
        .collect();
    let w = "bench";
    let mut stream = Vec::new();
    for f in [
        Frame::Hello(Hello {
            agent_version: "bench".into(),
            kernel_release: "bench".into(),
            kcov_mode: KcovMode::Pc,
            area_words: u32::try_from(entries).unwrap_or(u32::MAX),
            common_handle: 1,
        }),
        Frame::WorkloadStart(WorkloadStart { name: w.into() }),
    ] {
        encode_into(&f, &mut stream)?;
    }
    for c in chunk_coverage(
        w,
        CoverageSource::Remote,
        KcovMode::Pc,
        false,
        &pcs,
        0,
        1 << 16,
    )? {
        encode_into(&Frame::CoverageChunk(c), &mut stream)?;
    }
    for f in [
        Frame::WorkloadResult(WorkloadResult {
            name: w.into(),
            status: 0,
            duration_us: 0,
            counters: vec![],
            error: None,
        }),
        Frame::Done(Done { status: 0 }),
    ] {
        encode_into(&f, &mut stream)?;
    }
    Ok(stream)
}

/// Report generation for a run of `entries` PCs with an already loaded `table`: collect the
/// stream into a store under `work_dir`, read it back, map, and render text, lcov, JSON, HTML.
pub fn report_generation(
    table: &SiteTable,
    entries: usize,
    source_root: Option<&Path>,
    work_dir: &Path,
) -> Result<ReportBench, BenchError> {
    let stream = synthetic_stream(table, entries)?;
    let distinct = table
        .sites
        .iter()
        .filter(|s| s.kind == SiteKind::Pc)
        .take(entries)
        .map(|s| s.ret_addr)
        .collect::<BTreeSet<_>>()
        .len();
    let store_dir = work_dir.join("store");
    let _ = std::fs::remove_dir_all(&store_dir);
    let mut stages = Vec::new();
    let t = Instant::now();
    collect(
        &stream[..],
        &store_dir,
        KernelIdentity {
            build_id: table.build_id.as_ref().map(|b| b.to_hex()),
            ..KernelIdentity::default()
        },
    )?;
    stages.push(("collect stream into store", t.elapsed()));
    let t = Instant::now();
    let store = Store::open(&store_dir)?;
    let pcs: Vec<PcCounts> = store.all_pcs(None)?.into_iter().map(|p| p.1).collect();
    stages.push(("open store, read PC files", t.elapsed()));
    let t = Instant::now();
    let run = RunCoverage::build(table, &pcs, SourceFilter::All, Attribution::AllFrames);
    stages.push(("map PCs to sites", t.elapsed()));
    let t = Instant::now();
    let report = Report::new(table, &run, &[PathGlob::new(DEFAULT_FILTER)], "bench", "");
    stages.push(("build report (drivers/vhost/*)", t.elapsed()));
    let t = Instant::now();
    let _ = report.text();
    let _ = report.lcov("bench", source_root);
    let _ = report.json();
    stages.push(("render text + lcov + json", t.elapsed()));
    let t = Instant::now();
    write_html(&report, &work_dir.join("html"), source_root)?;
    stages.push(("render html (with sources)", t.elapsed()));
    let t = Instant::now();
    let all = Report::new(table, &run, &[PathGlob::new("**")], "bench", "");
    let _ = all.lcov("bench", None);
    stages.push(("whole-kernel report + lcov", t.elapsed()));
    Ok(ReportBench {
        entries,
        distinct,
        stages,
    })
}
