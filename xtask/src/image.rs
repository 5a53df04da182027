//! The guest initramfs: /init = guest agent, the user's `--include` files,
//! and the command to run (`-- CMD ARGS`).
//!
//! Boots keep it in a content-addressed cache ([`crate::paths::initramfs_cache_dir`]):
//! `<sha256 of its bytes>.cpio`, shared by every run that boots the same bytes (the builder is
//! deterministic, so the same inputs give the same entry). A run directory holds no copy; its
//! `run.json` names the entry (`"initramfs": {"sha256", "bytes", "path"}`).
//!
//! Entries appear only complete: written to a temporary file in the cache directory, synced,
//! then renamed over the final name, so concurrent boots of the same bytes and a boot killed
//! mid-write never leave a half entry under a digest name. An entry is trusted only when its
//! bytes are the ones just built. `<cache>/.lock` is held shared by a boot from the moment it
//! picks its entry until its `run.json` names it, and exclusively by `cargo xtask runs prune`
//! while it decides which entries no run names, so prune never takes an entry from under a boot.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::{Context, Result};
use images::{Include, Initramfs};
use sha2::{Digest, Sha256};

use kcov_wire::console::{render_argv, CMD_FILE};

use crate::lock;

/// The cache's lock file (see the module docs).
pub const CACHE_LOCK_FILE: &str = ".lock";
/// File name extension of cache entries.
pub const ENTRY_EXT: &str = "cpio";

/// The initramfs image for `agent`, `includes` and `cmd`.
fn image(agent: &Path, includes: &[Include], cmd: &[String]) -> Result<Initramfs> {
    let mut img = Initramfs::with_skeleton();
    let agent_bytes =
        std::fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    img.add_file("/init", agent_bytes, 0o755)?;
    for inc in includes {
        img.add_include(inc)?;
    }
    if !cmd.is_empty() {
        img.add_file(CMD_FILE, render_argv(cmd), 0o644)?;
    }
    Ok(img)
}

/// Builds the initramfs into `out`.
pub fn build(agent: &Path, includes: &[Include], cmd: &[String], out: &Path) -> Result<()> {
    image(agent, includes, cmd)?.write_file(out)?;
    Ok(())
}

/// Builds the initramfs in memory (cpio newc bytes).
pub fn build_bytes(agent: &Path, includes: &[Include], cmd: &[String]) -> Result<Vec<u8>> {
    Ok(image(agent, includes, cmd)?.to_bytes()?)
}

pub use coverage::run::InitramfsRef;

/// An initramfs in the cache, with its bytes at hand to write it again.
#[derive(Debug)]
pub struct CachedInitramfs {
    /// SHA-256 of the bytes (hex).
    pub sha256: String,
    /// `<cache>/<sha256>.cpio`.
    pub path: PathBuf,
    bytes: Vec<u8>,
}

/// The cache entry name of a digest.
pub fn entry_name(sha256: &str) -> String {
    format!("{sha256}.{ENTRY_EXT}")
}

/// The digest a cache entry's file name stands for (`<64 hex digits>.cpio`), else None.
pub fn entry_digest(file_name: &str) -> Option<&str> {
    let hex = file_name.strip_suffix(".cpio")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

/// True for a temporary file a writer of an entry leaves only when it is killed mid-write.
pub fn is_temp_file(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.contains(".tmp.")
}

/// The cache lock, shared (a boot picking its entry) or exclusive (prune), waiting for
/// conflicting holders. Released when the returned file is dropped.
pub fn lock_cache(dir: &Path, exclusive: bool) -> Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(CACHE_LOCK_FILE);
    let file = lock::open(&path, true).with_context(|| format!("opening {}", path.display()))?;
    lock::flock(&file, exclusive, true).with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Puts `bytes` into the cache in `dir` (unless an intact entry is there already: then its
/// modification time is refreshed, which keeps it through prune's grace period) and returns
/// the entry.
pub fn cache(dir: &Path, bytes: Vec<u8>) -> Result<CachedInitramfs> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let entry = CachedInitramfs {
        path: dir.join(entry_name(&sha256)),
        sha256,
        bytes,
    };
    if entry.intact() {
        File::options()
            .write(true)
            .open(&entry.path)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .with_context(|| format!("touching {}", entry.path.display()))?;
    } else {
        entry.write()?;
    }
    Ok(entry)
}

impl CachedInitramfs {
    /// What `run.json` records.
    pub fn reference(&self) -> InitramfsRef {
        InitramfsRef {
            sha256: self.sha256.clone(),
            bytes: self.bytes.len() as u64,
            path: self.path.clone(),
        }
    }

    /// Right before a runner reads it: writes the entry again when it was removed or changed
    /// since [`cache`] (someone cleared the cache); true when it had to.
    pub fn ensure_present(&self) -> Result<bool> {
        if self.intact() {
            return Ok(false);
        }
        self.write()?;
        Ok(true)
    }

    /// The entry's file holds exactly our bytes.
    fn intact(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.is_file() && m.len() == self.len())
            && std::fs::read(&self.path).is_ok_and(|b| b == self.bytes)
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Never true for a built image (it has at least /init); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes the entry atomically: a temporary file of this writer alone, synced, renamed.
    fn write(&self) -> Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{}",
            entry_name(&self.sha256),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = File::options().write(true).create_new(true).open(&tmp)?;
            f.write_all(&self.bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow::Error::new(e).context(format!("writing {}", self.path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(dir: &Path) -> PathBuf {
        let p = dir.join("agent");
        std::fs::write(&p, b"\x7fELF not really an agent").unwrap();
        p
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != CACHE_LOCK_FILE)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn same_inputs_give_one_entry_named_by_the_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let cache_dir = tmp.path().join("cache");
        let agent = agent(tmp.path());
        let cmd = vec!["/bin/x".to_string()];
        let a = cache(&cache_dir, build_bytes(&agent, &[], &cmd).unwrap()).unwrap();
        let b = cache(&cache_dir, build_bytes(&agent, &[], &cmd).unwrap()).unwrap();
        assert_eq!(a.path, b.path);
        assert_eq!(entries(&cache_dir), [entry_name(&a.sha256)]);
        let bytes = std::fs::read(&a.path).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), a.sha256);
        assert_eq!(
            entry_digest(&entry_name(&a.sha256)),
            Some(a.sha256.as_str())
        );
        assert_eq!(
            a.reference(),
            InitramfsRef {
                sha256: a.sha256.clone(),
                bytes: bytes.len() as u64,
                path: a.path.clone()
            }
        );
        // Another command is another image.
        let c = cache(&cache_dir, build_bytes(&agent, &[], &[]).unwrap()).unwrap();
        assert_ne!(c.sha256, a.sha256);
        assert_eq!(entries(&cache_dir).len(), 2);
    }

    #[test]
    fn a_damaged_entry_is_replaced_and_a_removed_one_written_again() {
        let tmp = tempfile::tempdir().unwrap();
        let cache_dir = tmp.path().join("cache");
        let bytes = build_bytes(&agent(tmp.path()), &[], &[]).unwrap();
        let e = cache(&cache_dir, bytes.clone()).unwrap();
        // A file under the digest name with other bytes (same length) is not trusted.
        let mut bad = bytes.clone();
        bad[100] ^= 0xff;
        std::fs::write(&e.path, &bad).unwrap();
        let e = cache(&cache_dir, bytes.clone()).unwrap();
        assert_eq!(std::fs::read(&e.path).unwrap(), bytes);
        // Removed between build and boot: written again before the runner reads it.
        assert!(!e.ensure_present().unwrap());
        std::fs::remove_file(&e.path).unwrap();
        assert!(e.ensure_present().unwrap());
        assert_eq!(std::fs::read(&e.path).unwrap(), bytes);
        // No temporary file is left behind.
        assert_eq!(entries(&cache_dir), [entry_name(&e.sha256)]);
    }

    #[test]
    fn reuse_refreshes_the_entry_time() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = build_bytes(&agent(tmp.path()), &[], &[]).unwrap();
        let e = cache(tmp.path(), bytes.clone()).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(86_400);
        File::options()
            .write(true)
            .open(&e.path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        cache(tmp.path(), bytes).unwrap();
        let age = std::fs::metadata(&e.path)
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap_or_default();
        assert!(age.as_secs() < 60, "{age:?}");
    }

    #[test]
    fn entry_names() {
        let d = "ab".repeat(32);
        assert_eq!(entry_digest(&format!("{d}.cpio")), Some(d.as_str()));
        assert_eq!(entry_digest(&format!("{}.cpio", "AB".repeat(32))), None);
        assert_eq!(entry_digest(&format!("{d}.cpi")), None);
        assert_eq!(entry_digest("abc.cpio"), None);
        assert!(is_temp_file(&format!(".{d}.cpio.tmp.12.0")));
        assert!(!is_temp_file(&format!("{d}.cpio")));
        assert!(!is_temp_file(CACHE_LOCK_FILE));
    }
}
