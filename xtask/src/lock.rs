//! Advisory file locks (`flock`) that mark run directories and the initramfs cache as in use.
//!
//! A lock belongs to the open file: it goes away when the file is closed, and with the process
//! however it ends (`kill -9` included), so a dead boot never leaves a run marked in use. Files
//! are opened close-on-exec, so QEMU and other children never inherit one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Opens the lock file `path`, creating it when `create`.
pub fn open(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .truncate(false)
        .open(path)
}

/// Locks `file`: shared (any number of holders) or exclusive (one, no shared holder). Waits
/// for conflicting holders when `wait`, else returns `Ok(false)` when one holds it.
pub fn flock(file: &File, exclusive: bool, wait: bool) -> io::Result<bool> {
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a valid open fd that `file` owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_exclude_an_exclusive_one_until_they_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let a = open(&path, true).unwrap();
        let b = open(&path, false).unwrap();
        assert!(flock(&a, false, false).unwrap());
        assert!(flock(&b, false, false).unwrap(), "two shared holders");
        let c = open(&path, false).unwrap();
        assert!(!flock(&c, true, false).unwrap(), "exclusive while shared");
        drop((a, b));
        assert!(flock(&c, true, false).unwrap());
        let d = open(&path, false).unwrap();
        assert!(!flock(&d, false, false).unwrap(), "shared while exclusive");
        assert_eq!(
            open(&dir.path().join("missing"), false).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
