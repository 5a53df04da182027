//! Where things live: the workspace, the cache outside the checkout, run directories.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cache root, outside the checkout so that clean clones (CI) reuse it:
/// `$KCOV_TESTBED_CACHE`, else `$XDG_CACHE_HOME/kcov-testbed`, else
/// `~/.cache/kcov-testbed`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("KCOV_TESTBED_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kcov-testbed");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("kcov-testbed")
}

/// The default kernel-config fragment directory of this checkout.
pub fn fragment_dir() -> PathBuf {
    workspace_root().join("kernel-config")
}

/// A fresh run directory under `target/testbed/runs/`.
pub fn new_run_dir() -> std::io::Result<PathBuf> {
    let base = workspace_root().join("target").join("testbed").join("runs");
    std::fs::create_dir_all(&base)?;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    for n in 0.. {
        let dir = base.join(format!("run-{ms}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("an unbounded counter always finds a free name")
}
