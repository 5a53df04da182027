//! All instrumented sites of one image with their frames: the input of every report, and what the
//! per-build-id cache stores.

use std::time::{Duration, Instant};

use super::dwarf::{Frame, Symbolizer};
use super::sites::{enumerate_sites, map_pcs, CallSite, PcMapping, SiteScan, TailCall};
use super::vmlinux::{BuildId, Vmlinux};
use super::Error;

/// Every instrumented call site of one image, symbolized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteTable {
    /// Build-id of the image the table was built from.
    pub build_id: Option<BuildId>,
    /// The source prefixes stripped from file paths ([`Symbolizer::src_roots`]).
    pub src_roots: Vec<String>,
    /// Sites sorted by `call_addr`.
    pub sites: Vec<CallSite>,
    /// `frames[i]` are the frames of `sites[i]`, innermost first.
    pub frames: Vec<Vec<Frame>>,
    /// Tail jumps to hooks (see [`TailCall`]).
    pub tail_calls: Vec<TailCall>,
    /// Invalid encodings met while enumerating sites.
    pub decode_errors: u64,
    /// Sites whose DWARF lookup failed (they carry the symbol-table fallback).
    pub dwarf_errors: usize,
}

/// Timings of [`symbolize_all_sites`] (for benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizeAllStats {
    /// Sites symbolized.
    pub sites: usize,
    /// Frames produced (more than `sites` where code was inlined).
    pub frames: usize,
    /// Decoding the code to find sites (the DWARF unit index is parsed meanwhile).
    pub enumerate: Duration,
    /// Symbolizing every site, after `enumerate`.
    pub symbolize: Duration,
    /// Both.
    pub total: Duration,
}

impl SiteTable {
    /// Enumerates sites and symbolizes them (no cache).
    pub fn build(vmlinux: &Vmlinux) -> Result<Self, Error> {
        Ok(Self::build_timed(vmlinux)?.0)
    }

    /// [`SiteTable::build`] plus how long each stage took. The DWARF unit index is parsed on
    /// its own thread while the code is decoded (on the others), so the stages overlap:
    /// `enumerate` ends when the sites are known, `symbolize` is the rest.
    pub fn build_timed(vmlinux: &Vmlinux) -> Result<(Self, SymbolizeAllStats), Error> {
        let start = Instant::now();
        vmlinux.require_dwarf()?;
        let (scan, symbolizer, enumerate) = std::thread::scope(|s| {
            let symbolizer = s.spawn(|| Symbolizer::new(vmlinux));
            let scan = enumerate_sites(vmlinux);
            let enumerate = start.elapsed();
            let symbolizer = symbolizer
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (scan, symbolizer, enumerate)
        });
        let (scan, symbolizer) = (scan?, symbolizer?);
        let table = Self::from_scan(scan, &symbolizer);
        let total = start.elapsed();
        let stats = SymbolizeAllStats {
            sites: table.sites.len(),
            frames: table.frames.iter().map(Vec::len).sum(),
            enumerate,
            symbolize: total - enumerate,
            total,
        };
        Ok((table, stats))
    }

    /// Symbolizes the sites of `scan` with a caller-configured symbolizer
    /// (e.g. [`Symbolizer::with_src_roots`]).
    pub fn from_scan(scan: SiteScan, symbolizer: &Symbolizer<'_>) -> Self {
        let addrs: Vec<u64> = scan.sites.iter().map(|s| s.call_addr).collect();
        let errors_before = symbolizer.dwarf_errors();
        let frames = symbolizer.symbolize_sorted(&addrs);
        SiteTable {
            build_id: symbolizer.vmlinux().build_id().cloned(),
            src_roots: symbolizer.src_roots().to_vec(),
            sites: scan.sites,
            frames,
            tail_calls: scan.tail_calls,
            decode_errors: scan.decode_errors,
            dwarf_errors: symbolizer.dwarf_errors() - errors_before,
        }
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// True without sites.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Index of the site whose call instruction is at `call_addr`.
    pub fn index_of(&self, call_addr: u64) -> Option<usize> {
        self.sites
            .binary_search_by_key(&call_addr, |s| s.call_addr)
            .ok()
    }

    /// Frames of the site at `call_addr`.
    pub fn frames_of(&self, call_addr: u64) -> Option<&[Frame]> {
        self.index_of(call_addr).map(|i| self.frames[i].as_slice())
    }

    /// Maps raw kcov PCs onto this table's sites.
    pub fn map_pcs(&self, pcs: impl IntoIterator<Item = u64>) -> PcMapping {
        map_pcs(&self.sites, pcs)
    }
}

/// Benchmark entry: enumerate and symbolize every instrumented site of `vmlinux` (no cache).
pub fn symbolize_all_sites(vmlinux: &Vmlinux) -> Result<SymbolizeAllStats, Error> {
    Ok(SiteTable::build_timed(vmlinux)?.1)
}
