//! `cargo xtask kernel`: the kcov guest kernel, built out of tree from Debian's
//! linux-source-6.12 (default) or a developer's tree, configured from
//! `kernel-config/*.config` on top of tinyconfig, and cached by content.
//!
//! Cache layout (under [`paths::cache_root`]):
//! - `src/linux-source-6.12-<debian version>/`: the extracted Debian tarball;
//! - `build/<source id>/`: the out-of-tree build directory (`make O=`), kept so
//!   a changed fragment rebuilds incrementally; `build/<source id>.lock` serialises builds;
//! - `kernels/<key>/`: bzImage, vmlinux, config, kernel.json, where key =
//!   sha256(recipe version, source identity, fragment names and contents,
//!   compiler and linker versions). A directory appears only complete (rename).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::deps;
use crate::paths;
use crate::progress::{fmt_dur, Progress};

/// Bump when the build recipe changes in a way that changes the output.
const RECIPE_VERSION: &str = "kcov-testbed kernel recipe 1";
/// The default fragments, merged in this order.
pub const DEFAULT_FRAGMENTS: &[&str] = &[
    "base.config",
    "kcov.config",
    "vhost.config",
    "vsock.config",
    "debug-info.config",
];
const DEBIAN_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const DEBIAN_TOPDIR: &str = "linux-source-6.12";

/// What a fragment line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// `CONFIG_X=value`
    Value(String),
    /// `# CONFIG_X is not set`
    NotSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub option: String,
    pub want: Want,
    /// `file:line` where the requirement comes from.
    pub origin: String,
}

/// A parsed config fragment.
#[derive(Clone, Debug)]
pub struct Fragment {
    pub path: PathBuf,
    pub name: String,
    pub text: String,
    pub requirements: Vec<Requirement>,
}

impl Fragment {
    pub fn load(path: &Path) -> Result<Fragment> {
        let text = fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read config fragment {}: {e}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let requirements = parse_fragment(&name, &text)?;
        // merge_config.sh runs in the build directory: a relative path must not reach it.
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        Ok(Fragment {
            path,
            name,
            text,
            requirements,
        })
    }
}

fn valid_option(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Parses a Kconfig fragment: `CONFIG_X=value`, `# CONFIG_X is not set`,
/// comments and blank lines. Anything else is an error naming the line.
pub fn parse_fragment(name: &str, text: &str) -> Result<Vec<Requirement>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let origin = format!("{name}:{}", i + 1);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if let Some(opt) = comment.strip_suffix(" is not set") {
                if valid_option(opt) {
                    out.push(Requirement {
                        option: opt.to_string(),
                        want: Want::NotSet,
                        origin,
                    });
                }
            }
            continue;
        }
        match line.split_once('=') {
            Some((opt, value)) if valid_option(opt) && !value.is_empty() => out.push(Requirement {
                option: opt.to_string(),
                want: Want::Value(value.to_string()),
                origin,
            }),
            _ => bail!("{origin}: not a Kconfig line (expected CONFIG_NAME=value or '# CONFIG_NAME is not set'): {line}"),
        }
    }
    Ok(out)
}

/// Parses a .config into option → value ("n" for "is not set").
pub fn parse_dotconfig(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(opt) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            map.insert(opt.to_string(), "n".to_string());
        } else if let Some((opt, value)) = line.split_once('=') {
            if valid_option(opt) {
                map.insert(opt.to_string(), value.to_string());
            }
        }
    }
    map
}

/// A fragment requirement that the final .config does not meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub requirement: Requirement,
    /// The value in .config, None when the option is absent.
    pub actual: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.requirement;
        let wanted = match &r.want {
            Want::Value(v) => format!("{}={v}", r.option),
            Want::NotSet => format!("{} unset", r.option),
        };
        match &self.actual {
            None => write!(f, "{}: {wanted} is not in the final .config (unknown to this kernel, or its dependencies are not met)", r.origin),
            Some(v) => write!(f, "{}: {wanted} became {}={v} after olddefconfig (a dependency is missing)", r.origin, r.option),
        }
    }
}

/// Checks every requirement of the fragments against a final .config. Later
/// fragments override earlier ones for the same option, as merge_config does.
pub fn verify_config(fragments: &[Fragment], dotconfig: &str) -> Vec<Mismatch> {
    let config = parse_dotconfig(dotconfig);
    let mut last: BTreeMap<&str, &Requirement> = BTreeMap::new();
    for req in fragments.iter().flat_map(|f| &f.requirements) {
        last.insert(&req.option, req);
    }
    let mut out = Vec::new();
    for req in last.values() {
        let actual = config.get(&req.option);
        let ok = match (&req.want, actual) {
            (Want::Value(v), Some(a)) => v == a,
            (Want::Value(_), None) => false,
            (Want::NotSet, None) => true,
            (Want::NotSet, Some(a)) => a == "n",
        };
        if !ok {
            out.push(Mismatch {
                requirement: (*req).clone(),
                actual: actual.cloned(),
            });
        }
    }
    out.sort_by(|a, b| a.requirement.origin.cmp(&b.requirement.origin));
    out
}

/// Options for [`build`].
#[derive(Clone, Debug, Default)]
pub struct KernelOpts {
    /// A developer's kernel tree; None = Debian's linux-source-6.12.
    pub src: Option<PathBuf>,
    /// Fragment files; empty = the default set from `kernel-config/`.
    pub fragments: Vec<PathBuf>,
    /// Extra fragments merged after the defaults.
    pub extra_fragments: Vec<PathBuf>,
    /// make -j; 0 = number of CPUs.
    pub jobs: usize,
}

/// Metadata stored next to a cached kernel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelMeta {
    pub key: String,
    pub source: String,
    pub fragments: Vec<String>,
    pub compiler: String,
    pub release: String,
    pub build_seconds: f64,
    pub bzimage_bytes: u64,
    pub vmlinux_bytes: u64,
}

/// Where one `build` call's time went, for `cargo xtask bench loop` (written as JSON to
/// `$KCOV_TESTBED_KERNEL_TIMES` when that is set).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BuildTimes {
    pub key: String,
    /// Found in the cache: no make ran.
    pub cached: bool,
    /// Fragments, source identity, toolchain and the cache lookup.
    pub identity_s: f64,
    /// tinyconfig, fragments, olddefconfig and the check (0 when the build directory's
    /// configuration was reused).
    pub configure_s: f64,
    pub config_reused: bool,
    pub make_s: f64,
    /// Copying the results into the cache.
    pub publish_s: f64,
    pub total_s: f64,
}

/// Where [`build`] writes its [`BuildTimes`] when set.
pub const TIMES_VAR: &str = "KCOV_TESTBED_KERNEL_TIMES";

/// The make targets of a build.
pub const MAKE_TARGETS: &[&str] = &["bzImage", "vmlinux"];

/// A built kernel in the cache.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    pub config: PathBuf,
    pub meta: KernelMeta,
    /// True when it came from the cache without running make.
    pub cached: bool,
    /// Where the time went (set by [`build`]).
    pub times: BuildTimes,
}

enum Source {
    Debian { version: String },
    Tree { dir: PathBuf },
}

impl Source {
    fn resolve(src: Option<&Path>) -> Result<Source> {
        let Some(dir) = src else {
            deps::ensure_packages(&[deps::KERNEL_SOURCE_PACKAGE], "the default kernel source")?;
            let version = deps::package_version(deps::KERNEL_SOURCE_PACKAGE)
                .ok_or_else(|| anyhow!("{} is not installed", deps::KERNEL_SOURCE_PACKAGE))?;
            if !Path::new(DEBIAN_TARBALL).is_file() {
                bail!("{DEBIAN_TARBALL} is missing although {} is installed; reinstall it: apt-get install --reinstall {}", deps::KERNEL_SOURCE_PACKAGE, deps::KERNEL_SOURCE_PACKAGE);
            }
            return Ok(Source::Debian { version });
        };
        if !dir.exists() {
            bail!("--kernel-src {}: no such directory", dir.display());
        }
        if !dir.is_dir() {
            bail!("--kernel-src {}: not a directory", dir.display());
        }
        for f in ["Makefile", "Kconfig", "arch/x86/Kconfig"] {
            if !dir.join(f).is_file() {
                bail!(
                    "--kernel-src {}: not an x86 Linux source tree (no {f})",
                    dir.display()
                );
            }
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("--kernel-src {}", dir.display()))?;
        Ok(Source::Tree { dir })
    }

    /// A string that changes whenever the source content changes, and for a git tree the
    /// state it was computed from.
    fn identity(&self) -> Result<(String, Option<GitState>)> {
        match self {
            Source::Debian { version } => Ok((
                format!("debian {} {version}", deps::KERNEL_SOURCE_PACKAGE),
                None,
            )),
            Source::Tree { dir } => tree_identity(dir),
        }
    }

    /// Names the build directory: one per source location.
    fn build_id(&self) -> String {
        match self {
            Source::Debian { version } => sanitize(&format!("debian-{DEBIAN_TOPDIR}-{version}")),
            Source::Tree { dir } => format!(
                "tree-{}",
                &sha256_hex(dir.to_string_lossy().as_bytes())[..16]
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Debian { version } => {
                format!("Debian {} {version}", deps::KERNEL_SOURCE_PACKAGE)
            }
            Source::Tree { dir } => dir.display().to_string(),
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn command_output(cmd: &mut Command) -> Option<Vec<u8>> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then_some(out.stdout)
}

/// A git tree's state: its HEAD commit and every path `git status` lists (changed, staged,
/// untracked, deleted) with a hash of what the build would read there now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    pub head: String,
    /// Path (relative to the tree) → SHA-256 of its content now; `-` when it is gone.
    pub changes: BTreeMap<String, String>,
}

impl GitState {
    /// One `git rev-parse` and one `git status`, then a hash of each file it lists. `git
    /// status` compares files by the index's cached stat data (only files whose size or
    /// mtime changed are read) and writes refreshed entries back; with git's untracked cache
    /// (`core.untrackedCache`, kept in the index, invalidated by directory mtimes) it also
    /// skips the walk of unchanged directories: in a kernel tree, 0.3-0.4 s instead of
    /// 0.9 s for `git diff HEAD` plus `git ls-files --others`. Untracked files are listed one
    /// by one (`status.showUntrackedFiles=all`, the form the untracked cache serves).
    /// None when `dir` is not a git work tree.
    fn of(dir: &Path) -> Option<GitState> {
        use std::os::unix::ffi::OsStrExt;
        let git = |args: &[&str]| command_output(Command::new("git").arg("-C").arg(dir).args(args));
        let head = String::from_utf8_lossy(&git(&["rev-parse", "HEAD"])?)
            .trim()
            .to_string();
        let status = git(&[
            "-c",
            "core.untrackedCache=true",
            "-c",
            "status.showUntrackedFiles=all",
            "status",
            "--porcelain=v1",
            "-z",
            "--no-renames",
        ])?;
        let mut changes = BTreeMap::new();
        // Each entry is `XY PATH` (no second path without renames).
        for entry in status.split(|&b| b == 0).filter(|e| e.len() > 3) {
            let rel = &entry[3..];
            let path = dir.join(std::ffi::OsStr::from_bytes(rel));
            changes.insert(
                String::from_utf8_lossy(rel).into_owned(),
                content_hash(&path),
            );
        }
        Some(GitState { head, changes })
    }

    /// The paths whose content differs between two states of the same tree: those whose
    /// listed hashes differ, and (another HEAD) those `git diff --name-only` names between
    /// the commits. None when git cannot tell.
    fn changed_since(&self, old: &GitState, dir: &Path) -> Option<Vec<String>> {
        let mut paths: Vec<String> = self
            .changes
            .keys()
            .chain(old.changes.keys())
            .filter(|p| self.changes.get(*p) != old.changes.get(*p))
            .cloned()
            .collect();
        if self.head != old.head {
            let out = command_output(Command::new("git").arg("-C").arg(dir).args([
                "diff",
                "--name-only",
                "-z",
                "--no-renames",
                &old.head,
                &self.head,
            ]))?;
            paths.extend(
                out.split(|&b| b == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            );
        }
        paths.sort();
        paths.dedup();
        Some(paths)
    }
}

/// Whether a changed file can leave a build directory's configuration as it was: C and
/// assembly sources and headers outside `scripts/` and `tools/` (Kconfig reads none of them;
/// its `$(shell)` probes run the compiler and programs from those two directories).
fn config_neutral(path: &str) -> bool {
    !path.starts_with("scripts/")
        && !path.starts_with("tools/")
        && [".c", ".h", ".S"].iter().any(|e| path.ends_with(e))
}

/// The build directory file that records what its `.config` was made from.
const CONFIG_STAMP: &str = ".testbed-config.json";

/// What a build directory's `.config` was made from. A later build with the same fragments,
/// toolchain and source location reuses the `.config` (no tinyconfig, merge, olddefconfig,
/// and no syncconfig in make) when the source changed only in [`config_neutral`] files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ConfigStamp {
    /// Recipe, fragment names and contents, toolchain, and the source: its location for a git
    /// tree (whose content is `git`), else its whole identity.
    inputs: String,
    git: Option<GitState>,
    /// SHA-256 of the `.config` made.
    dotconfig: String,
}

impl ConfigStamp {
    fn new(
        source: &Source,
        identity: &str,
        git: Option<GitState>,
        fragments: &[Fragment],
        toolchain: &str,
    ) -> ConfigStamp {
        let src = match (source, &git) {
            (Source::Tree { dir }, Some(_)) => format!("git {}", dir.display()),
            _ => identity.to_string(),
        };
        ConfigStamp {
            inputs: cache_key(&src, fragments, toolchain),
            git,
            dotconfig: String::new(),
        }
    }

    /// Whether the `.config` made under `old` serves this build of the tree at `dir`.
    fn reuses(&self, old: &ConfigStamp, dir: &Path) -> bool {
        if self.inputs != old.inputs {
            return false;
        }
        match (&self.git, &old.git) {
            (None, None) => true,
            (Some(now), Some(then)) => now
                .changed_since(then, dir)
                .is_some_and(|paths| paths.iter().all(|p| config_neutral(p))),
            _ => false,
        }
    }
}

/// A file's content hash for [`GitState`] (a symlink's target; `-` when absent).
fn content_hash(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Err(_) => "-".into(),
        Ok(m) if m.file_type().is_symlink() => fs::read_link(path)
            .map(|t| format!("link {}", sha256_hex(t.as_os_str().as_encoded_bytes())))
            .unwrap_or_else(|_| "unreadable link".into()),
        Ok(m) if m.is_dir() => "directory".into(),
        Ok(_) => fs::read(path)
            .map(|d| sha256_hex(&d))
            .unwrap_or_else(|e| format!("unreadable {e}")),
    }
}

/// Identity of a developer's tree: the git commit plus a hash of every changed, staged,
/// untracked or deleted file's content ([`GitState`]), or (no git) a hash of every file's
/// path, size and modification time.
fn tree_identity(dir: &Path) -> Result<(String, Option<GitState>)> {
    if let Some(state) = GitState::of(dir) {
        let mut h = Sha256::new();
        for (path, hash) in &state.changes {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(hash.as_bytes());
            h.update([0]);
        }
        let text = format!(
            "git {} {} changes {}",
            dir.display(),
            state.head,
            &hex::encode(h.finalize())[..16]
        );
        return Ok((text, Some(state)));
    }
    let mut hasher = Sha256::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0u64;
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(meta) = e.metadata() else { continue };
            if e.file_name() == ".git" {
                continue;
            }
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                let rel = e.path();
                hasher.update(rel.to_string_lossy().as_bytes());
                hasher.update(meta.len().to_le_bytes());
                hasher.update(meta.mtime().to_le_bytes());
                hasher.update(meta.mtime_nsec().to_le_bytes());
            }
        }
    }
    let text = format!(
        "tree {} files {files} meta {}",
        dir.display(),
        &hex::encode(hasher.finalize())[..16]
    );
    Ok((text, None))
}

/// The compiler and linker that build the kernel (part of the cache key).
pub fn toolchain_identity() -> String {
    let first_line = |cmd: &str| {
        command_output(Command::new(cmd).arg("--version"))
            .map(|o| {
                String::from_utf8_lossy(&o)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_else(|| format!("{cmd}: not found"))
    };
    format!("{} / {}", first_line("gcc"), first_line("ld"))
}

/// Loads the fragments named by the options (defaults from `kernel-config/`).
pub fn load_fragments(opts: &KernelOpts) -> Result<Vec<Fragment>> {
    let mut paths: Vec<PathBuf> = if opts.fragments.is_empty() {
        DEFAULT_FRAGMENTS
            .iter()
            .map(|f| paths::fragment_dir().join(f))
            .collect()
    } else {
        opts.fragments.clone()
    };
    paths.extend(opts.extra_fragments.iter().cloned());
    paths.iter().map(|p| Fragment::load(p)).collect()
}

/// The cache key of a kernel.
fn cache_key(identity: &str, fragments: &[Fragment], toolchain: &str) -> String {
    let mut h = Sha256::new();
    for part in [RECIPE_VERSION, identity, toolchain] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for f in fragments {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.text.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..24].to_string()
}

/// The complete kernel in cache directory `dir` (metadata and every file), if it is one.
pub fn cached_kernel(dir: &Path, cached: bool) -> Option<Kernel> {
    let meta: KernelMeta = serde_json::from_slice(&fs::read(dir.join("kernel.json")).ok()?).ok()?;
    let k = Kernel {
        dir: dir.to_path_buf(),
        bzimage: dir.join("bzImage"),
        vmlinux: dir.join("vmlinux"),
        config: dir.join("config"),
        times: BuildTimes {
            key: meta.key.clone(),
            cached,
            ..BuildTimes::default()
        },
        meta,
        cached,
    };
    (k.bzimage.is_file() && k.vmlinux.is_file() && k.config.is_file()).then_some(k)
}

/// An exclusive advisory lock on a file, released on drop.
struct FileLock(fs::File);

impl FileLock {
    fn acquire(path: &Path, what: &str) -> Result<FileLock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        // SAFETY: flock on a valid open fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!("waiting for another {what} to finish ({})", path.display());
            // SAFETY: as above, blocking.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!(
                    "locking {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own fd.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Extracts Debian's tarball once into the cache.
fn debian_source_dir(version: &str, progress: &mut Progress) -> Result<PathBuf> {
    let src_root = paths::cache_root().join("src");
    fs::create_dir_all(&src_root).with_context(|| format!("creating {}", src_root.display()))?;
    let dir = src_root.join(sanitize(&format!("{DEBIAN_TOPDIR}-{version}")));
    if dir.join(".testbed-complete").is_file() {
        return Ok(dir);
    }
    let _lock = FileLock::acquire(&src_root.join("extract.lock"), "source extraction")?;
    if dir.join(".testbed-complete").is_file() {
        return Ok(dir);
    }
    progress.phase("kernel: extract source");
    progress.step(DEBIAN_TARBALL);
    let tmp = src_root.join(format!(".extract-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let status = Command::new("tar")
        .arg("-xf")
        .arg(DEBIAN_TARBALL)
        .arg("-C")
        .arg(&tmp)
        .status()
        .context("running tar")?;
    if !status.success() {
        let _ = fs::remove_dir_all(&tmp);
        bail!("extracting {DEBIAN_TARBALL} failed (disk full?)");
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(tmp.join(DEBIAN_TOPDIR), &dir).context("moving the extracted source into place")?;
    let _ = fs::remove_dir_all(&tmp);
    fs::write(dir.join(".testbed-complete"), version)?;
    Ok(dir)
}

/// Debian's extracted linux-source-6.12 (extracted into the cache on first use).
pub fn debian_source() -> Result<PathBuf> {
    let Source::Debian { version } = Source::resolve(None)? else {
        bail!("no Debian source without --kernel-src");
    };
    let mut progress = Progress::new("kernel: source");
    let dir = debian_source_dir(&version, &mut progress);
    progress.abandon();
    dir
}

/// The out-of-tree build directory (`make O=`) of a source: `src`, or Debian's when None.
pub fn build_dir(src: Option<&Path>) -> Result<PathBuf> {
    let id = Source::resolve(src)?.build_id();
    Ok(paths::cache_root().join("build").join(id))
}

/// Runs make, logging to `log`, feeding each output line to `on_line`.
/// On failure the error carries the last lines of output.
fn run_make(
    src: &Path,
    build: &Path,
    args: &[String],
    log: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<()> {
    let mut logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(logf, "$ make {}", args.join(" "))?;
    let mut child = Command::new("make")
        .arg("-C")
        .arg(src)
        .arg(format!("O={}", build.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running make (is it installed?)")?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    let tx2 = tx.clone();
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let out_thread = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut tail = std::collections::VecDeque::new();
    for line in rx.iter() {
        writeln!(logf, "{line}")?;
        on_line(&line);
        if tail.len() == 25 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let _ = out_thread.join();
    let _ = err_thread.join();
    let status = child.wait()?;
    if !status.success() {
        let tail: Vec<String> = tail.into_iter().collect();
        bail!(
            "make {} failed ({status}); last output:\n{}\nfull log: {}",
            args.join(" "),
            tail.join("\n"),
            log.display()
        );
    }
    Ok(())
}

fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Builds (or finds in the cache) the guest kernel.
/// The cache key [`build`] uses for `opts`, computed without building (CI caches the kernel
/// directory under it).
pub fn cache_key_for(opts: &KernelOpts) -> Result<String> {
    let fragments = load_fragments(opts)?;
    let source = Source::resolve(opts.src.as_deref())?;
    Ok(cache_key(
        &source.identity()?.0,
        &fragments,
        &toolchain_identity(),
    ))
}

pub fn build(opts: &KernelOpts) -> Result<Kernel> {
    let start = Instant::now();
    let mut k = build_timed(opts, start)?;
    k.times.total_s = start.elapsed().as_secs_f64();
    if let Some(path) = std::env::var_os(TIMES_VAR).filter(|p| !p.is_empty()) {
        fs::write(&path, serde_json::to_vec_pretty(&k.times)?)
            .with_context(|| format!("writing ${TIMES_VAR}"))?;
    }
    Ok(k)
}

fn build_timed(opts: &KernelOpts, start: Instant) -> Result<Kernel> {
    let fragments = load_fragments(opts)?;
    let source = Source::resolve(opts.src.as_deref())?;
    let (identity, git_state) = source.identity()?;
    let toolchain = toolchain_identity();
    let key = cache_key(&identity, &fragments, &toolchain);
    let stamp = ConfigStamp::new(&source, &identity, git_state, &fragments, &toolchain);
    let kernels = paths::cache_root().join("kernels");
    let out_dir = kernels.join(&key);
    if let Some(mut k) = cached_kernel(&out_dir, true) {
        eprintln!(
            "kernel: cached {} ({}, key {key}) in {}",
            k.meta.release,
            source.describe(),
            fmt_dur(start.elapsed())
        );
        k.times.identity_s = start.elapsed().as_secs_f64();
        return Ok(k);
    }
    let identity_s = start.elapsed().as_secs_f64();

    deps::ensure_packages(deps::KERNEL_BUILD_PACKAGES, "building the kernel")?;
    let build_root = paths::cache_root().join("build");
    fs::create_dir_all(&build_root)
        .with_context(|| format!("creating {}", build_root.display()))?;
    let build_id = source.build_id();
    let _lock = FileLock::acquire(&build_root.join(format!("{build_id}.lock")), "kernel build")?;
    // Someone else may have built it while we waited.
    if let Some(mut k) = cached_kernel(&out_dir, true) {
        k.times.identity_s = identity_s;
        return Ok(k);
    }
    let mut progress = Progress::new("kernel: prepare");
    let result = build_locked(
        &source,
        &fragments,
        &build_root.join(&build_id),
        stamp,
        opts,
        &mut progress,
    );
    let (build_dir, release, mut times) = match result {
        Ok(v) => v,
        Err(e) => {
            progress.abandon();
            return Err(e);
        }
    };

    // Publish atomically: copy into a temporary directory, then rename.
    let publish = Instant::now();
    fs::create_dir_all(&kernels)?;
    let tmp = kernels.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    for (from, to) in [
        ("arch/x86/boot/bzImage", "bzImage"),
        ("vmlinux", "vmlinux"),
        (".config", "config"),
    ] {
        fs::copy(build_dir.join(from), tmp.join(to))
            .with_context(|| format!("copying {from} into the cache"))?;
    }
    let size = |p: &str| fs::metadata(tmp.join(p)).map(|m| m.len()).unwrap_or(0);
    let meta = KernelMeta {
        key: key.clone(),
        source: identity,
        fragments: fragments
            .iter()
            .map(|f| f.path.display().to_string())
            .collect(),
        compiler: toolchain,
        release,
        build_seconds: progress.elapsed().as_secs_f64(),
        bzimage_bytes: size("bzImage"),
        vmlinux_bytes: size("vmlinux"),
    };
    fs::write(tmp.join("kernel.json"), serde_json::to_vec_pretty(&meta)?)?;
    let _ = fs::remove_dir_all(&out_dir);
    fs::rename(&tmp, &out_dir).context("publishing the kernel into the cache")?;
    times.identity_s = identity_s;
    times.publish_s = publish.elapsed().as_secs_f64();
    progress.finish(&format!(
        "built {} (vmlinux {} MiB) into {} (identity {:.1}s, configure {}, make {:.1}s, publish {:.1}s)",
        meta.release,
        meta.vmlinux_bytes >> 20,
        out_dir.display(),
        times.identity_s,
        if times.config_reused {
            "reused".to_string()
        } else {
            format!("{:.1}s", times.configure_s)
        },
        times.make_s,
        times.publish_s,
    ));
    let mut k = cached_kernel(&out_dir, false)
        .ok_or_else(|| anyhow!("kernel vanished from the cache at {}", out_dir.display()))?;
    times.key = key;
    k.times = times;
    Ok(k)
}

fn build_locked(
    source: &Source,
    fragments: &[Fragment],
    build_dir: &Path,
    mut stamp: ConfigStamp,
    opts: &KernelOpts,
    progress: &mut Progress,
) -> Result<(PathBuf, String, BuildTimes)> {
    let mut times = BuildTimes::default();
    let configure = Instant::now();
    let src_dir = match source {
        Source::Debian { version } => debian_source_dir(version, progress)?,
        Source::Tree { dir } => dir.clone(),
    };
    let build_dir = build_dir.to_path_buf();
    fs::create_dir_all(&build_dir)?;
    let log = build_dir.join("testbed-build.log");
    let _ = fs::remove_file(&log);

    let stamp_path = build_dir.join(CONFIG_STAMP);
    let old: Option<ConfigStamp> = fs::read(&stamp_path)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok());
    let current = fs::read_to_string(build_dir.join(".config")).ok();
    times.config_reused = match (&old, &current) {
        (Some(old), Some(config)) => {
            old.dotconfig == sha256_hex(config.as_bytes())
                && stamp.reuses(old, &src_dir)
                && verify_config(fragments, config).is_empty()
        }
        _ => false,
    };
    if !times.config_reused {
        // A configuration that fails halfway must not look reusable.
        let _ = fs::remove_file(&stamp_path);
        configure_build(&src_dir, &build_dir, fragments, &log, progress)?;
        stamp.dotconfig = sha256_hex(&fs::read(build_dir.join(".config"))?);
        let tmp = build_dir.join(format!("{CONFIG_STAMP}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(&stamp)?)?;
        fs::rename(&tmp, &stamp_path)?;
    }
    times.configure_s = configure.elapsed().as_secs_f64();

    let make = Instant::now();
    progress.phase("kernel: build");
    // Beside the build directory: `<build id>.lines`, make's line count last time.
    let mut lines_file = build_dir.clone().into_os_string();
    lines_file.push(".lines");
    let lines_file = PathBuf::from(lines_file);
    let expected: Option<u64> = fs::read_to_string(&lines_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let jobs = if opts.jobs == 0 { nproc() } else { opts.jobs };
    let mut count = 0u64;
    let mut args = vec![format!("-j{jobs}")];
    args.extend(MAKE_TARGETS.iter().map(|t| t.to_string()));
    run_make(&src_dir, &build_dir, &args, &log, |line| {
        count += 1;
        let target = line.trim();
        match expected {
            Some(total) if total > 0 => {
                let pct = (count * 100 / total).min(99);
                progress.step(&format!("~{pct}% {target}"))
            }
            _ => progress.step(&format!("step {count} {target}")),
        }
    })?;
    let _ = fs::write(&lines_file, count.to_string());
    times.make_s = make.elapsed().as_secs_f64();
    let release = fs::read_to_string(build_dir.join("include/config/kernel.release"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Ok((build_dir, release, times))
}

/// tinyconfig, the fragments merged, olddefconfig, and every fragment option checked.
fn configure_build(
    src_dir: &Path,
    build_dir: &Path,
    fragments: &[Fragment],
    log: &Path,
    progress: &mut Progress,
) -> Result<()> {
    progress.phase("kernel: configure");
    progress.step("tinyconfig");
    run_make(src_dir, build_dir, &["tinyconfig".into()], log, |_| {})?;
    progress.step("merge fragments");
    let merge = src_dir.join("scripts/kconfig/merge_config.sh");
    let out = Command::new(&merge)
        .arg("-m")
        .arg("-O")
        .arg(build_dir)
        .arg(build_dir.join(".config"))
        .args(fragments.iter().map(|f| &f.path))
        .current_dir(build_dir)
        .env("KCONFIG_CONFIG", build_dir.join(".config"))
        .output()
        .with_context(|| format!("running {}", merge.display()))?;
    fs::OpenOptions::new()
        .append(true)
        .open(log)?
        .write_all(&out.stdout)?;
    if !out.status.success() {
        bail!(
            "merging config fragments failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    progress.step("olddefconfig");
    run_make(src_dir, build_dir, &["olddefconfig".into()], log, |_| {})?;
    let dotconfig = fs::read_to_string(build_dir.join(".config"))?;
    let mismatches = verify_config(fragments, &dotconfig);
    if !mismatches.is_empty() {
        let lines: Vec<String> = mismatches.iter().map(|m| m.to_string()).collect();
        bail!("kernel config check failed: {}", lines.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(name: &str, text: &str) -> Fragment {
        Fragment {
            path: PathBuf::from(name),
            name: name.into(),
            text: text.into(),
            requirements: parse_fragment(name, text).unwrap(),
        }
    }

    #[test]
    fn fragment_parsing() {
        let f = frag(
            "a.config",
            "# why\nCONFIG_A=y\n\n# CONFIG_B is not set\nCONFIG_C=\"str\"\n",
        );
        assert_eq!(f.requirements.len(), 3);
        assert_eq!(f.requirements[0].want, Want::Value("y".into()));
        assert_eq!(f.requirements[0].origin, "a.config:2");
        assert_eq!(f.requirements[1].want, Want::NotSet);
        assert_eq!(f.requirements[2].want, Want::Value("\"str\"".into()));
        let err = parse_fragment("b.config", "CONFIG_A=y\nFOO\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("b.config:2: not a Kconfig line"), "{err}");
        assert!(parse_fragment("c.config", "CONFIG_=y").is_err());
    }

    #[test]
    fn verify_reports_missing_and_changed_options() {
        let frags = [
            frag(
                "a.config",
                "CONFIG_A=y\nCONFIG_GONE=y\n# CONFIG_K is not set\nCONFIG_V=5\n",
            ),
            frag("b.config", "CONFIG_V=7\n# CONFIG_N is not set\n"),
        ];
        let dot = "CONFIG_A=y\nCONFIG_V=7\n# CONFIG_K is not set\nCONFIG_N=y\n";
        let m = verify_config(&frags, dot);
        let text: Vec<String> = m.iter().map(|m| m.to_string()).collect();
        assert_eq!(m.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("a.config:2: CONFIG_GONE=y is not in the final .config"),
            "{}",
            text[0]
        );
        assert!(
            text[1].starts_with("b.config:2: CONFIG_N unset became CONFIG_N=y"),
            "{}",
            text[1]
        );
        assert!(verify_config(&frags[1..], "CONFIG_V=7\n").is_empty());
    }

    #[test]
    fn cache_key_depends_on_every_input() {
        let f1 = [frag("a.config", "CONFIG_A=y\n")];
        let f2 = [frag("a.config", "CONFIG_A=n\n")];
        let base = cache_key("src1", &f1, "gcc 12");
        assert_eq!(base, cache_key("src1", &f1, "gcc 12"));
        assert_ne!(base, cache_key("src2", &f1, "gcc 12"));
        assert_ne!(base, cache_key("src1", &f2, "gcc 12"));
        assert_ne!(base, cache_key("src1", &f1, "gcc 13"));
    }

    #[test]
    fn default_fragments_parse_and_have_reasons() {
        for name in DEFAULT_FRAGMENTS {
            let path = paths::fragment_dir().join(name);
            let f = Fragment::load(&path).unwrap();
            assert!(!f.requirements.is_empty(), "{name} has no options");
            // Every option line is directly preceded by a comment saying why.
            let lines: Vec<&str> = f.text.lines().collect();
            for r in &f.requirements {
                let idx: usize = r.origin.rsplit(':').next().unwrap().parse().unwrap();
                let prev = lines[idx - 2].trim();
                assert!(
                    prev.starts_with('#') && !prev.ends_with("is not set"),
                    "{}: no reason comment above {}",
                    r.origin,
                    r.option
                );
            }
        }
    }

    /// Runs git in `dir` (a throwaway repository: name and mail given on the command line).
    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .expect("git (a clone of this repository has it)");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    }

    /// The stale-kernel guard: the cache key of a git tree changes with any change the
    /// build can see (one line, a staged change, an untracked or deleted file, an edit
    /// that keeps the size), two different edits never share a key, and a revert gives
    /// the old key back, so the old kernel is reused.
    #[test]
    fn a_changed_tree_never_reuses_a_stale_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let net_c = d.join("drivers/vhost/net.c");
        fs::create_dir_all(net_c.parent().unwrap()).unwrap();
        let original = "static void handle_tx_copy(void)\n{\n\tint sent_pkts = 0;\n}\n";
        fs::write(&net_c, original).unwrap();
        fs::write(d.join("Makefile"), "all:\n").unwrap();
        git(d, &["init", "-q"]);
        git(d, &["add", "-A"]);
        git(d, &["commit", "-q", "-m", "base"]);
        let frags = [frag("a.config", "CONFIG_A=y\n")];
        let key = || cache_key(&tree_identity(d).unwrap().0, &frags, "gcc 12");
        let base = key();
        assert_eq!(base, key(), "an unchanged tree keeps its key");

        let edit = |n: u32| original.replace("= 0;", &format!("= 0;\n\tsent_pkts += {n};"));
        fs::write(&net_c, edit(1)).unwrap();
        let one = key();
        assert_ne!(one, base, "a one-line change must change the key");
        fs::write(&net_c, edit(2)).unwrap();
        let two = key();
        assert_ne!(two, one, "two different edits must not share a key");
        assert_ne!(two, base);
        // The same size as the original, written within the same second.
        fs::write(&net_c, original.replace("= 0;", "= 1;")).unwrap();
        assert_ne!(
            key(),
            base,
            "an edit that keeps the size must change the key"
        );
        fs::write(&net_c, original).unwrap();
        assert_eq!(key(), base, "a reverted tree must get its old key back");

        fs::write(&net_c, edit(1)).unwrap();
        git(d, &["add", "drivers/vhost/net.c"]);
        assert_eq!(
            key(),
            one,
            "staged or not, the same content is the same kernel"
        );
        git(d, &["reset", "-q"]);
        fs::write(&net_c, original).unwrap();
        assert_eq!(key(), base);

        let new = d.join("drivers/vhost/new.h");
        fs::write(&new, "#define A 1\n").unwrap();
        let untracked = key();
        assert_ne!(untracked, base, "an untracked file must change the key");
        fs::write(&new, "#define A 2\n").unwrap();
        assert_ne!(
            key(),
            untracked,
            "an untracked file's content is part of the key"
        );
        fs::remove_file(&new).unwrap();
        assert_eq!(key(), base);

        fs::remove_file(&net_c).unwrap();
        assert_ne!(key(), base, "a deleted file must change the key");
        git(d, &["checkout", "-q", "--", "drivers/vhost/net.c"]);
        assert_eq!(key(), base);

        fs::write(&net_c, edit(1)).unwrap();
        git(d, &["commit", "-q", "-am", "edit"]);
        let committed = key();
        assert_ne!(committed, base, "a commit of a change must change the key");
        git(d, &["reset", "-q", "--hard", "HEAD~1"]);
        assert_eq!(
            key(),
            base,
            "going back to the old commit reuses the old kernel"
        );
    }

    /// The build directory's configuration is reused only while the tree changed in C
    /// sources and headers outside scripts/ and tools/, with the same fragments.
    #[test]
    fn configuration_is_reused_only_for_config_neutral_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (f, text) in [
            ("drivers/vhost/net.c", "int a;\n"),
            ("drivers/vhost/Kconfig", "config VHOST_NET\n"),
            ("scripts/x.c", "int s;\n"),
        ] {
            fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            fs::write(d.join(f), text).unwrap();
        }
        git(d, &["init", "-q"]);
        git(d, &["add", "-A"]);
        git(d, &["commit", "-q", "-m", "base"]);
        let source = Source::Tree {
            dir: d.to_path_buf(),
        };
        let frags = [frag("a.config", "CONFIG_A=y\n")];
        let stamp = |frags: &[Fragment]| {
            let (identity, state) = tree_identity(d).unwrap();
            ConfigStamp::new(&source, &identity, state, frags, "gcc 12")
        };
        let configured = stamp(&frags);
        assert!(stamp(&frags).reuses(&configured, d));
        fs::write(d.join("drivers/vhost/net.c"), "int a;\nint b;\n").unwrap();
        assert!(stamp(&frags).reuses(&configured, d), "a .c edit keeps it");
        fs::write(d.join("drivers/vhost/net.h"), "#define N\n").unwrap();
        assert!(
            stamp(&frags).reuses(&configured, d),
            "a new header keeps it"
        );
        let other = [frag("a.config", "CONFIG_A=n\n")];
        assert!(!stamp(&other).reuses(&configured, d), "other fragments");
        fs::write(
            d.join("drivers/vhost/Kconfig"),
            "config VHOST_NET\n\tbool\n",
        )
        .unwrap();
        assert!(!stamp(&frags).reuses(&configured, d), "a Kconfig edit");
        git(d, &["checkout", "-q", "--", "drivers/vhost/Kconfig"]);
        fs::write(d.join("scripts/x.c"), "int t;\n").unwrap();
        assert!(
            !stamp(&frags).reuses(&configured, d),
            "a change under scripts/"
        );
        git(d, &["checkout", "-q", "--", "scripts/x.c"]);
        assert!(stamp(&frags).reuses(&configured, d));
        // Commits: what changed between HEADs counts the same way.
        git(d, &["add", "-A"]);
        git(d, &["commit", "-q", "-m", "c only"]);
        assert!(
            stamp(&frags).reuses(&configured, d),
            "a commit of C changes"
        );
        fs::write(d.join("drivers/vhost/Kconfig"), "config VHOST\n").unwrap();
        git(d, &["commit", "-q", "-am", "kconfig"]);
        assert!(
            !stamp(&frags).reuses(&configured, d),
            "a commit of a Kconfig"
        );
        assert!(config_neutral("arch/x86/entry/entry_64.S"));
        assert!(!config_neutral("Makefile") && !config_neutral("tools/objtool/check.c"));
    }

    #[test]
    fn tree_identity_changes_with_content() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.c"), "x").unwrap();
        let a = tree_identity(dir.path()).unwrap().0;
        fs::write(dir.path().join("a.c"), "xy").unwrap();
        let b = tree_identity(dir.path()).unwrap().0;
        assert_ne!(a, b);
    }
}
