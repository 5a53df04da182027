//! The kernels of runs: which vmlinux a run booted (its `run.json` names a kernel of the
//! cache), the kernel identity a run's store is collected with, and the site table of a vmlinux
//! (loaded once per process, from the per-build-id cache on disk). The run directory itself is
//! `coverage::run`'s; this is the part that needs xtask's kernel cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::{Context, Result};
use coverage::run::{LoadOpts, LoadedRun, RunRecord};
use coverage::store::{KernelIdentity, Store};
use coverage::{SiteTable, SymbolCache, Vmlinux};
use sha2::{Digest, Sha256};

use crate::kernel::{self, KernelOpts};
use crate::paths;

/// The host kernel's vmlinux of a run: `explicit`, else the cached kernel `run.json` names
/// (nested runner: the L1 kernel). None where neither is known.
pub fn host_vmlinux(run_dir: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    cached_kernel_dir(&RunRecord::read(run_dir)?.host_kernel_key?).map(|d| d.join("vmlinux"))
}

/// The kernel cache key recorded in `RUN_DIR/run.json`, if any.
pub fn run_kernel_key(run_dir: &Path) -> Option<String> {
    RunRecord::read(run_dir)?.kernel_key
}

/// The cached kernel directory of cache key `key`, when it holds a vmlinux.
pub fn cached_kernel_dir(key: &str) -> Option<PathBuf> {
    // Keys are hex; refuse anything that could leave the cache directory.
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    let dir = paths::cache_root().join("kernels").join(key);
    dir.join("vmlinux").is_file().then_some(dir)
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
    let store_key = Store::open_partial(&coverage::run::store_dir(run_dir))
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

/// [`coverage::run::open_or_collect`] with the kernel the run booted; its notes go to stderr.
pub fn open_or_collect(run_dir: &Path, partial: bool) -> Result<Store> {
    let mut notes = Vec::new();
    let store =
        coverage::run::open_or_collect(run_dir, partial, || run_identity(run_dir), &mut notes);
    for n in notes {
        eprintln!("report: {n}");
    }
    Ok(store?)
}

/// The release of the kernel `run.json` names, from its cache entry.
pub fn built_release(run_dir: &Path) -> Option<String> {
    let dir = cached_kernel_dir(&run_kernel_key(run_dir)?)?;
    Some(kernel::cached_kernel(&dir, true)?.meta.release)
}

/// The kernel a run booted (`run.json`'s key, its cached vmlinux's build-id and config).
pub fn run_identity(run_dir: &Path) -> KernelIdentity {
    let key = run_kernel_key(run_dir);
    let kdir = key.as_deref().and_then(cached_kernel_dir);
    let build_id = kdir.as_ref().and_then(|d| {
        Vmlinux::read_notes(d.join("vmlinux"))
            .ok()?
            .build_id
            .map(|b| b.to_hex())
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
    let cache = SymbolCache::new(paths::cache_root().join("symbols"));
    // A table cached for this build-id needs only the image's notes, not the whole image (a
    // table is only ever built from an image with DWARF).
    let cached = Vmlinux::read_notes(path)
        .ok()
        .filter(|n| n.has_dwarf)
        .and_then(|n| n.build_id)
        .and_then(|id| Some((cache.load(&id).ok().flatten()?, id.to_hex())));
    let entry = match cached {
        Some((table, id)) => (Arc::new(table), Some(id)),
        None => {
            let vm = open_vmlinux(path)?;
            let (table, _) = SiteTable::load_or_build(&vm, Some(&cache))?;
            (Arc::new(table), vm.build_id().map(|b| b.to_hex()))
        }
    };
    if let Ok(mut m) = tables.lock() {
        m.insert(key, entry.clone());
    }
    Ok(entry)
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
    Ok(LoadedRun::new(store, opts, vmlinux, table, build_id)?)
}
