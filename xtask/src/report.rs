//! `cargo xtask report`, `diff` and `golden`: a run directory's coverage (the raw kcov-wire
//! stream `coverage.kcw`, collected once into `store/`) + the run's vmlinux → reports; and the
//! coverage benchmarks `cargo xtask bench` calls.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use coverage::diff::{CoverageDiff, PatchCoverage, PatchLines};
use coverage::golden::{classify, covered_items, Golden, GoldenCheck, Item};
use coverage::html::write_html;
use coverage::map::Attribution;
use coverage::report::{HostCoverageReport, Report, RunCoverage, SourceFilter, DEFAULT_FILTER};
use coverage::store::{
    collect_file, KernelIdentity, PcCounts, Store, StoreError, META_FILE, STORE_DIR, STREAM_FILE,
};
use coverage::{PathGlob, SiteTable, SymbolCache, Vmlinux};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::kernel::{self, KernelOpts};
use crate::paths;

/// The workloads the guest agent is getting; each has a golden under `goldens/`.
pub const WORKLOADS: &[&str] = &["vhost-net-tx", "vhost-net-rx", "vhost-vsock"];

/// `goldens/` at the workspace root.
pub fn goldens_dir() -> PathBuf {
    paths::workspace_root().join("goldens")
}

#[derive(Deserialize)]
struct RunJson {
    kernel_key: Option<String>,
    /// The host kernel's cache key, where the host is one of ours (nested runner: L1).
    #[serde(default)]
    host_kernel_key: Option<String>,
}

/// The host kernel's vmlinux of a run: `explicit`, else the cached kernel `run.json` names
/// (nested runner: the L1 kernel). None where neither is known.
pub fn host_vmlinux(run_dir: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    cached_kernel_dir(&run_json(run_dir)?.host_kernel_key?).map(|d| d.join("vmlinux"))
}

/// The host coverage of `run`, each entry mapped onto the host kernel's vmlinux when it is
/// known and its build-id matches the entry's, as text (one report per entry); an entry whose
/// kernel is unknown gets one line saying so.
pub fn host_section(
    run: &LoadedRun,
    run_dir: &Path,
    explicit: Option<&Path>,
    filter: &[PathGlob],
) -> Result<String> {
    let mut text = String::new();
    let entries = run.store.host_pcs()?;
    if entries.is_empty() {
        return Ok(text);
    }
    let vmlinux = host_vmlinux(run_dir, explicit);
    for (meta, pcs) in entries {
        let Some(path) = &vmlinux else {
            text.push_str(&format!(
                "host coverage {}: not mapped (the host kernel's vmlinux is unknown; pass \
                 --host-vmlinux)\n",
                meta.name
            ));
            continue;
        };
        let (table, build_id) = site_table(path)?;
        match (&meta.kernel_build_id, &build_id) {
            (Some(want), Some(have)) if want != have => bail!(
                "{}: build-id {have} is not the host kernel's of host coverage {} ({want})",
                path.display(),
                meta.name
            ),
            (None, _) if explicit.is_none() => {
                text.push_str(&format!(
                    "host coverage {}: not mapped (no build-id recorded; pass --host-vmlinux)\n",
                    meta.name
                ));
                continue;
            }
            _ => {}
        }
        let cov = RunCoverage::build(
            &table,
            std::slice::from_ref(&pcs),
            SourceFilter::Host,
            Attribution::AllFrames,
        );
        let desc = format!(
            "host kernel {}, build-id {}, vmlinux {}",
            meta.kernel_release.as_deref().unwrap_or("?"),
            build_id.as_deref().unwrap_or("?"),
            path.display()
        );
        let title = format!("host coverage {} (source=host)", meta.name);
        text.push_str(&Report::new(&table, &cov, filter, &title, &desc).text());
    }
    Ok(text)
}

/// `RUN_DIR/run.json`, if it is there and readable.
fn run_json(run_dir: &Path) -> Option<RunJson> {
    serde_json::from_slice(&std::fs::read(run_dir.join("run.json")).ok()?).ok()
}

/// The kernel cache key recorded in `RUN_DIR/run.json`, if any.
pub fn run_kernel_key(run_dir: &Path) -> Option<String> {
    run_json(run_dir)?.kernel_key
}

fn cached_kernel_dir(key: &str) -> Option<PathBuf> {
    // Keys are hex; refuse anything that could leave the cache directory.
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let dir = paths::cache_root().join("kernels").join(key);
    dir.join("vmlinux").is_file().then_some(dir)
}

/// The default kernel source tree for annotated HTML: the extracted Debian source in the cache.
pub fn default_source_root() -> Option<PathBuf> {
    let src = paths::cache_root().join("src");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&src)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("linux-source-"))
        })
        .collect();
    dirs.sort();
    dirs.pop()
}

fn sha256_hex(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(hex::encode(Sha256::digest(&bytes)))
}

/// The vmlinux for a run: `explicit`, else the cached kernel named by `run.json` or the store,
/// else the default kernel (`xtask::kernel::build` with default options).
pub fn resolve_vmlinux(run_dir: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let store_key = Store::open_partial(&store_dir(run_dir))
        .ok()
        .and_then(|s| s.meta.kernel.kernel_key);
    for key in [run_kernel_key(run_dir), store_key].into_iter().flatten() {
        if let Some(dir) = cached_kernel_dir(&key) {
            return Ok(dir.join("vmlinux"));
        }
        eprintln!(
            "report: the run's kernel {key} is no longer in the cache; using the default kernel"
        );
    }
    Ok(kernel::build(&KernelOpts::default())?.vmlinux)
}

/// Opens a vmlinux and checks it has DWARF.
pub fn open_vmlinux(path: &Path) -> Result<Vmlinux> {
    let vm = Vmlinux::open(path)?;
    vm.require_dwarf()?;
    Ok(vm)
}

/// The store of a run directory (`RUN_DIR/store`), or `RUN_DIR` itself when it is a store.
pub fn store_dir(run_dir: &Path) -> PathBuf {
    if run_dir.join(META_FILE).is_file() {
        run_dir.to_path_buf()
    } else {
        run_dir.join(STORE_DIR)
    }
}

/// Opens the run's store, collecting `coverage.kcw` into it first when there is none yet.
/// An incomplete store is an error unless `partial`.
pub fn open_or_collect(run_dir: &Path, partial: bool) -> Result<Store> {
    let dir = store_dir(run_dir);
    let stream = run_dir.join(STREAM_FILE);
    // No store yet, or one whose collector died mid-way (its lock is free): collect. A store
    // another process is collecting right now is waited for, not refused.
    let missing = !dir.join(META_FILE).is_file();
    if missing && !stream.is_file() {
        bail!(
            "{}: no coverage here (neither {STORE_DIR}/ nor {STREAM_FILE}); give a run \
             directory written by `cargo xtask boot` with a workload",
            run_dir.display()
        );
    }
    let died = !missing && stream.is_file() && coverage::store::collection_died(&dir)?;
    if died {
        eprintln!(
            "report: the collection of {} was interrupted (its collector died); collecting again",
            dir.display()
        );
    }
    if missing || died {
        match collect_file(&stream, &dir, run_identity(run_dir)) {
            Ok(s) if !s.complete => eprintln!(
                "report: {} is incomplete: {}",
                stream.display(),
                s.incomplete_reason.as_deref().unwrap_or("?")
            ),
            Ok(_) => {}
            // Another report is collecting it: wait for it to finish.
            Err(StoreError::Busy { .. }) => coverage::store::wait_for_writer(&dir)?,
            // Another report finished it between our checks.
            Err(StoreError::AlreadyComplete { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    } else if !dir.join(coverage::store::COMPLETE_MARKER).exists() {
        // A live collector may be writing it (its meta.json and the marker come last, under
        // its lock): wait for the lock; without a writer this returns at once.
        coverage::store::wait_for_writer(&dir)?;
    }
    Ok(if partial {
        Store::open_partial(&dir)?
    } else {
        Store::open(&dir)?
    })
}

/// The release of the kernel `run.json` names, from its cache entry.
fn built_release(run_dir: &Path) -> Option<String> {
    let dir = cached_kernel_dir(&run_kernel_key(run_dir)?)?;
    Some(kernel::cached_kernel(&dir, true)?.meta.release)
}

/// The kernel a run booted (`run.json`'s key, its cached vmlinux's build-id and config).
fn run_identity(run_dir: &Path) -> KernelIdentity {
    let key = run_kernel_key(run_dir);
    let kdir = key.as_deref().and_then(cached_kernel_dir);
    let build_id = kdir.as_ref().and_then(|d| {
        Vmlinux::open(d.join("vmlinux"))
            .ok()
            .and_then(|v| v.build_id().map(|b| b.to_hex()))
    });
    KernelIdentity {
        release: None,
        build_id,
        kernel_key: key,
        config_hash: kdir.and_then(|d| sha256_hex(&d.join("config"))),
    }
}

/// A site table and its image's build-id (hex).
pub type TableEntry = (Arc<SiteTable>, Option<String>);

type TableKey = (PathBuf, u64, SystemTime);
static TABLES: OnceLock<Mutex<HashMap<TableKey, TableEntry>>> = OnceLock::new();

/// The site table and build-id (hex) of the vmlinux at `path`: loaded once per process per
/// (path, size, mtime), from the per-build-id cache on disk when it is there, so K runs of one
/// kernel symbolize once.
pub fn site_table(path: &Path) -> Result<TableEntry> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let key = (
        path.to_path_buf(),
        meta.len(),
        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    );
    let tables = TABLES.get_or_init(Mutex::default);
    if let Some(t) = tables.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(t);
    }
    let vm = open_vmlinux(path)?;
    let cache = SymbolCache::new(paths::cache_root().join("symbols"));
    let (table, _) = SiteTable::load_or_build(&vm, Some(&cache))?;
    let entry = (Arc::new(table), vm.build_id().map(|b| b.to_hex()));
    if let Ok(mut m) = tables.lock() {
        m.insert(key, entry.clone());
    }
    Ok(entry)
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

    /// `report` with its functions' declaration lines (a warning, and `report` unchanged, when
    /// the vmlinux's DWARF cannot be read for them).
    pub fn with_decl_lines(&self, report: Report) -> Report {
        let decl = open_vmlinux(&self.vmlinux)
            .map_err(|e| e.to_string())
            .and_then(|vm| {
                coverage::symbolizer::decl_lines(&vm, &self.table.src_roots, &report.file_paths())
                    .map_err(|e| e.to_string())
            });
        match decl {
            Ok(decl) => report.with_decl_lines(&decl),
            Err(e) => {
                eprintln!("report: warning: declaration lines unknown ({e}); FN uses the first instrumented line");
                report
            }
        }
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

/// Loads a run: vmlinux (DWARF checked first), store (collected if needed), build-id check,
/// PC files, mapping. Never modifies an existing store.
pub fn load(run_dir: &Path, opts: &LoadOpts) -> Result<LoadedRun> {
    let vmlinux = resolve_vmlinux(run_dir, opts.vmlinux.as_deref())?;
    let (table, build_id) = site_table(&vmlinux)?;
    load_with_table(run_dir, opts, vmlinux, table, build_id)
}

/// [`load`] with the vmlinux's site table and build-id already at hand. The guest's PCs are
/// mapped onto `table`; the store's host kernel coverage is only read and counted.
pub fn load_with_table(
    run_dir: &Path,
    opts: &LoadOpts,
    vmlinux: PathBuf,
    table: Arc<SiteTable>,
    build_id: Option<String>,
) -> Result<LoadedRun> {
    let store = open_or_collect(run_dir, opts.partial)?;
    if let (Some(want), Some(have)) = (&store.meta.kernel.build_id, &build_id) {
        if want != have {
            bail!(
                "{}: build-id {have} does not match the run's kernel (build-id {want}{}); \
                 pass the run's vmlinux with --vmlinux",
                vmlinux.display(),
                store
                    .meta
                    .kernel
                    .kernel_key
                    .as_deref()
                    .map(|k| format!(
                        ", cached as {}",
                        paths::cache_root()
                            .join("kernels")
                            .join(k)
                            .join("vmlinux")
                            .display()
                    ))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(w) = &opts.workload {
        if store.meta.workload(w).is_none() {
            let names: Vec<&str> = store
                .meta
                .workloads
                .iter()
                .map(|w| w.name.as_str())
                .collect();
            bail!(
                "{}: no workload {w:?} in this run (it has: {})",
                store.dir.display(),
                names.join(", ")
            );
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

fn globs(filter: &[String]) -> Vec<PathGlob> {
    if filter.is_empty() {
        vec![PathGlob::new(DEFAULT_FILTER)]
    } else {
        filter.iter().map(|f| PathGlob::new(f)).collect()
    }
}

fn title(run_dir: &Path, workload: Option<&str>) -> String {
    let mut t = run_dir.display().to_string();
    if let Some(w) = workload {
        t.push_str(&format!(" (workload {w})"));
    }
    t
}

/// Options of `cargo xtask report`.
#[derive(Clone, Debug, Default)]
pub struct ReportOpts {
    /// The run directory (or a store directory).
    pub run_dir: PathBuf,
    /// Load options.
    pub load: LoadOpts,
    /// lcov tracefile to write.
    pub lcov: Option<PathBuf>,
    /// HTML directory to write.
    pub html: Option<PathBuf>,
    /// JSON file to write.
    pub json: Option<PathBuf>,
    /// Filter globs (default `drivers/vhost/*`).
    pub filter: Vec<String>,
    /// Unified diff for patch coverage.
    pub patch: Option<PathBuf>,
    /// Kernel source tree for HTML and lcov paths (default: the cached Debian source).
    pub source_root: Option<PathBuf>,
    /// The host kernel's vmlinux for host coverage (default: the one run.json names).
    pub host_vmlinux: Option<PathBuf>,
}

/// `cargo xtask report`: returns the terminal text; writes the requested files.
pub fn report(opts: &ReportOpts) -> Result<String> {
    // Cheap input checks first, so bad input fails before anything is read or written.
    let patch = match &opts.patch {
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("reading the patch {}", p.display()))?;
            // Bytes that are not UTF-8 (a Latin-1 comment, say) do not spoil the patch: they
            // are read as U+FFFD and named by line.
            let bad: Vec<String> = bytes
                .split(|&b| b == b'\n')
                .enumerate()
                .filter(|(_, l)| std::str::from_utf8(l).is_err())
                .map(|(i, _)| (i + 1).to_string())
                .collect();
            if !bad.is_empty() {
                eprintln!(
                    "report: warning: {} line(s) {} are not UTF-8; read with U+FFFD",
                    p.display(),
                    bad.join(", ")
                );
            }
            let text = String::from_utf8_lossy(&bytes);
            Some(PatchLines::parse(&text).with_context(|| format!("{}", p.display()))?)
        }
        None => None,
    };
    let run = load(&opts.run_dir, &opts.load)?;
    report_run(opts, &run, patch)
}

/// The rendering half of [`report`]: `run` is `opts.run_dir` loaded, `patch` the parsed
/// `opts.patch`.
pub fn report_run(opts: &ReportOpts, run: &LoadedRun, patch: Option<PatchLines>) -> Result<String> {
    let filter = globs(&opts.filter);
    let t = title(&opts.run_dir, opts.load.workload.as_deref());
    let mut report = run.report(&filter, &t);
    if opts.lcov.is_some() || opts.html.is_some() || opts.json.is_some() {
        // lcov's FN is the declaration line: read from the DWARF of the shown files only.
        report = run.with_decl_lines(report);
    }
    let mut text = String::new();
    if !run.store.meta.complete {
        text.push_str(&format!(
            "WARNING: partial report of an incomplete store: {}\n",
            run.store.meta.incomplete_reason.as_deref().unwrap_or("?")
        ));
    }
    // The agent's Hello names the kernel that really ran: it must be the run's kernel.
    if let (Some(hello), Some(built)) = (
        run.store
            .meta
            .agent
            .as_ref()
            .map(|a| a.kernel_release.as_str()),
        built_release(&opts.run_dir),
    ) {
        if hello != built {
            text.push_str(&format!(
                "WARNING: the agent ran on kernel {hello}, but the run's kernel (run.json) is \
                 {built}: the coverage may be mapped onto the wrong vmlinux\n"
            ));
        }
    }
    let failures = coverage::store::run_failures(&run.store.meta, true);
    if !failures.is_empty() {
        text.push_str("RUN FAILED: this coverage is what ran before or besides the failure:\n");
        for f in &failures {
            text.push_str(&format!("  - {f}\n"));
        }
    }
    text.push_str(&report.text());
    text.push_str(&host_section(
        run,
        &opts.run_dir,
        opts.host_vmlinux.as_deref(),
        &filter,
    )?);
    let source_root = opts.source_root.clone().or_else(default_source_root);
    let patch_cov = patch.map(|p| {
        // Patch lines may lie outside the filter: classify against every file.
        let all = run.report(&[PathGlob::new("**")], &t);
        PatchCoverage::new(&p, &all)
    });
    if let Some(pc) = &patch_cov {
        text.push_str(&pc.text());
    }
    if let Some(path) = &opts.lcov {
        write_file(path, report.lcov(&t, source_root.as_deref()).as_bytes())?;
        text.push_str(&format!("lcov: {}\n", path.display()));
    }
    if let Some(dir) = &opts.html {
        let index = write_html(&report, dir, source_root.as_deref())?;
        text.push_str(&format!("html: {}\n", index.display()));
    }
    if let Some(path) = &opts.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(obj), Some(pc)) = (v.as_object_mut(), &patch_cov) {
            obj.insert("patch".into(), serde_json::to_value(pc)?);
        }
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "workloads".into(),
                serde_json::to_value(&run.store.meta.workloads)?,
            );
            obj.insert("complete".into(), run.store.meta.complete.into());
        }
        write_file(path, &serde_json::to_vec_pretty(&v)?)?;
        text.push_str(&format!("json: {}\n", path.display()));
    }
    Ok(text)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Options of `cargo xtask diff`.
#[derive(Clone, Debug, Default)]
pub struct DiffOpts {
    /// Run A (before).
    pub a: PathBuf,
    /// Run B (after).
    pub b: PathBuf,
    /// vmlinux of A.
    pub vmlinux_a: Option<PathBuf>,
    /// vmlinux of B.
    pub vmlinux_b: Option<PathBuf>,
    /// Filter globs.
    pub filter: Vec<String>,
    /// Sources.
    pub sources: SourceFilter,
    /// JSON output file.
    pub json: Option<PathBuf>,
}

/// `cargo xtask diff`: functions and lines gained and lost from A to B.
pub fn diff(opts: &DiffOpts) -> Result<(String, CoverageDiff)> {
    let load_opts = |v: &Option<PathBuf>| LoadOpts {
        vmlinux: v.clone(),
        sources: opts.sources,
        ..LoadOpts::default()
    };
    let a = load(&opts.a, &load_opts(&opts.vmlinux_a))?;
    let b = load(&opts.b, &load_opts(&opts.vmlinux_b))?;
    let filter = globs(&opts.filter);
    let ra = a.report(&filter, &title(&opts.a, None));
    let rb = b.report(&filter, &title(&opts.b, None));
    let d = CoverageDiff::new(&ra, &rb);
    let mut text = String::new();
    if a.build_id != b.build_id {
        text.push_str(
            "note: the runs are on different kernels; lines are compared by file and number\n",
        );
    }
    for (name, run) in [("A", &a), ("B", &b)] {
        for f in coverage::store::run_failures(&run.store.meta, true) {
            text.push_str(&format!("note: run {name} FAILED: {f}\n"));
        }
    }
    text.push_str(&d.text(&ra.title, &rb.title));
    if let Some(path) = &opts.json {
        write_file(path, &serde_json::to_vec_pretty(&d)?)?;
    }
    Ok((text, d))
}

/// What one run says about a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunVerdict {
    /// The items it covered under the filter, and the kernel's build-id and key.
    Covered {
        /// Covered items.
        items: BTreeSet<Item>,
        /// Build-id.
        build_id: Option<String>,
        /// Kernel key.
        kernel_key: Option<String>,
    },
    /// The workload cannot be checked in this run (the reason is printed).
    Skip(String),
}

/// Reads a workload's coverage from a run directory; skips (with the reason) when the run has no
/// coverage stream or the agent did not run the workload (its Error frames say why).
pub fn workload_verdict(
    run_dir: &Path,
    workload: &str,
    filter: &[PathGlob],
    vmlinux: Option<&Path>,
) -> Result<RunVerdict> {
    if !run_dir.join(STREAM_FILE).is_file() && !store_dir(run_dir).join(META_FILE).is_file() {
        return Ok(RunVerdict::Skip(format!(
            "run {} has no coverage stream ({STREAM_FILE}): this boot does not stream coverage yet",
            run_dir.display()
        )));
    }
    let store = open_or_collect(run_dir, true)?;
    let Some(w) = store.meta.workload(workload) else {
        let why = if store.meta.errors.is_empty() {
            "it sent no WorkloadStart for it".to_string()
        } else {
            format!("agent error: {}", store.meta.errors.join("; "))
        };
        return Ok(RunVerdict::Skip(format!(
            "the guest agent did not run workload {workload:?} ({why})"
        )));
    };
    if !store.meta.complete {
        bail!(StoreError::Incomplete {
            dir: store.dir.clone(),
            reason: store.meta.incomplete_reason.clone().unwrap_or_default(),
        });
    }
    match &w.result {
        Some(r) if r.status == 0 => {}
        Some(r) => bail!(
            "workload {workload} failed with status {}: {}",
            r.status,
            r.error.as_deref().unwrap_or("no message")
        ),
        None => bail!("workload {workload} has no result"),
    }
    let run = load(
        run_dir,
        &LoadOpts {
            vmlinux: vmlinux.map(Path::to_path_buf),
            workload: Some(workload.to_string()),
            ..LoadOpts::default()
        },
    )?;
    let report = run.report(filter, &title(run_dir, Some(workload)));
    Ok(RunVerdict::Covered {
        items: covered_items(&report),
        build_id: run.build_id.clone(),
        kernel_key: run.store.meta.kernel.kernel_key.clone(),
    })
}

/// What `golden` concluded for a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GoldenOutcome {
    /// Not checkable yet; the reason.
    Skipped(String),
    /// Every golden item covered (the text lists flaky and new items).
    Passed(String),
    /// Golden items missing, or no golden, or another kernel: the readable diff.
    Failed(String),
    /// `--update` wrote the golden.
    Updated(PathBuf, String),
}

/// Options of a golden check.
#[derive(Clone, Debug)]
pub struct GoldenOpts {
    /// Runs per workload.
    pub runs: usize,
    /// Rewrite the goldens from the stable items.
    pub update: bool,
    /// Filter (default drivers/vhost/*).
    pub filter: String,
    /// Golden directory (default `goldens/`).
    pub dir: PathBuf,
    /// vmlinux (default: each run's kernel).
    pub vmlinux: Option<PathBuf>,
    /// Compare functions only (another runner than the goldens were recorded with: the
    /// same kernel runs the same functions, lines may differ with timing).
    pub functions_only: bool,
}

impl Default for GoldenOpts {
    fn default() -> Self {
        GoldenOpts {
            runs: 3,
            update: false,
            filter: DEFAULT_FILTER.into(),
            dir: goldens_dir(),
            vmlinux: None,
            functions_only: false,
        }
    }
}

/// Runs `workload` `opts.runs` times through `boot` (which returns each run directory: a
/// [`crate::runs::RunDir`] keeps it in use until its verdict is in), classifies stable/flaky
/// items and checks (or, with `update`, rewrites) its golden.
pub fn golden_workload<R: AsRef<Path>>(
    workload: &str,
    opts: &GoldenOpts,
    boot: &mut dyn FnMut(&str) -> Result<R>,
) -> Result<GoldenOutcome> {
    let filter = vec![PathGlob::new(&opts.filter)];
    let mut runs = Vec::new();
    let mut identity = (None, None);
    for i in 0..opts.runs.max(1) {
        let run_dir = boot(workload).with_context(|| format!("run {} of {workload}", i + 1))?;
        match workload_verdict(run_dir.as_ref(), workload, &filter, opts.vmlinux.as_deref())? {
            RunVerdict::Skip(reason) => return Ok(GoldenOutcome::Skipped(reason)),
            RunVerdict::Covered {
                items,
                build_id,
                kernel_key,
            } => {
                identity = (build_id, kernel_key);
                runs.push(items);
            }
        }
    }
    let stability = classify(&runs);
    let path = opts.dir.join(format!("{workload}.txt"));
    if opts.update {
        let g = Golden {
            workload: workload.to_string(),
            build_id: identity.0,
            kernel_key: identity.1,
            filter: opts.filter.clone(),
            items: stability.stable.clone(),
        };
        std::fs::create_dir_all(&opts.dir)?;
        coverage::store::write_atomic(&path, g.render().as_bytes())?;
        let flaky = stability.flaky.len();
        return Ok(GoldenOutcome::Updated(
            path,
            format!(
                "{} stable items from {} runs ({flaky} flaky items left out)",
                g.items.len(),
                runs.len()
            ),
        ));
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(GoldenOutcome::Failed(format!(
                "no golden {} for workload {workload}: create it with \
                 `cargo xtask golden --update {workload}`, review and commit it",
                path.display()
            )))
        }
        Err(e) => return Err(anyhow!(e).context(format!("reading {}", path.display()))),
    };
    let golden = Golden::parse(&text).with_context(|| path.display().to_string())?;
    // On another kernel (e.g. a newer Debian kernel package on a fresh machine) line numbers
    // move but function names hold: compare functions only and say so.
    let (golden, note) = match golden.check_kernel(identity.0.as_deref(), identity.1.as_deref()) {
        Ok(()) if opts.functions_only => (
            golden.functions_only(),
            "note: another runner; compared functions only\n".to_string(),
        ),
        Ok(()) => (golden, String::new()),
        Err(reason) => (
            golden.functions_only(),
            format!("note: {reason}; compared functions only\n"),
        ),
    };
    let check = GoldenCheck::new(&golden, &stability);
    let rendered = format!("{note}{}", check.render(workload));
    Ok(if check.passed() {
        GoldenOutcome::Passed(rendered)
    } else {
        GoldenOutcome::Failed(rendered)
    })
}

/// Boot options that run `workload` in the guest agent (`testbed.workloads=`), console quiet.
pub fn workload_boot_opts(workload: &str) -> crate::boot::BootOpts {
    crate::boot::BootOpts {
        echo: false,
        plan: crate::boot::PlanOpts {
            workloads: vec![workload.to_string()],
            ..crate::boot::PlanOpts::default()
        },
        ..crate::boot::BootOpts::default()
    }
}

/// Boots the guest once for `workload` with the xtask boot library and returns the run
/// directory (in use while it is held), with the agent's stream reassembled into
/// `coverage.kcw` (when it sent one).
pub fn boot_workload(workload: &str) -> Result<crate::runs::RunDir> {
    let (outcome, run_dir) = crate::boot::boot(&workload_boot_opts(workload))?;
    crate::boot::collect_stream(&run_dir, &outcome.serial_log)?;
    Ok(run_dir)
}

/// Runs both coverage benchmarks on `vmlinux` (default: the default kernel's) and prints the
/// figures: symbolizing every instrumented site vs binutils `addr2line -f -i` on the same
/// addresses (same run), and report generation for a 100k-PC run.
pub fn bench(vmlinux: Option<&Path>) -> Result<()> {
    crate::deps::ensure_packages(&["binutils"], "the addr2line baseline")?;
    let vmlinux = match vmlinux {
        Some(v) => v.to_path_buf(),
        None => kernel::build(&KernelOpts::default())?.vmlinux,
    };
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let cache_dir = paths::workspace_root()
        .join("target/testbed/bench")
        .join(format!("symbols-{}", std::process::id()));
    let s = coverage::bench::symbolize_vs_addr2line(&vmlinux, &cache_dir);
    let _ = std::fs::remove_dir_all(&cache_dir);
    let s = s?;
    println!("symbolize-all ({}):", vmlinux.display());
    println!(
        "  ours: {} sites -> {} frames in {} (enumerate + symbolize; symbolize {})",
        s.sites,
        s.frames,
        ms(s.ours),
        ms(s.ours_symbolize)
    );
    println!(
        "  baseline: addr2line -f -i -e vmlinux, same addresses: {} ({} output lines)",
        ms(s.addr2line),
        s.addr2line_lines
    );
    println!(
        "  ratio: {:.1}x faster than addr2line, cold (goal >= 10x)",
        s.ratio()
    );
    if let (Some(c), Some(r)) = (s.cached, s.cached_ratio()) {
        println!(
            "  same table from the per-build-id cache: {} ({r:.1}x faster than addr2line)",
            ms(c)
        );
    }
    let (table, _) = site_table(&vmlinux)?;
    let dir = paths::workspace_root()
        .join("target/testbed/bench")
        .join(format!("report-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r =
        coverage::bench::report_generation(&table, 100_000, default_source_root().as_deref(), &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    println!("report ({} PCs, {} distinct):", r.entries, r.distinct);
    for (name, d) in &r.stages {
        println!("  {name}: {}", ms(*d));
    }
    println!("  total: {}", ms(r.total()));
    Ok(())
}

fn parse_sources(s: &str) -> Result<SourceFilter> {
    match SourceFilter::parse(s) {
        // Host PCs are mapped onto the host's vmlinux in their own section, never the guest's.
        Some(SourceFilter::Host) | None => {
            bail!("--source {s:?}: expected all, remote or local")
        }
        Some(f) => Ok(f),
    }
}

/// `cargo xtask report` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Run directory written by `cargo xtask boot` (or a store directory).
    pub run_dir: PathBuf,
    /// vmlinux of the run's kernel (default: the kernel recorded in run.json, else the default kernel).
    #[arg(long, value_name = "V")]
    pub vmlinux: Option<PathBuf>,
    /// vmlinux of the host kernel, for host coverage (--host-kcov; default: the one run.json
    /// names, e.g. the nested runner's L1 kernel; its build-id must match).
    #[arg(long, value_name = "V")]
    pub host_vmlinux: Option<PathBuf>,
    /// Write an lcov tracefile (for genhtml and CI tools).
    #[arg(long, value_name = "F")]
    pub lcov: Option<PathBuf>,
    /// Write a self-contained HTML report into this directory.
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    /// Write JSON for scripts.
    #[arg(long, value_name = "F")]
    pub json: Option<PathBuf>,
    /// Only files matching this glob (repeatable; default drivers/vhost/*).
    #[arg(long, value_name = "GLOB")]
    pub filter: Vec<String>,
    /// Patch coverage of a unified diff (e.g. `git diff base..topic -- drivers/vhost`).
    #[arg(long, value_name = "DIFF")]
    pub patch: Option<PathBuf>,
    /// Kernel source tree for annotated HTML (default: the cached Debian source).
    #[arg(long, value_name = "DIR")]
    pub source_root: Option<PathBuf>,
    /// Coverage sources to merge: all, remote (vhost workers), local (agent syscalls).
    #[arg(long, default_value = "all")]
    pub source: String,
    /// Only this workload of the run.
    #[arg(long)]
    pub workload: Option<String>,
    /// Report an incomplete store (a run whose stream was cut) instead of refusing it.
    #[arg(long)]
    pub partial: bool,
    /// Exit 0 even when the run failed (agent error, failed workload): the report says so
    /// either way.
    #[arg(long)]
    pub allow_failed: bool,
}

/// Runs `cargo xtask report`.
pub fn report_cmd(a: &ReportArgs) -> Result<std::process::ExitCode> {
    // In use while we read it: `cargo xtask runs prune` leaves it alone.
    let _in_use = crate::runs::hold(&a.run_dir)?;
    let text = report(&ReportOpts {
        run_dir: a.run_dir.clone(),
        load: LoadOpts {
            vmlinux: a.vmlinux.clone(),
            sources: parse_sources(&a.source)?,
            workload: a.workload.clone(),
            partial: a.partial,
        },
        lcov: a.lcov.clone(),
        html: a.html.clone(),
        json: a.json.clone(),
        filter: a.filter.clone(),
        patch: a.patch.clone(),
        source_root: a.source_root.clone(),
        host_vmlinux: a.host_vmlinux.clone(),
    })?;
    print!("{text}");
    Ok(failed_run_exit(&[&a.run_dir], a.allow_failed, a.partial))
}

/// Exit status of a report or diff: failure when one of `runs` failed (agent error, failed
/// workload, non-zero final status; with `partial` a stream cut short was asked for and does
/// not count), unless `allow_failed`; says so in one line.
fn failed_run_exit(runs: &[&Path], allow_failed: bool, partial: bool) -> std::process::ExitCode {
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| {
            Store::open_partial(&store_dir(r))
                .is_ok_and(|s| !coverage::store::run_failures(&s.meta, !partial).is_empty())
        })
        .map(|r| r.display().to_string())
        .collect();
    if failed.is_empty() || allow_failed {
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!(
        "error: run {} failed (see RUN FAILED above); pass --allow-failed to exit 0 anyway",
        failed.join(" and ")
    );
    std::process::ExitCode::FAILURE
}

/// `cargo xtask diff` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct DiffArgs {
    /// Run A (before).
    pub run_a: PathBuf,
    /// Run B (after).
    pub run_b: PathBuf,
    /// vmlinux of both runs (default: each run's kernel).
    #[arg(long, value_name = "V")]
    pub vmlinux: Option<PathBuf>,
    /// vmlinux of run A only.
    #[arg(long, value_name = "V")]
    pub vmlinux_a: Option<PathBuf>,
    /// vmlinux of run B only.
    #[arg(long, value_name = "V")]
    pub vmlinux_b: Option<PathBuf>,
    /// Only files matching this glob (repeatable; default drivers/vhost/*).
    #[arg(long, value_name = "GLOB")]
    pub filter: Vec<String>,
    /// Coverage sources: all, remote, local.
    #[arg(long, default_value = "all")]
    pub source: String,
    /// Write the diff as JSON.
    #[arg(long, value_name = "F")]
    pub json: Option<PathBuf>,
    /// Exit 0 even when a run failed (agent error, failed workload): the diff says so either
    /// way.
    #[arg(long)]
    pub allow_failed: bool,
}

/// Runs `cargo xtask diff`.
pub fn diff_cmd(a: &DiffArgs) -> Result<std::process::ExitCode> {
    // Both runs in use while we read them: `cargo xtask runs prune` leaves them alone.
    let _in_use = (crate::runs::hold(&a.run_a)?, crate::runs::hold(&a.run_b)?);
    let (text, _) = diff(&DiffOpts {
        a: a.run_a.clone(),
        b: a.run_b.clone(),
        vmlinux_a: a.vmlinux_a.clone().or_else(|| a.vmlinux.clone()),
        vmlinux_b: a.vmlinux_b.clone().or_else(|| a.vmlinux.clone()),
        filter: a.filter.clone(),
        sources: parse_sources(&a.source)?,
        json: a.json.clone(),
    })?;
    print!("{text}");
    Ok(failed_run_exit(
        &[&a.run_a, &a.run_b],
        a.allow_failed,
        false,
    ))
}

/// `cargo xtask golden` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct GoldenArgs {
    /// Workloads (default: all of vhost-net-tx, vhost-net-rx, vhost-vsock).
    pub workloads: Vec<String>,
    /// Runs per workload; lines covered in every run are stable, the others flaky.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rewrite goldens/<workload>.txt from the stable lines and functions.
    #[arg(long)]
    pub update: bool,
    /// Glob of the files the goldens cover.
    #[arg(long, default_value = DEFAULT_FILTER)]
    pub filter: String,
}

/// Runs `cargo xtask golden`: exit 1 when a golden check fails.
pub fn golden_cmd(a: &GoldenArgs) -> Result<std::process::ExitCode> {
    let opts = GoldenOpts {
        runs: a.runs,
        update: a.update,
        filter: a.filter.clone(),
        ..GoldenOpts::default()
    };
    let names: Vec<String> = if a.workloads.is_empty() {
        WORKLOADS.iter().map(|s| s.to_string()).collect()
    } else {
        a.workloads.clone()
    };
    let mut failed = false;
    let mut skipped = 0;
    for w in &names {
        match golden_workload(w, &opts, &mut |w| boot_workload(w))? {
            GoldenOutcome::Skipped(r) => {
                skipped += 1;
                println!("golden {w}: SKIPPED: {r}");
            }
            GoldenOutcome::Passed(t) => print!("golden {w}: ok\n{t}"),
            GoldenOutcome::Updated(p, t) => println!("golden {w}: wrote {}: {t}", p.display()),
            GoldenOutcome::Failed(t) => {
                failed = true;
                print!("golden {w}: FAILED\n{t}");
            }
        }
    }
    if skipped > 0 {
        // A workload that could not be checked is no pass.
        eprintln!(
            "golden: {skipped} of {} workloads skipped, not checked",
            names.len()
        );
    }
    Ok(if failed || skipped > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coverage::store::{add_host_coverage, collect, HostCoverageInfo};
    use coverage::{CallSite, Frame as SourceFrame, SiteKind};
    use kcov_wire::{
        encode, CoverageChunk, CoverageSource, Done, Frame, Hello, KcovMode, WorkloadResult,
        WorkloadStart,
    };

    /// drivers/vhost/net.c: handle_tx lines 10, 11, 12 at 0x10, 0x20, 0x30 (PCs 0x15, 0x25,
    /// 0x35); drivers/vhost/vhost.c: vhost_poll line 50 at 0x40 (PC 0x45).
    fn table() -> Arc<SiteTable> {
        let frame = |func: &str, file: &str, line: u32| SourceFrame {
            function: Some(Arc::from(func)),
            file: Some(Arc::from(file)),
            line: Some(line),
        };
        let site = |a: u64| CallSite {
            call_addr: a,
            call_len: 5,
            ret_addr: a + 5,
            kind: SiteKind::Pc,
            tail: false,
        };
        Arc::new(SiteTable {
            sites: vec![site(0x10), site(0x20), site(0x30), site(0x40)],
            frames: vec![
                vec![frame("handle_tx", "drivers/vhost/net.c", 10)],
                vec![frame("handle_tx", "drivers/vhost/net.c", 11)],
                vec![frame("handle_tx", "drivers/vhost/net.c", 12)],
                vec![frame("vhost_poll", "drivers/vhost/vhost.c", 50)],
            ],
            ..SiteTable::default()
        })
    }

    /// A run directory whose store holds guest PC 0x15 (net.c line 10) of workload `w`.
    fn run_dir(root: &Path) -> PathBuf {
        run_with_status(root, 0)
    }

    /// A collected run whose workload `w` and agent end with `status` (an error if non-zero).
    fn run_with_status(root: &Path, status: i32) -> PathBuf {
        let frames = [
            Frame::Hello(Hello {
                agent_version: "t".into(),
                kernel_release: "6.12.117".into(),
                kcov_mode: KcovMode::Pc,
                area_words: 1 << 16,
                common_handle: 0x42,
            }),
            Frame::WorkloadStart(WorkloadStart { name: "w".into() }),
            Frame::CoverageChunk(CoverageChunk {
                workload: "w".into(),
                source: CoverageSource::Remote,
                mode: KcovMode::Pc,
                seq: 0,
                overflow: false,
                words: vec![0x15, 0x15],
            }),
            Frame::WorkloadResult(WorkloadResult {
                name: "w".into(),
                status,
                duration_us: 1,
                counters: vec![],
                error: (status != 0).then(|| "boom".to_string()),
            }),
            Frame::Done(Done { status }),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
        let run = root.join("run");
        let s = collect(&bytes[..], &run.join(STORE_DIR), KernelIdentity::default()).unwrap();
        std::fs::write(run.join("stream.bin"), &bytes).unwrap();
        assert!(s.complete, "{s:?}");
        run
    }

    /// The stream of [`run_dir`]'s run, and a run directory holding only it (no store yet).
    fn fresh_run(root: &Path) -> PathBuf {
        let collected = run_dir(&root.join("src"));
        let run = root.join("fresh");
        std::fs::create_dir_all(&run).unwrap();
        let bytes = std::fs::read(collected.join("stream.bin")).unwrap();
        std::fs::write(run.join(STREAM_FILE), bytes).unwrap();
        run
    }

    /// A run whose agent failed is reported with what failed, and report/diff exit non-zero
    /// unless --allow-failed.
    #[test]
    fn failed_runs_say_so_and_fail_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let good = run_with_status(&tmp.path().join("good"), 0);
        let bad = run_with_status(&tmp.path().join("bad"), 2);
        let (text, _) = render(&bad, &tmp.path().join("bad.json"));
        assert!(text.starts_with("RUN FAILED"), "{text}");
        assert!(
            text.contains("workload w failed (status 2): boom"),
            "{text}"
        );
        assert!(text.contains("the agent ended with status 2"), "{text}");
        let (text, _) = render(&good, &tmp.path().join("good.json"));
        assert!(!text.contains("FAILED"), "{text}");
        let code = |runs: &[&Path], allow| format!("{:?}", failed_run_exit(runs, allow, false));
        let ok = format!("{:?}", std::process::ExitCode::SUCCESS);
        assert_eq!(code(&[&good], false), ok);
        assert_ne!(code(&[&bad], false), ok);
        assert_ne!(code(&[&good, &bad], false), ok);
        assert_eq!(code(&[&bad], true), ok);
    }

    /// A run that ended while its workload ran (a hang, a timeout, a panic): the coverage its
    /// snapshots shipped is reported, the workload is marked partial, and the run failed.
    #[test]
    fn a_workload_cut_off_reports_its_snapshots_as_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let chunk = |seq, words: Vec<u64>| {
            Frame::CoverageChunk(CoverageChunk {
                workload: "w".into(),
                source: CoverageSource::Remote,
                mode: KcovMode::Pc,
                seq,
                overflow: false,
                words,
            })
        };
        let frames = [
            Frame::Hello(Hello {
                agent_version: "t".into(),
                kernel_release: "6.12.117".into(),
                kcov_mode: KcovMode::Pc,
                area_words: 1 << 16,
                common_handle: 0x42,
            }),
            Frame::WorkloadStart(WorkloadStart { name: "w".into() }),
            chunk(0, vec![0x15]),
            chunk(1, vec![0x15, 0x45]),
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
        let run = tmp.path().join("run");
        let s = collect(&bytes[..], &run.join(STORE_DIR), KernelIdentity::default()).unwrap();
        assert!(!s.complete);
        let opts = ReportOpts {
            run_dir: run.clone(),
            json: Some(tmp.path().join("r.json")),
            load: LoadOpts {
                partial: true,
                ..LoadOpts::default()
            },
            ..ReportOpts::default()
        };
        let loaded = load_with_table(
            &run,
            &opts.load,
            PathBuf::from("synthetic-vmlinux"),
            table(),
            None,
        )
        .unwrap();
        let text = report_run(&opts, &loaded, None).unwrap();
        assert!(text.starts_with("WARNING: partial report"), "{text}");
        assert!(text.contains("RUN FAILED"), "{text}");
        assert!(
            text.contains(
                "  - workload w: no result (the run ended while it ran: a hang, a panic or a \
                 timeout); coverage up to its last snapshot, 3 PCs (2 distinct)"
            ),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("r.json")).unwrap()).unwrap();
        assert_eq!(v["workloads"][0]["partial"], true, "{v}");
        assert_eq!(v["complete"], false);
        // The snapshots' PCs are in the report: net.c line 10 (0x15) twice.
        assert!(
            hit_lines(&v).contains(&("drivers/vhost/net.c".to_string(), 10)),
            "{:?}",
            hit_lines(&v)
        );
        // A failed run: the command fails, unless the user asked for a cut stream.
        let ok = format!("{:?}", std::process::ExitCode::SUCCESS);
        assert_ne!(format!("{:?}", failed_run_exit(&[&run], false, false)), ok);
        assert_eq!(format!("{:?}", failed_run_exit(&[&run], false, true)), ok);
    }

    /// A collector killed mid-way (here: dropped before its end, which frees the lock as a
    /// kill does) leaves the store "in progress"; the next report collects it again.
    #[test]
    fn a_dead_collector_is_detected_and_the_run_collected_again() {
        let tmp = tempfile::tempdir().unwrap();
        let run = fresh_run(tmp.path());
        let dir = store_dir(&run);
        drop(coverage::store::Collector::create(&dir, KernelIdentity::default()).unwrap());
        assert!(
            Store::open(&dir).is_err(),
            "the dead collection must look incomplete"
        );
        assert!(coverage::store::collection_died(&dir).unwrap());
        let store = open_or_collect(&run, false).unwrap();
        assert!(store.meta.complete);
        assert!(!coverage::store::collection_died(&dir).unwrap());
    }

    /// Concurrent first reports of one run: one collects, the others wait for it; all read
    /// the same complete store.
    #[test]
    fn concurrent_first_reports_wait_for_the_collector() {
        let tmp = tempfile::tempdir().unwrap();
        for round in 0..10 {
            let run = fresh_run(&tmp.path().join(format!("r{round}")));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let run = run.clone();
                    std::thread::spawn(move || open_or_collect(&run, false).map(|s| s.meta))
                })
                .collect();
            for t in threads {
                let meta = t
                    .join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
                assert!(meta.complete);
            }
        }
    }

    fn render(run: &Path, json: &Path) -> (String, serde_json::Value) {
        let opts = ReportOpts {
            run_dir: run.to_path_buf(),
            json: Some(json.to_path_buf()),
            ..ReportOpts::default()
        };
        let loaded = load_with_table(
            run,
            &opts.load,
            PathBuf::from("synthetic-vmlinux"),
            table(),
            None,
        )
        .unwrap();
        let text = report_run(&opts, &loaded, None).unwrap();
        let v = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
        (text, v)
    }

    fn hit_lines(v: &serde_json::Value) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for f in v["files"].as_array().unwrap() {
            for l in f["lines"].as_array().unwrap() {
                if l["sites_hit"].as_u64().unwrap() > 0 {
                    out.push((
                        f["path"].as_str().unwrap().to_string(),
                        l["line"].as_u64().unwrap(),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn report_lists_host_coverage_without_symbolizing_it() {
        let tmp = tempfile::tempdir().unwrap();
        let run = run_dir(tmp.path());
        let (text0, json0) = render(&run, &tmp.path().join("before.json"));
        assert!(!text0.contains("host coverage"), "{text0}");
        assert!(json0.get("host").is_none());
        assert_eq!(hit_lines(&json0), [("drivers/vhost/net.c".to_string(), 10)]);

        // The VMM adds host PCs that, read as guest addresses, would hit net.c 11 and 12 and
        // vhost.c 50.
        add_host_coverage(
            &run.join(STORE_DIR),
            "vhost-net",
            HostCoverageInfo {
                kernel_release: Some("6.8.0-host".into()),
                kernel_build_id: None,
                common_handle: 7,
                mode: KcovMode::Pc,
                overflow: false,
            },
            [0x25u64, 0x35, 0x45, 0x25],
        )
        .unwrap();
        let (text, json) = render(&run, &tmp.path().join("after.json"));
        let line = "host coverage vhost-net (host kernel 6.8.0-host): 3 distinct PCs, not \
                    symbolized against the guest vmlinux\n";
        assert!(text.contains(line), "{text}");
        // No run.json names the host kernel and no build-id was recorded: not mapped, and
        // the report says so and how to map it.
        let unmapped = "host coverage vhost-net: not mapped (the host kernel's vmlinux is \
                        unknown; pass --host-vmlinux)\n";
        assert!(text.contains(unmapped), "{text}");
        // Nothing else of the terminal report changed.
        assert_eq!(
            text.replacen(line, "", 1)
                .replacen(unmapped, "", 1)
                .replace("after.json", "before.json"),
            text0
        );
        // The guest's lines alone are hit; the host entry is there raw.
        assert_eq!(hit_lines(&json), hit_lines(&json0));
        assert_eq!(json["pcs"], json0["pcs"]);
        assert_eq!(json["host"][0]["distinct_pcs"], 3);
        assert_eq!(json["host"][0]["entries"], 4);
        assert_eq!(json["host"][0]["meta"]["name"], "vhost-net");
        assert_eq!(json["host"][0]["meta"]["common_handle"], 7);
        assert_eq!(
            json["host"][0]["meta"]["coverage"]["file"],
            "h-vhost-net.host.pcs"
        );
        let mut without = json.clone();
        without.as_object_mut().unwrap().remove("host");
        assert_eq!(without, json0);
    }
}
