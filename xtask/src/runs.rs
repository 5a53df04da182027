//! Run directories: making one for a boot, marking runs in use, and `cargo xtask runs list |
//! prune`.
//!
//! ```text
//! <runs>/run-<start ms>-<pid>-<n>/   run.json, serial.log, coverage.kcw, store/, .in-use
//! <initramfs cache>/<sha256>.cpio    the images runs booted (run.json "initramfs")
//! ```
//!
//! **In use.** `<run>/.in-use` is `flock`ed shared by whoever works on the run: the boot that
//! made it (from before the directory gets its final name until the boot command ends), and
//! every report, diff or golden check reading it. Prune takes it exclusively and without
//! waiting: a run it cannot lock is in use and stays. The lock dies with its holder, so a killed
//! boot never pins its run. Run directories from before this lock (no `.in-use`) count as in use
//! while their run has not ended and a file in them changed within [`GRACE`].
//!
//! **Prune** removes the runs the options select (all but the newest `--keep N`, and/or those
//! started longer ago than `--older-than D`; with both, a run goes only when both select it),
//! then, holding the initramfs cache's lock exclusively (boots hold it shared until their
//! run.json names their entry), removes the cache entries no remaining run names and that were
//! not written or reused within [`GRACE`].

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use coverage::run::{RunRecord, RUN_JSON};

use crate::image;
use crate::{lock, paths};

/// The lock file of a run directory.
pub const IN_USE_FILE: &str = ".in-use";
/// Run directories are named `run-<start time in ms>-<pid>-<n>`.
pub const RUN_PREFIX: &str = "run-";
/// A run directory's name while [`create_in`] makes it.
const NEW_RUN_PREFIX: &str = ".new-run-";
/// A run directory's name while prune removes it.
const PRUNING_PREFIX: &str = ".pruning-";
/// How recent a cache entry (or a legacy run's last write) must be for prune to leave it alone
/// although nothing names it: a boot between picking its entry and naming it in run.json.
pub const GRACE: Duration = Duration::from_secs(10 * 60);

/// A run directory made by [`create`], marked in use until this is dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _in_use: File,
}

impl RunDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for RunDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// A fresh run directory under [`paths::runs_dir`], in use until the result is dropped.
pub fn create() -> Result<RunDir> {
    let base = paths::runs_dir();
    create_in(&base).with_context(|| format!("creating a run directory in {}", base.display()))
}

/// A fresh run directory in `base`. It is made under a hidden name, locked, and only then
/// renamed to `run-…`: no `run-…` directory of a live boot is ever seen unlocked.
pub fn create_in(base: &Path) -> io::Result<RunDir> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(base)?;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let pid = std::process::id();
    let tmp = base.join(format!(
        "{NEW_RUN_PREFIX}{ms}-{pid}-{}",
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&tmp)?;
    let made = (|| {
        let file = lock::open(&tmp.join(IN_USE_FILE), true)?;
        lock::flock(&file, false, true)?;
        for n in 0u32.. {
            let dir = base.join(format!("{RUN_PREFIX}{ms}-{pid}-{n}"));
            match rename_noreplace(&tmp, &dir) {
                Ok(()) => {
                    return Ok(RunDir {
                        path: dir,
                        _in_use: file,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("an unbounded counter always finds a free name")
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINVAL) {
        // A file system without RENAME_NOREPLACE: names carry our pid, so only we race here.
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        return std::fs::rename(from, to);
    }
    Err(e)
}

/// Marks `run_dir` in use while the returned lock lives (a report, diff or golden check
/// reading it), so prune leaves it alone; waits while a prune is removing it. `None` when
/// `run_dir` is no run directory (no run.json: e.g. a bare store) or is read-only.
pub fn hold(run_dir: &Path) -> Result<Option<File>> {
    if !run_dir.join(RUN_JSON).is_file() {
        return Ok(None);
    }
    let path = run_dir.join(IN_USE_FILE);
    let gone = || {
        anyhow::anyhow!(
            "{}: the run was removed (cargo xtask runs prune) while we came to read it",
            run_dir.display()
        )
    };
    let file = match lock::open(&path, true) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    lock::flock(&file, false, true).with_context(|| format!("locking {}", path.display()))?;
    if !run_dir.join(RUN_JSON).is_file() {
        return Err(gone());
    }
    Ok(Some(file))
}

/// One run directory.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub path: PathBuf,
    pub name: String,
    /// From the name (the boot's start), else the directory's modification time.
    pub started: SystemTime,
    /// `run.json`, when it is there and readable.
    pub record: Option<RunRecord>,
}

impl RunInfo {
    /// Time since the run started (zero for a start in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.started).unwrap_or_default()
    }

    /// Whether someone works on the run now (see the module docs).
    pub fn in_use(&self, now: SystemTime) -> io::Result<bool> {
        match lock::open(&self.path.join(IN_USE_FILE), false) {
            Ok(f) => Ok(!lock::flock(&f, true, false)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(self.legacy_active(now)),
            Err(e) => Err(e),
        }
    }

    /// A run from before the in-use lock that has not ended and was written to recently.
    fn legacy_active(&self, now: SystemTime) -> bool {
        if self.record.as_ref().is_some_and(|r| r.exit_code.is_some()) {
            return false;
        }
        let newest = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
            .max();
        newest.is_some_and(|t| now.duration_since(t).unwrap_or_default() < GRACE)
    }

    /// `in use`, `exit N`, `unfinished` (no status and nobody holds it: the boot was killed)
    /// or `no run.json`.
    pub fn status(&self, now: SystemTime) -> String {
        if self.in_use(now).unwrap_or(false) {
            return "in use".into();
        }
        match &self.record {
            Some(RunRecord {
                exit_code: Some(c), ..
            }) => format!("exit {c}"),
            Some(_) => "unfinished".into(),
            None => "no run.json".into(),
        }
    }
}

/// The run directories in `runs_dir`, newest first (none when it does not exist).
pub fn list(runs_dir: &Path) -> Result<Vec<RunInfo>> {
    let rd = match std::fs::read_dir(runs_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", runs_dir.display())),
    };
    let mut runs = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("reading {}", runs_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue; // removed meanwhile
        };
        if !name.starts_with(RUN_PREFIX) || !meta.is_dir() {
            continue;
        }
        let started = started_from_name(&name)
            .or_else(|| meta.modified().ok())
            .unwrap_or(UNIX_EPOCH);
        let path = entry.path();
        let record = RunRecord::read(&path);
        runs.push(RunInfo {
            path,
            name,
            started,
            record,
        });
    }
    runs.sort_by(|a, b| b.started.cmp(&a.started).then(b.name.cmp(&a.name)));
    Ok(runs)
}

/// `run-<ms>-…` → the start time.
fn started_from_name(name: &str) -> Option<SystemTime> {
    let ms: u64 = name
        .strip_prefix(RUN_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Bytes of the files under `path` (symbolic links not followed).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| disk_usage(&e.path()))
        .sum()
}

/// What to prune.
#[derive(Clone, Debug)]
pub struct PruneOpts {
    /// Keep the newest N runs.
    pub keep: Option<usize>,
    /// Remove only runs started longer ago than this.
    pub older_than: Option<Duration>,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
    /// Unnamed cache entries younger than this stay ([`GRACE`]).
    pub grace: Duration,
}

/// What prune did (or, dry, would do).
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Runs removed, with their size.
    pub removed: Vec<(PathBuf, u64)>,
    /// Selected runs left alone because they are in use.
    pub in_use: Vec<PathBuf>,
    /// Selected runs that could not be removed, and why.
    pub failed: Vec<(PathBuf, String)>,
    /// Runs left (in use and failed ones included).
    pub kept: usize,
    /// Cache entries (and leftover temporary files) removed, with their size.
    pub cache_removed: Vec<(PathBuf, u64)>,
    /// Cache entries left.
    pub cache_kept: usize,
    /// Of those, entries no run names that are younger than the grace period.
    pub cache_young: usize,
}

impl PruneReport {
    /// Bytes removed in all.
    pub fn freed(&self) -> u64 {
        self.removed
            .iter()
            .chain(&self.cache_removed)
            .map(|(_, b)| b)
            .sum()
    }
}

/// Removes the runs in `runs_dir` that `opts` select and are not in use, then the entries of
/// the initramfs cache in `cache_dir` that no remaining run names (see the module docs).
pub fn prune(
    runs_dir: &Path,
    cache_dir: &Path,
    opts: &PruneOpts,
    now: SystemTime,
) -> Result<PruneReport> {
    if opts.keep.is_none() && opts.older_than.is_none() {
        bail!("runs prune: say which runs to remove with --keep N and/or --older-than DURATION");
    }
    let mut report = PruneReport::default();
    let mut gone = HashSet::new();
    for (i, run) in list(runs_dir)?.iter().enumerate() {
        let chosen =
            opts.keep.is_none_or(|k| i >= k) && opts.older_than.is_none_or(|d| run.age(now) >= d);
        if !chosen {
            report.kept += 1;
            continue;
        }
        match remove_run(run, opts.dry_run, now) {
            Ok(Some(bytes)) => {
                report.removed.push((run.path.clone(), bytes));
                gone.insert(run.path.clone());
            }
            Ok(None) => {
                report.in_use.push(run.path.clone());
                report.kept += 1;
            }
            Err(e) => {
                report.failed.push((run.path.clone(), format!("{e:#}")));
                report.kept += 1;
            }
        }
    }
    remove_leftovers(runs_dir, opts, now, &mut report);
    prune_cache(runs_dir, cache_dir, &gone, opts, now, &mut report)?;
    Ok(report)
}

/// Removes directories left under a hidden name, by [`create_in`] (its boot was killed before
/// the rename) or by [`remove_run`] (its prune was killed), once they are older than the grace
/// period and nobody holds them.
fn remove_leftovers(runs_dir: &Path, opts: &PruneOpts, now: SystemTime, report: &mut PruneReport) {
    for entry in std::fs::read_dir(runs_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let old = std::fs::symlink_metadata(&path).is_ok_and(|m| {
            m.is_dir()
                && m.modified()
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= opts.grace)
        });
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(NEW_RUN_PREFIX) || name.starts_with(PRUNING_PREFIX)) || !old {
            continue;
        }
        let free = lock::open(&path.join(IN_USE_FILE), false)
            .and_then(|f| lock::flock(&f, true, false))
            .unwrap_or(true);
        if !free {
            continue;
        }
        let bytes = disk_usage(&path);
        match opts.dry_run {
            true => report.removed.push((path, bytes)),
            false => match std::fs::remove_dir_all(&path) {
                Ok(()) => report.removed.push((path, bytes)),
                Err(e) => report.failed.push((path, e.to_string())),
            },
        }
    }
}

/// Removes `run` (dry: only measures it) unless it is in use; its size, or None when in use.
/// The run's lock is held exclusively while it is removed, and the run is first renamed out of
/// sight: a report that comes meanwhile finds no run (or waits, then finds it gone), never
/// half of one.
fn remove_run(run: &RunInfo, dry_run: bool, now: SystemTime) -> Result<Option<u64>> {
    let lock_path = run.path.join(IN_USE_FILE);
    // A run from before the lock may be booting under an older xtask that does not take it.
    if std::fs::symlink_metadata(&lock_path).is_err() && run.legacy_active(now) {
        return Ok(None);
    }
    let file = match lock::open(&lock_path, !dry_run) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("opening {}", lock_path.display())),
    };
    if let Some(f) = &file {
        if !lock::flock(f, true, false)
            .with_context(|| format!("locking {}", lock_path.display()))?
        {
            return Ok(None);
        }
    }
    let bytes = disk_usage(&run.path);
    if !dry_run {
        let doomed = run
            .path
            .with_file_name(format!("{PRUNING_PREFIX}{}", run.name));
        std::fs::rename(&run.path, &doomed)
            .with_context(|| format!("moving {} aside", run.path.display()))?;
        std::fs::remove_dir_all(&doomed)
            .with_context(|| format!("removing {}", doomed.display()))?;
    }
    Ok(Some(bytes))
}

fn prune_cache(
    runs_dir: &Path,
    cache_dir: &Path,
    gone: &HashSet<PathBuf>,
    opts: &PruneOpts,
    now: SystemTime,
    report: &mut PruneReport,
) -> Result<()> {
    if !cache_dir.is_dir() {
        return Ok(());
    }
    let _lock = image::lock_cache(cache_dir, true)?;
    // Under the lock every boot that picked an entry has written the run.json naming it.
    let named: HashSet<String> = list(runs_dir)?
        .into_iter()
        .filter(|r| !gone.contains(&r.path))
        .filter_map(|r| Some(r.record?.initramfs?.sha256))
        .collect();
    let rd =
        std::fs::read_dir(cache_dir).with_context(|| format!("reading {}", cache_dir.display()))?;
    for entry in rd {
        let entry = entry.with_context(|| format!("reading {}", cache_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let young = meta
            .modified()
            .map(|t| now.duration_since(t).unwrap_or_default() < opts.grace)
            .unwrap_or(true);
        let digest = image::entry_digest(&name);
        let remove = match digest {
            Some(d) => !named.contains(d) && !young,
            // A writer killed mid-write left it.
            None => image::is_temp_file(&name) && !young,
        };
        if !remove {
            if let Some(d) = digest {
                report.cache_kept += 1;
                report.cache_young += usize::from(!named.contains(d));
            }
            continue;
        }
        if !opts.dry_run {
            if let Err(e) = std::fs::remove_file(&path) {
                report.failed.push((path, e.to_string()));
                continue;
            }
        }
        report.cache_removed.push((path, meta.len()));
    }
    Ok(())
}

/// `cargo xtask runs` subcommands.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum RunsCmd {
    /// Run directories, newest first: age, size, status, runner, workloads; and the initramfs
    /// cache.
    List,
    /// Remove old run directories (never one in use), then the initramfs cache entries no
    /// remaining run booted; prints what went and the space freed.
    Prune(PruneArgs),
}

/// `cargo xtask runs prune` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct PruneArgs {
    /// Keep the newest N runs (by start time), remove the others.
    #[arg(long, value_name = "N", value_parser = parse_keep, allow_negative_numbers = true)]
    pub keep: Option<usize>,
    /// Remove runs started longer ago than this: a number and a unit s, m, h, d or w (30m,
    /// 12h, 7d, 1d12h). With --keep, a run goes only when both select it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub older_than: Option<Duration>,
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--keep` values: a count.
fn parse_keep(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected a whole number of runs to keep, e.g. --keep 10".into())
}

/// `--older-than` values: one or more `<number><unit>` (s, m, h, d, w), e.g. `7d` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || "expected a number and a unit s, m, h, d or w, e.g. 30m, 12h, 7d or 1d12h".to_string();
    let mut secs: u64 = 0;
    let mut num = String::new();
    let mut parts = 0;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        secs = n
            .checked_mul(unit)
            .and_then(|v| secs.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long"))?;
        num.clear();
        parts += 1;
    }
    if parts == 0 || !num.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// Bytes for people: `512 B`, `2.7 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// An age for people: `45s`, `12m`, `3h`, `2d`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The name to show for `path` (its file name).
fn short(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The text `runs prune` prints.
pub fn prune_text(r: &PruneReport, dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut s = String::new();
    for (p, b) in &r.removed {
        s.push_str(&format!("{verb} {} ({})\n", p.display(), human_bytes(*b)));
    }
    for p in &r.in_use {
        s.push_str(&format!(
            "kept {}: in use (a boot or report holds it)\n",
            p.display()
        ));
    }
    for (p, b) in &r.cache_removed {
        s.push_str(&format!(
            "{verb} initramfs cache entry {} ({})\n",
            short(p),
            human_bytes(*b)
        ));
    }
    let run_bytes: u64 = r.removed.iter().map(|(_, b)| b).sum();
    let cache_bytes: u64 = r.cache_removed.iter().map(|(_, b)| b).sum();
    s.push_str(&format!(
        "runs: {verb} {} ({}), kept {} ({} in use); initramfs cache: {verb} {} ({}), kept {} \
         ({} unused but younger than {})\n",
        r.removed.len(),
        human_bytes(run_bytes),
        r.kept,
        r.in_use.len(),
        r.cache_removed.len(),
        human_bytes(cache_bytes),
        r.cache_kept,
        r.cache_young,
        human_age(GRACE)
    ));
    s.push_str(&format!(
        "{} {}\n",
        if dry_run { "would free" } else { "freed" },
        human_bytes(r.freed())
    ));
    s
}

/// The text `runs list` prints.
pub fn list_text(runs_dir: &Path, cache_dir: &Path, now: SystemTime) -> Result<String> {
    let runs = list(runs_dir)?;
    let mut rows = vec![[
        "RUN".to_string(),
        "AGE".into(),
        "SIZE".into(),
        "STATUS".into(),
        "RUNNER".into(),
        "WORK".into(),
    ]];
    let mut total = 0;
    for r in &runs {
        let size = disk_usage(&r.path);
        total += size;
        rows.push([
            r.name.clone(),
            human_age(r.age(now)),
            human_bytes(size),
            r.status(now),
            r.record
                .as_ref()
                .and_then(|x| x.runner.clone())
                .unwrap_or_else(|| "-".into()),
            r.record
                .as_ref()
                .map(RunRecord::work)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    if !runs.is_empty() {
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
    }
    let (entries, cache_bytes) = std::fs::read_dir(cache_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| image::entry_digest(&e.file_name().to_string_lossy()).is_some())
        .fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
        });
    s.push_str(&format!(
        "{} run{}, {} in {}; initramfs cache: {entries} entr{}, {} in {}\n",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        human_bytes(total),
        runs_dir.display(),
        if entries == 1 { "y" } else { "ies" },
        human_bytes(cache_bytes),
        cache_dir.display()
    ));
    Ok(s)
}

/// Runs `cargo xtask runs …`.
pub fn runs_cmd(cmd: &RunsCmd) -> Result<ExitCode> {
    let (runs_dir, cache_dir) = (paths::runs_dir(), paths::initramfs_cache_dir());
    let now = SystemTime::now();
    match cmd {
        RunsCmd::List => print!("{}", list_text(&runs_dir, &cache_dir, now)?),
        RunsCmd::Prune(a) => {
            let opts = PruneOpts {
                keep: a.keep,
                older_than: a.older_than,
                dry_run: a.dry_run,
                grace: GRACE,
            };
            let report = prune(&runs_dir, &cache_dir, &opts, now)?;
            print!("{}", prune_text(&report, a.dry_run));
            for (p, why) in &report.failed {
                eprintln!("error: could not remove {}: {why}", p.display());
            }
            if !report.failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    /// A finished run started at `started` whose run.json names the initramfs `sha256`.
    fn fake_run(runs: &Path, started: SystemTime, sha256: Option<&str>) -> PathBuf {
        let ms = started.duration_since(UNIX_EPOCH).unwrap().as_millis();
        let dir = runs.join(format!("run-{ms}-42-0"));
        std::fs::create_dir_all(dir.join("store")).unwrap();
        let mut rec = serde_json::json!({
            "runner": "qemu",
            "cmdline": "console=ttyS0 testbed.workloads=vhost-net-tx,vhost-vsock",
            "command": [],
            "exit_code": 0,
        });
        if let Some(d) = sha256 {
            rec["initramfs"] =
                serde_json::json!({"sha256": d, "bytes": 10, "path": format!("/c/{d}.cpio")});
        }
        std::fs::write(dir.join(RUN_JSON), rec.to_string()).unwrap();
        std::fs::write(dir.join("serial.log"), vec![b'x'; 1000]).unwrap();
        std::fs::write(dir.join("store/meta.json"), vec![b'y'; 500]).unwrap();
        dir
    }

    fn set_mtime(path: &Path, t: SystemTime) {
        // A directory opens read-only; its owner may still set its times.
        let f = if path.is_dir() {
            File::open(path)
        } else {
            File::options().write(true).open(path)
        };
        f.unwrap().set_modified(t).unwrap();
    }

    fn opts(keep: Option<usize>, older_than: Option<Duration>) -> PruneOpts {
        PruneOpts {
            keep,
            older_than,
            dry_run: false,
            grace: GRACE,
        }
    }

    fn names(paths: &[(PathBuf, u64)]) -> Vec<String> {
        paths.iter().map(|(p, _)| short(p)).collect()
    }

    fn present(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn created_runs_are_in_use_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let a = create_in(tmp.path()).unwrap();
        let b = create_in(tmp.path()).unwrap();
        assert_ne!(a.path(), b.path());
        assert!(short(a.path()).starts_with(RUN_PREFIX), "{}", a.display());
        // Only the two runs, no half-made directory.
        assert_eq!(present(tmp.path()).len(), 2, "{:?}", present(tmp.path()));
        let now = SystemTime::now();
        let info = list(tmp.path()).unwrap();
        assert!(info.iter().all(|r| r.in_use(now).unwrap()));
        assert_eq!(info[0].status(now), "in use");
        let path = a.path().to_path_buf();
        drop(a);
        let info = list(tmp.path()).unwrap();
        let a_info = info.iter().find(|r| r.path == path).unwrap();
        assert!(!a_info.in_use(now).unwrap());
        assert_eq!(a_info.status(now), "no run.json");
        // A reader marks a run in use as well.
        std::fs::write(path.join(RUN_JSON), r#"{"exit_code": 3}"#).unwrap();
        let reader = hold(&path).unwrap();
        assert!(reader.is_some());
        assert!(list(tmp.path())
            .unwrap()
            .iter()
            .all(|r| r.in_use(now).unwrap()));
        drop(reader);
        assert_eq!(
            list(tmp.path())
                .unwrap()
                .iter()
                .find(|r| r.path == path)
                .unwrap()
                .status(now),
            "exit 3"
        );
        // Not a run directory: nothing to hold.
        assert!(hold(tmp.path()).unwrap().is_none());
    }

    #[test]
    fn keep_removes_all_but_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("cache"));
        let now = SystemTime::now();
        let dirs: Vec<PathBuf> = (1..=5)
            .map(|h| fake_run(&runs, now - HOUR * h, None))
            .collect();
        let mut dry = opts(Some(2), None);
        dry.dry_run = true;
        let r = prune(&runs, &cache, &dry, now).unwrap();
        assert_eq!(r.removed.len(), 3);
        assert_eq!(list(&runs).unwrap().len(), 5, "a dry run removes nothing");
        let r = prune(&runs, &cache, &opts(Some(2), None), now).unwrap();
        let mut want: Vec<String> = dirs[2..].iter().map(|p| short(p)).collect();
        want.sort();
        let mut got = names(&r.removed);
        got.sort();
        assert_eq!(got, want);
        assert_eq!((r.kept, r.in_use.len()), (2, 0));
        let left: Vec<PathBuf> = list(&runs).unwrap().into_iter().map(|r| r.path).collect();
        assert_eq!(left, dirs[..2]);
        // Nothing left under another name either.
        let mut kept: Vec<String> = dirs[..2].iter().map(|p| short(p)).collect();
        kept.sort();
        assert_eq!(present(&runs), kept);
        // A removed run is no run to read.
        assert!(hold(&dirs[4]).unwrap().is_none());
        // Each removed run had 1500 bytes of files plus its run.json.
        assert!(r.freed() > 3 * 1500, "{}", r.freed());
        let text = prune_text(&r, false);
        assert!(text.contains("runs: removed 3 ("), "{text}");
        assert!(text.contains("freed "), "{text}");
    }

    #[test]
    fn older_than_and_keep_both_must_select() {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("cache"));
        let now = SystemTime::now();
        let recent = fake_run(&runs, now - HOUR, None);
        let two_days = fake_run(&runs, now - DAY * 2, None);
        let ten_days = fake_run(&runs, now - DAY * 10, None);
        let r = prune(&runs, &cache, &opts(Some(2), Some(DAY)), now).unwrap();
        assert_eq!(names(&r.removed), [short(&ten_days)]);
        let r = prune(&runs, &cache, &opts(None, Some(DAY)), now).unwrap();
        assert_eq!(names(&r.removed), [short(&two_days)]);
        assert_eq!(list(&runs).unwrap()[0].path, recent);
        assert!(prune(&runs, &cache, &opts(None, None), now).is_err());
    }

    #[test]
    fn runs_in_use_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("cache"));
        let now = SystemTime::now();
        let old = fake_run(&runs, now - DAY * 30, None);
        let reader = hold(&old).unwrap();
        let booting = create_in(&runs).unwrap();
        let r = prune(&runs, &cache, &opts(Some(0), None), now + DAY * 365).unwrap();
        assert!(r.removed.is_empty(), "{:?}", r.removed);
        assert_eq!(r.in_use.len(), 2);
        assert!(old.is_dir() && booting.is_dir());
        assert!(prune_text(&r, false).contains("in use (a boot or report holds it)"));
        drop((reader, booting));
        let r = prune(&runs, &cache, &opts(Some(0), None), now + DAY * 365).unwrap();
        assert_eq!(r.removed.len(), 2);
        assert!(list(&runs).unwrap().is_empty());
    }

    #[test]
    fn legacy_runs_without_a_lock_stay_while_written_to() {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("cache"));
        let now = SystemTime::now();
        let dir = fake_run(&runs, now - DAY, None);
        // Not ended (no exit code), its console log written a minute ago: a boot of an older
        // xtask may be running.
        std::fs::write(
            dir.join(RUN_JSON),
            r#"{"runner": "qemu", "exit_code": null}"#,
        )
        .unwrap();
        set_mtime(&dir.join(RUN_JSON), now - DAY);
        set_mtime(&dir.join("serial.log"), now - Duration::from_secs(60));
        set_mtime(&dir.join("store"), now - DAY);
        let r = prune(&runs, &cache, &opts(Some(0), None), now).unwrap();
        assert_eq!(r.in_use, std::slice::from_ref(&dir));
        // Quiet for longer than the grace period: the boot was killed long ago.
        let r = prune(&runs, &cache, &opts(Some(0), None), now + GRACE).unwrap();
        assert_eq!(names(&r.removed), [short(&dir)]);
    }

    #[test]
    fn cache_entries_no_remaining_run_names_go_after_the_grace_period() {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("cache"));
        std::fs::create_dir_all(&cache).unwrap();
        let now = SystemTime::now();
        let d = |c: char| c.to_string().repeat(64);
        let (kept_d, removed_d, orphan_d, young_d) = (d('a'), d('b'), d('c'), d('d'));
        fake_run(&runs, now - HOUR, Some(&kept_d));
        fake_run(&runs, now - DAY, Some(&removed_d));
        let entry = |digest: &str, age: Duration| {
            let p = cache.join(image::entry_name(digest));
            std::fs::write(&p, vec![0u8; 2000]).unwrap();
            set_mtime(&p, now - age);
        };
        entry(&kept_d, DAY);
        entry(&removed_d, DAY);
        entry(&orphan_d, DAY);
        entry(&young_d, Duration::from_secs(5));
        let temp = cache.join(format!(".{}.tmp.77.0", image::entry_name(&d('e'))));
        std::fs::write(&temp, b"half").unwrap();
        set_mtime(&temp, now - DAY);
        std::fs::write(cache.join("notes.txt"), b"not ours").unwrap();
        set_mtime(&cache.join("notes.txt"), now - DAY);

        let mut dry = opts(Some(1), None);
        dry.dry_run = true;
        let r = prune(&runs, &cache, &dry, now).unwrap();
        assert_eq!(r.cache_removed.len(), 3);
        assert_eq!(
            present(&cache).len(),
            7,
            "a dry run removes nothing (it made .lock)"
        );

        let r = prune(&runs, &cache, &opts(Some(1), None), now).unwrap();
        let mut gone = names(&r.cache_removed);
        gone.sort();
        let mut want = vec![
            image::entry_name(&removed_d),
            image::entry_name(&orphan_d),
            short(&temp),
        ];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!((r.cache_kept, r.cache_young), (2, 1));
        assert_eq!(
            present(&cache),
            [
                image::CACHE_LOCK_FILE.to_string(),
                image::entry_name(&kept_d),
                image::entry_name(&young_d),
                "notes.txt".into()
            ]
        );
        assert_eq!(r.freed(), r.removed[0].1 + 2 * 2000 + 4);
        let text = prune_text(&r, false);
        assert!(
            text.contains(&format!(
                "removed initramfs cache entry {}",
                image::entry_name(&orphan_d)
            )),
            "{text}"
        );
        assert!(
            text.contains("kept 2 (1 unused but younger than 10m)"),
            "{text}"
        );
    }

    #[test]
    fn a_killed_creation_or_prune_is_cleaned_up_after_the_grace_period() {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("cache"));
        let left = [
            runs.join(format!("{NEW_RUN_PREFIX}1-2-3")),
            runs.join(format!("{PRUNING_PREFIX}run-1-2-3")),
        ];
        for dir in &left {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(IN_USE_FILE), b"").unwrap();
        }
        let now = SystemTime::now();
        let r = prune(&runs, &cache, &opts(Some(5), None), now).unwrap();
        assert!(r.removed.is_empty() && left.iter().all(|d| d.is_dir()));
        // Still held (a creation or a prune going on): left alone.
        let held = lock::open(&left[1].join(IN_USE_FILE), false).unwrap();
        assert!(lock::flock(&held, true, false).unwrap());
        let r = prune(&runs, &cache, &opts(Some(5), None), now + GRACE).unwrap();
        assert_eq!(names(&r.removed), [short(&left[0])]);
        drop(held);
        let r = prune(&runs, &cache, &opts(Some(5), None), now + GRACE).unwrap();
        assert_eq!(names(&r.removed), [short(&left[1])]);
        assert!(!left.iter().any(|d| d.exists()));
        assert!(list(&runs).unwrap().is_empty());
    }

    #[test]
    fn list_shows_age_size_status_runner_and_work() {
        let tmp = tempfile::tempdir().unwrap();
        let (runs, cache) = (tmp.path().join("runs"), tmp.path().join("cache"));
        let now = SystemTime::now();
        let dir = fake_run(&runs, now - HOUR * 3, None);
        let text = list_text(&runs, &cache, now).unwrap();
        let row = text.lines().nth(1).unwrap();
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                short(&dir).as_str(),
                "3h",
                &human_bytes(disk_usage(&dir)),
                "exit",
                "0",
                "qemu",
                "vhost-net-tx,vhost-vsock"
            ]
            .iter()
            .flat_map(|c| c.split_whitespace())
            .collect::<Vec<_>>()
        );
        assert!(text.contains("1 run, "), "{text}");
        assert!(text.contains("initramfs cache: 0 entries"), "{text}");
    }

    #[test]
    fn argument_parsers() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(DAY * 7));
        assert_eq!(parse_duration("1d12h"), Ok(DAY + HOUR * 12));
        assert_eq!(parse_duration("2w"), Ok(DAY * 14));
        for bad in ["3x", "", "10", "d", "1.5h", "-1d", "h1"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("expected a number and a unit"), "{bad:?}: {e}");
        }
        assert!(parse_duration("99999999999999999w")
            .unwrap_err()
            .contains("too long"));
        assert_eq!(parse_keep("0"), Ok(0));
        assert_eq!(parse_keep("12"), Ok(12));
        assert!(parse_keep("abc").unwrap_err().contains("whole number"));
        assert!(parse_keep("-1").is_err());
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(2_700_000), "2.7 MB");
        assert_eq!(human_age(Duration::from_secs(59)), "59s");
        assert_eq!(human_age(DAY * 3), "3d");
    }
}
