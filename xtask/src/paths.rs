//! Where things live: the workspace (and the cargo that builds in it), the cache outside
//! the checkout, run directories.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo that runs xtask (`$CARGO`, else `cargo` on PATH), in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// `cargo build --quiet --release` in the workspace root, for the packages and
/// targets `args` select.
pub fn cargo_build_release(args: &[&str]) -> Command {
    let mut c = cargo();
    c.args(["build", "--quiet", "--release"]).args(args);
    c
}

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

/// Where run directories go: `$KCOV_TESTBED_RUNS`, else `target/testbed/runs/` of the
/// workspace. A fresh one is made by [`crate::runs::create`].
pub fn runs_dir() -> PathBuf {
    match std::env::var_os("KCOV_TESTBED_RUNS").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("target").join("testbed").join("runs"),
    }
}

/// The content-addressed initramfs cache (`<sha256>.cpio` entries, see [`crate::image`]):
/// `$KCOV_TESTBED_INITRAMFS_CACHE`, else `initramfs/` under [`cache_root`]. The override lets
/// tests use a cache of their own while sharing the (expensive) kernel cache.
pub fn initramfs_cache_dir() -> PathBuf {
    match std::env::var_os("KCOV_TESTBED_INITRAMFS_CACHE").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => cache_root().join("initramfs"),
    }
}
