//! Reports: stored PCs + a [`SiteTable`] → per file and function coverage, rendered as a
//! terminal summary, an lcov tracefile, JSON, or HTML ([`crate::html`]).
//!
//! Host kernel coverage (source `host`, [`crate::store::Store::host_pcs`]) belongs to another
//! kernel: [`RunCoverage::build`] never merges it, whatever the [`SourceFilter`]; a report only
//! counts it ([`HostCoverageReport`], [`Report::with_host`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kcov_wire::{CoverageSource, KcovMode};
use serde::{Deserialize, Serialize};

use crate::glob::PathGlob;
use crate::map::{Attribution, CoverageMap, MapOptions};
use crate::store::{HostCoverageMeta, PcCounts, Store, StoreError};
use crate::symbolizer::{PcMapping, SiteKind, SiteTable};

/// The filter reports use unless told otherwise.
pub const DEFAULT_FILTER: &str = "drivers/vhost/*";

/// Which guest coverage sources a report merges (host coverage never is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceFilter {
    /// Remote and local.
    #[default]
    All,
    /// Remote only (the vhost workers under the common handle).
    Remote,
    /// Local only (the agent's own syscalls).
    Local,
    /// The host kernel's PCs (`--host-kcov`): only for mapping onto the host's own vmlinux.
    Host,
}

impl SourceFilter {
    /// Parses `all`, `remote`, `local`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(SourceFilter::All),
            "remote" => Some(SourceFilter::Remote),
            "local" => Some(SourceFilter::Local),
            "host" => Some(SourceFilter::Host),
            _ => None,
        }
    }

    fn admits(self, s: CoverageSource) -> bool {
        match (self, s) {
            // PCs of the host's kernel: symbolizing them against the guest vmlinux would credit
            // whatever guest code happens to sit at those addresses; `Host` is asked for only
            // with the host's vmlinux.
            (SourceFilter::Host, s) => s == CoverageSource::Host,
            (_, CoverageSource::Host) => false,
            (SourceFilter::All, _) => true,
            (SourceFilter::Remote, s) => s == CoverageSource::Remote,
            (SourceFilter::Local, s) => s == CoverageSource::Local,
        }
    }
}

/// Raw PCs mapped onto sites: what every report of one run is made from (with the same table).
#[derive(Clone, Debug)]
pub struct RunCoverage {
    /// Frame attribution for maps.
    pub attribution: Attribution,
    /// Hit counts per site (call address).
    pub counts: HashMap<u64, u64>,
    /// Site kind that was counted.
    pub kind: SiteKind,
    /// Distinct PCs received.
    pub distinct_pcs: usize,
    /// Distinct PCs that are not the return address of any instrumented call (other image?).
    pub unmatched_pcs: usize,
    /// A kcov area overflowed: coverage was lost.
    pub overflow: bool,
}

impl RunCoverage {
    /// Merges the PC sets admitted by `sources` and maps them onto `table`. PC sets of source
    /// `host` are admitted only by [`SourceFilter::Host`] (and `table` must then be the host
    /// kernel's).
    pub fn build(
        table: &SiteTable,
        pcs: &[PcCounts],
        sources: SourceFilter,
        attribution: Attribution,
    ) -> Self {
        let admitted: Vec<&PcCounts> = pcs.iter().filter(|p| sources.admits(p.source)).collect();
        // CMP-only runs count CMP sites; anything else counts PC sites.
        let cmp_only = !admitted.is_empty() && admitted.iter().all(|p| p.mode == KcovMode::Cmp);
        let (kind, mode) = if cmp_only {
            (SiteKind::Cmp, KcovMode::Cmp)
        } else {
            (SiteKind::Pc, KcovMode::Pc)
        };
        let mut merged: HashMap<u64, u64> = HashMap::new();
        let mut overflow = false;
        for p in admitted.iter().filter(|p| p.mode == mode) {
            overflow |= p.overflow;
            for (pc, n) in p.iter() {
                let e = merged.entry(pc).or_insert(0);
                *e = e.saturating_add(n);
            }
        }
        let mut mapping = PcMapping::default();
        for (&pc, &n) in &merged {
            match table.sites.binary_search_by_key(&pc, |s| s.ret_addr) {
                Ok(i) => *mapping.hits.entry(table.sites[i].call_addr).or_default() += n,
                Err(_) => *mapping.unmatched.entry(pc).or_default() += n,
            }
        }
        RunCoverage {
            attribution,
            counts: mapping.hits.into_iter().collect(),
            kind,
            distinct_pcs: merged.len(),
            unmatched_pcs: mapping.unmatched.len(),
            overflow,
        }
    }

    /// The coverage map of the files matching `filter` (`table` is the one given to `build`).
    pub fn map(&self, table: &SiteTable, filter: &[PathGlob]) -> CoverageMap {
        CoverageMap::build_filtered(
            table,
            &|a| self.counts.contains_key(&a),
            MapOptions {
                kind: self.kind,
                attribution: self.attribution,
            },
            Some(filter),
        )
    }
}

/// A source line of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineReport {
    /// 1-based line.
    pub line: u32,
    /// Instrumented sites attributed to it.
    pub sites: usize,
    /// Of those, hit.
    pub sites_hit: usize,
    /// Highest hit count among its sites.
    pub count: u64,
}

/// A function of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// Name.
    pub name: String,
    /// First and last line with sites.
    pub first_line: Option<u32>,
    /// Last line with sites.
    pub last_line: Option<u32>,
    /// Lines of this function with sites.
    pub lines_total: usize,
    /// Of those, hit.
    pub lines_hit: usize,
    /// Sites.
    pub sites: usize,
    /// Hit sites.
    pub sites_hit: usize,
    /// Highest hit count among its sites.
    pub count: u64,
    /// How often it was entered: the hit counts of its instances' entry sites, summed
    /// ([`crate::map::FunctionCoverage::entries`]); lcov's `FNDA`.
    #[serde(default)]
    pub calls: u64,
    /// Its declaration line (`DW_AT_decl_line`), when [`Report::with_decl_lines`] knew it;
    /// lcov's `FN` (else `first_line`).
    #[serde(default)]
    pub decl_line: Option<u32>,
}

/// A file of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReport {
    /// Normalised path (as in the kernel tree).
    pub path: String,
    /// Instrumented lines.
    pub lines_total: usize,
    /// Hit lines.
    pub lines_hit: usize,
    /// Functions with sites.
    pub functions_total: usize,
    /// Hit functions.
    pub functions_hit: usize,
    /// Functions by name.
    pub functions: Vec<FunctionReport>,
    /// Instrumented lines in order.
    pub lines: Vec<LineReport>,
}

/// Totals of a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Instrumented lines.
    pub lines_total: usize,
    /// Hit lines.
    pub lines_hit: usize,
    /// Functions.
    pub functions_total: usize,
    /// Hit functions.
    pub functions_hit: usize,
}

/// PC statistics of a report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcStats {
    /// Distinct PCs received.
    pub distinct: usize,
    /// Distinct PCs that are no instrumented call's return address.
    pub unmatched: usize,
    /// Distinct sites hit (whole image).
    pub sites_hit: usize,
    /// A kcov area overflowed.
    pub overflow: bool,
}

/// Host kernel coverage in a report: counted, never symbolized against the guest vmlinux.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCoverageReport {
    /// Distinct PCs in its file.
    pub distinct_pcs: usize,
    /// PCs received, duplicates included.
    pub entries: u64,
    /// The host kcov area overflowed.
    pub overflow: bool,
    /// The store's entry (name, host kernel, common handle, file).
    pub meta: HostCoverageMeta,
}

impl HostCoverageReport {
    /// From a store entry and its PCs.
    pub fn new(meta: &HostCoverageMeta, pcs: &PcCounts) -> Self {
        HostCoverageReport {
            distinct_pcs: pcs.pcs.len(),
            entries: pcs.entries,
            overflow: pcs.overflow,
            meta: meta.clone(),
        }
    }

    /// Every host entry of `store`, its PC files read and checked.
    pub fn from_store(store: &Store) -> Result<Vec<Self>, StoreError> {
        Ok(store
            .host_pcs()?
            .iter()
            .map(|(m, p)| Self::new(m, p))
            .collect())
    }

    /// Its line in [`Report::text`].
    pub fn text_line(&self) -> String {
        format!(
            "host coverage {} (host kernel {}): {} distinct PCs, not symbolized against the \
             guest vmlinux{}",
            self.meta.name,
            self.meta
                .kernel_release
                .as_deref()
                .unwrap_or("of unknown release"),
            self.distinct_pcs,
            if self.overflow {
                "; WARNING: the host kcov area overflowed, coverage was lost"
            } else {
                ""
            }
        )
    }
}

/// A filtered report: what every output format renders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Title (run directory, workload).
    pub title: String,
    /// Kernel description (release, build-id).
    pub kernel: String,
    /// The filter globs.
    pub filter: Vec<String>,
    /// Totals over the files shown.
    pub totals: Totals,
    /// PC statistics.
    pub pcs: PcStats,
    /// Files by path.
    pub files: Vec<FileReport>,
    /// Host kernel coverage of the run, counted only (not in JSON when there is none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<HostCoverageReport>,
}

fn percent(hit: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * hit as f64 / total as f64
    }
}

impl Report {
    /// Builds the report of `run` restricted to files matching `filter`.
    pub fn new(
        table: &SiteTable,
        run: &RunCoverage,
        filter: &[PathGlob],
        title: &str,
        kernel: &str,
    ) -> Self {
        let map = run.map(table, filter);
        let max_count = |sites: &[u64]| {
            sites
                .iter()
                .map(|s| run.counts.get(s).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
        };
        let mut files: BTreeMap<Arc<str>, FileReport> = BTreeMap::new();
        let file_entry = |files: &mut BTreeMap<Arc<str>, FileReport>, f: &Arc<str>| {
            files.entry(f.clone()).or_insert_with(|| FileReport {
                path: f.to_string(),
                lines_total: 0,
                lines_hit: 0,
                functions_total: 0,
                functions_hit: 0,
                functions: Vec::new(),
                lines: Vec::new(),
            });
        };
        for (k, s) in &map.lines {
            file_entry(&mut files, &k.file);
            let Some(f) = files.get_mut(&k.file) else {
                continue;
            };
            f.lines_total += 1;
            f.lines_hit += usize::from(s.is_hit());
            f.lines.push(LineReport {
                line: k.line,
                sites: s.instrumented(),
                sites_hit: s.hit_count(),
                count: max_count(&s.hit),
            });
        }
        for (k, fc) in &map.functions {
            let Some(file) = &k.file else { continue };
            file_entry(&mut files, file);
            let Some(f) = files.get_mut(file) else {
                continue;
            };
            f.functions_total += 1;
            f.functions_hit += usize::from(fc.sites.is_hit());
            f.functions.push(FunctionReport {
                name: k.name.to_string(),
                first_line: fc.lines.map(|l| l.0),
                last_line: fc.lines.map(|l| l.1),
                lines_total: fc.lines_total(),
                lines_hit: fc.lines_hit(),
                sites: fc.sites.instrumented(),
                sites_hit: fc.sites.hit_count(),
                count: max_count(&fc.sites.hit),
                calls: fc
                    .entries
                    .iter()
                    .map(|s| run.counts.get(s).copied().unwrap_or(0))
                    .fold(0u64, u64::saturating_add),
                decl_line: None,
            });
        }
        let files: Vec<FileReport> = files.into_values().collect();
        let totals = files.iter().fold(Totals::default(), |t, f| Totals {
            lines_total: t.lines_total + f.lines_total,
            lines_hit: t.lines_hit + f.lines_hit,
            functions_total: t.functions_total + f.functions_total,
            functions_hit: t.functions_hit + f.functions_hit,
        });
        Report {
            title: title.to_string(),
            kernel: kernel.to_string(),
            filter: filter.iter().map(|g| g.to_string()).collect(),
            totals,
            pcs: PcStats {
                distinct: run.distinct_pcs,
                unmatched: run.unmatched_pcs,
                sites_hit: run.counts.len(),
                overflow: run.overflow,
            },
            files,
            host: Vec::new(),
        }
    }

    /// The report with each function's declaration line from `decl` (keyed by file and name,
    /// [`crate::symbolizer::decl_lines`]); functions it does not know keep `None`.
    pub fn with_decl_lines(mut self, decl: &crate::symbolizer::DeclLines) -> Self {
        for f in &mut self.files {
            for g in &mut f.functions {
                g.decl_line = decl.get(&(f.path.clone(), g.name.clone())).copied();
            }
        }
        self
    }

    /// The files the report shows (what [`crate::symbolizer::decl_lines`] needs).
    pub fn file_paths(&self) -> std::collections::BTreeSet<&str> {
        self.files.iter().map(|f| f.path.as_str()).collect()
    }

    /// The report with the run's host kernel coverage listed (text: one line each; JSON:
    /// `host`). Its PCs stay out of every file, line and function count.
    pub fn with_host(mut self, host: Vec<HostCoverageReport>) -> Self {
        self.host = host;
        self
    }

    /// The terminal summary: per file, then per function, hit/total lines.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "coverage: {}", self.title);
        let _ = writeln!(s, "kernel:   {}", self.kernel);
        let _ = writeln!(s, "filter:   {}", self.filter.join(" "));
        let _ = writeln!(
            s,
            "PCs:      {} distinct, {} sites hit, {} unmatched (no instrumented call returns \
             there: calls through pointers into functions that tail-jump into kcov, or another \
             image){}",
            self.pcs.distinct,
            self.pcs.sites_hit,
            self.pcs.unmatched,
            if self.pcs.overflow {
                "; WARNING: a kcov area overflowed, coverage was lost (raise the area size)"
            } else {
                ""
            }
        );
        if self.pcs.distinct > 0 && self.pcs.unmatched * 2 > self.pcs.distinct {
            let _ = writeln!(
                s,
                "WARNING: most PCs match no instrumented call: is this the run's vmlinux?"
            );
        }
        for h in &self.host {
            let _ = writeln!(s, "{}", h.text_line());
        }
        let width = self
            .files
            .iter()
            .flat_map(|f| {
                std::iter::once(f.path.len()).chain(f.functions.iter().map(|g| g.name.len() + 2))
            })
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(
            s,
            "{:<width$}  {:>13}  {:>7}  {:>9}",
            "file / function", "lines hit/all", "", "functions"
        );
        for f in &self.files {
            let _ = writeln!(
                s,
                "{:<width$}  {:>13}  {:>6.1}%  {:>9}",
                f.path,
                format!("{}/{}", f.lines_hit, f.lines_total),
                percent(f.lines_hit, f.lines_total),
                format!("{}/{}", f.functions_hit, f.functions_total),
            );
            for g in &f.functions {
                let _ = writeln!(
                    s,
                    "  {:<w2$}  {:>13}  {:>6.1}%",
                    g.name,
                    format!("{}/{}", g.lines_hit, g.lines_total),
                    percent(g.lines_hit, g.lines_total),
                    w2 = width - 2
                );
            }
        }
        let t = &self.totals;
        let _ = writeln!(
            s,
            "{:<width$}  {:>13}  {:>6.1}%  {:>9}",
            "total",
            format!("{}/{}", t.lines_hit, t.lines_total),
            percent(t.lines_hit, t.lines_total),
            format!("{}/{}", t.functions_hit, t.functions_total),
        );
        s
    }

    /// An lcov tracefile (`genhtml` input). `SF:` is the file under `source_root` when it exists
    /// there, else the tree-relative path.
    pub fn lcov(&self, test_name: &str, source_root: Option<&Path>) -> String {
        let tn: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut s = String::new();
        for f in &self.files {
            let _ = writeln!(s, "TN:{tn}");
            let _ = writeln!(s, "SF:{}", source_path(source_root, &f.path).display());
            let fn_line = |g: &FunctionReport| g.decl_line.or(g.first_line).unwrap_or(1);
            let mut funcs: Vec<&FunctionReport> = f.functions.iter().collect();
            funcs.sort_by_key(|g| (fn_line(g), g.name.clone()));
            for g in &funcs {
                let _ = writeln!(s, "FN:{},{}", fn_line(g), g.name);
            }
            // FNDA is the number of calls; a function whose blocks ran although no entry was
            // seen (its entry block's PC lost to an area overflow, or code entered by a jump)
            // still counts as hit, with 1.
            for g in &funcs {
                let calls = if g.sites_hit > 0 { g.calls.max(1) } else { 0 };
                let _ = writeln!(s, "FNDA:{},{}", calls, g.name);
            }
            let _ = writeln!(s, "FNF:{}", f.functions_total);
            let _ = writeln!(s, "FNH:{}", f.functions_hit);
            for l in &f.lines {
                let _ = writeln!(s, "DA:{},{}", l.line, l.count);
            }
            let _ = writeln!(s, "LF:{}", f.lines_total);
            let _ = writeln!(s, "LH:{}", f.lines_hit);
            let _ = writeln!(s, "end_of_record");
        }
        s
    }

    /// JSON for scripts.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// `root/path` when that file exists, else `path`.
pub fn source_path(root: Option<&Path>, path: &str) -> PathBuf {
    if let Some(root) = root {
        let p = root.join(path);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::symbolizer::{CallSite, Frame};
    use std::collections::HashMap;

    pub(crate) fn frame(func: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: Some(Arc::from(func)),
            file: Some(Arc::from(file)),
            line: Some(line),
        }
    }

    /// net.c: handle_tx lines 10 (0x10), 11 (0x20), 12 (0x30); vhost.c: vhost_poll 50 (0x40).
    pub(crate) fn table() -> SiteTable {
        let site = |a: u64| CallSite {
            call_addr: a,
            call_len: 5,
            ret_addr: a + 5,
            kind: SiteKind::Pc,
            tail: false,
        };
        SiteTable {
            sites: vec![site(0x10), site(0x20), site(0x30), site(0x40), site(0x50)],
            frames: vec![
                vec![frame("handle_tx", "drivers/vhost/net.c", 10)],
                vec![frame("handle_tx", "drivers/vhost/net.c", 11)],
                vec![frame("handle_tx", "drivers/vhost/net.c", 12)],
                vec![frame("vhost_poll", "drivers/vhost/vhost.c", 50)],
                vec![frame("kmalloc", "mm/slab.c", 5)],
            ],
            ..SiteTable::default()
        }
    }

    pub(crate) fn pcs(pairs: &[(u64, u64)]) -> PcCounts {
        let m: HashMap<u64, u64> = pairs.iter().copied().collect();
        PcCounts::from_map(KcovMode::Pc, CoverageSource::Remote, false, &m)
    }

    #[test]
    fn report_formats() {
        let t = table();
        let run = RunCoverage::build(
            &t,
            &[pcs(&[(0x15, 3), (0x25, 1), (0x55, 9), (0x999, 1)])],
            SourceFilter::All,
            Attribution::AllFrames,
        );
        assert_eq!(run.unmatched_pcs, 1);
        assert_eq!(run.distinct_pcs, 4);
        let r = Report::new(&t, &run, &[PathGlob::new(DEFAULT_FILTER)], "t", "k");
        assert_eq!(r.files.len(), 2);
        assert_eq!(
            r.totals,
            Totals {
                lines_total: 4,
                lines_hit: 2,
                functions_total: 2,
                functions_hit: 1
            }
        );
        let net = &r.files[0];
        assert_eq!(net.path, "drivers/vhost/net.c");
        assert_eq!(
            (net.functions[0].lines_hit, net.functions[0].lines_total),
            (2, 3)
        );
        assert_eq!(net.functions[0].count, 3);
        let text = r.text();
        assert!(text.contains("drivers/vhost/net.c"), "{text}");
        assert!(text.contains("2/3"), "{text}");
        let lcov = r.lcov("run-1", None);
        assert!(lcov.contains("TN:run_1\nSF:drivers/vhost/net.c\nFN:10,handle_tx\nFNDA:3,handle_tx\nFNF:1\nFNH:1\nDA:10,3\nDA:11,1\nDA:12,0\nLF:3\nLH:2\nend_of_record\n"), "{lcov}");
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(json["totals"]["lines_hit"], 2);
        assert_eq!(json["files"][1]["path"], "drivers/vhost/vhost.c");

        // FNDA counts calls (the entry site), not the hottest line.
        let hot = RunCoverage::build(
            &t,
            &[pcs(&[(0x15, 3), (0x25, 67)])],
            SourceFilter::All,
            Attribution::AllFrames,
        );
        let r = Report::new(&t, &hot, &[PathGlob::new(DEFAULT_FILTER)], "t", "k");
        let g = &r.files[0].functions[0];
        assert_eq!((g.calls, g.count), (3, 67));
        // FN is the declaration line when known, else the first instrumented line.
        let lcov = r.lcov("t", None);
        assert!(
            lcov.contains("FN:10,handle_tx\nFNDA:3,handle_tx\n"),
            "{lcov}"
        );
        let decl = crate::symbolizer::DeclLines::from([(
            ("drivers/vhost/net.c".to_string(), "handle_tx".to_string()),
            8,
        )]);
        let lcov = r.with_decl_lines(&decl).lcov("t", None);
        assert!(
            lcov.contains("FN:8,handle_tx\nFNDA:3,handle_tx\n"),
            "{lcov}"
        );
        // Blocks ran but the entry's PC is missing (an overflowed area): still a hit function.
        let no_entry = RunCoverage::build(
            &t,
            &[pcs(&[(0x25, 5)])],
            SourceFilter::All,
            Attribution::AllFrames,
        );
        let r = Report::new(&t, &no_entry, &[PathGlob::new(DEFAULT_FILTER)], "t", "k");
        assert_eq!(r.files[0].functions[0].calls, 0);
        assert!(r.lcov("t", None).contains("FNDA:1,handle_tx\n"));

        // Only local coverage: nothing.
        let local = RunCoverage::build(
            &t,
            &[pcs(&[(0x15, 3)])],
            SourceFilter::Local,
            Attribution::AllFrames,
        );
        assert_eq!(local.counts.len(), 0);
    }

    fn host_meta(release: Option<&str>) -> HostCoverageMeta {
        HostCoverageMeta {
            name: "vhost-net".into(),
            kernel_release: release.map(str::to_string),
            kernel_build_id: None,
            common_handle: 0x0100_0000_0000_0007,
            coverage: crate::store::PcFileMeta {
                source: "host".into(),
                mode: "pc".into(),
                file: "h-vhost-net.host.pcs".into(),
                distinct_pcs: 2,
                entries: 5,
                chunks: 1,
                overflow: false,
            },
        }
    }

    #[test]
    fn host_pcs_are_never_symbolized() {
        let t = table();
        // Host PCs at return addresses of guest sites: merged, they would hit net.c lines 11
        // and 12 and vhost.c line 50.
        let m: HashMap<u64, u64> = [(0x25, 4), (0x35, 1), (0x45, 1)].into_iter().collect();
        let host = PcCounts::from_map(KcovMode::Pc, CoverageSource::Host, true, &m);
        let guest = pcs(&[(0x15, 3)]);
        for f in [SourceFilter::All, SourceFilter::Remote, SourceFilter::Local] {
            let run = RunCoverage::build(
                &t,
                &[guest.clone(), host.clone()],
                f,
                Attribution::AllFrames,
            );
            let alone =
                RunCoverage::build(&t, std::slice::from_ref(&guest), f, Attribution::AllFrames);
            assert_eq!(run.counts, alone.counts, "{f:?}");
            assert_eq!(run.distinct_pcs, alone.distinct_pcs, "{f:?}");
            // The host set's overflow is not the guest's either.
            assert!(!run.overflow, "{f:?}");
        }
        let host_only = RunCoverage::build(
            &t,
            std::slice::from_ref(&host),
            SourceFilter::All,
            Attribution::AllFrames,
        );
        assert!(host_only.counts.is_empty());
        assert_eq!(host_only.distinct_pcs, 0);

        let run = RunCoverage::build(
            &t,
            &[guest, host.clone()],
            SourceFilter::All,
            Attribution::AllFrames,
        );
        let plain = Report::new(&t, &run, &[PathGlob::new(DEFAULT_FILTER)], "t", "k");
        assert_eq!(plain.totals.lines_hit, 1);
        let h = HostCoverageReport::new(&host_meta(Some("6.8.0-host")), &host);
        assert_eq!((h.distinct_pcs, h.entries, h.overflow), (3, 6, true));
        let r = plain.clone().with_host(vec![h]);
        // Files, lines, functions and PC statistics are the guest's alone.
        assert_eq!(
            (&r.files, r.totals, r.pcs),
            (&plain.files, plain.totals, plain.pcs)
        );

        // Text: the guest report plus one line per host entry.
        let line = "host coverage vhost-net (host kernel 6.8.0-host): 3 distinct PCs, not \
                    symbolized against the guest vmlinux; WARNING: the host kcov area \
                    overflowed, coverage was lost\n";
        let text = r.text();
        assert!(text.contains(line), "{text}");
        assert_eq!(text.replacen(line, "", 1), plain.text());
        assert!(!plain.text().contains("host coverage"));

        // JSON: the entry raw (counts + store metadata); no `host` key when there is none.
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        let hv = &v["host"][0];
        assert_eq!(hv["distinct_pcs"], 3);
        assert_eq!(hv["entries"], 6);
        assert_eq!(hv["overflow"], true);
        assert_eq!(hv["meta"]["name"], "vhost-net");
        assert_eq!(hv["meta"]["kernel_release"], "6.8.0-host");
        assert_eq!(hv["meta"]["common_handle"], 0x0100_0000_0000_0007u64);
        assert_eq!(hv["meta"]["coverage"]["source"], "host");
        let pv: serde_json::Value = serde_json::from_str(&plain.json()).unwrap();
        assert!(pv.get("host").is_none());
        let mut without = v.clone();
        without.as_object_mut().unwrap().remove("host");
        assert_eq!(without, pv);
        assert_eq!(plain.json(), plain.clone().with_host(Vec::new()).json());

        // Unknown release, no overflow.
        let h = HostCoverageReport::new(
            &host_meta(None),
            &PcCounts::from_map(KcovMode::Pc, CoverageSource::Host, false, &m),
        );
        assert_eq!(
            h.text_line(),
            "host coverage vhost-net (host kernel of unknown release): 3 distinct PCs, not \
             symbolized against the guest vmlinux"
        );
    }
}
