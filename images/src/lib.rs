//! Initramfs (cpio "newc") builder for the testbed guest.
//!
//! The archive is deterministic: entries are written in path order with fixed
//! inode numbers, mtime 0 and uid/gid 0, so the same inputs give the same bytes
//! (and the same content hash). Parent directories are created implicitly.
//! The cpio encoding itself comes from the `cpio` crate.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cpio::newc::{self, ModeFileType};

/// Errors building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("include file not found: {0}")]
    IncludeNotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid guest path {0:?}: must be absolute, without '..', '.' or empty components")]
    BadGuestPath(String),
    #[error("invalid --include {0:?}: expected HOST_PATH or HOST_PATH:GUEST_PATH")]
    BadIncludeSpec(String),
    #[error("guest path {0} is used twice with different kinds (file vs directory)")]
    Conflict(String),
    #[error("{0} is too large for a cpio newc entry (over 4 GiB)")]
    TooLarge(PathBuf),
    #[error("writing the archive: {0}")]
    Write(#[from] io::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    CharDev { mode: u32, major: u32, minor: u32 },
    Symlink { target: String },
}

/// An initramfs being assembled: guest path → node.
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

/// One `--include HOST_PATH[:GUEST_PATH]` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Include {
    pub host: PathBuf,
    pub guest: String,
}

impl Include {
    /// Parses `HOST_PATH[:GUEST_PATH]`. Without a guest path the file lands at
    /// `/<file name>`. The host path must exist.
    pub fn parse(spec: &str) -> Result<Self, ImageError> {
        let (host, guest) = match spec.split_once(':') {
            Some((h, g)) => (h, Some(g)),
            None => (spec, None),
        };
        if host.is_empty() {
            return Err(ImageError::BadIncludeSpec(spec.to_string()));
        }
        let host = PathBuf::from(host);
        if fs::symlink_metadata(&host).is_err() {
            return Err(ImageError::IncludeNotFound(host));
        }
        let guest = match guest {
            Some(g) => g.to_string(),
            None => {
                let name = host
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| ImageError::BadIncludeSpec(spec.to_string()))?;
                format!("/{name}")
            }
        };
        normalize(&guest)?;
        Ok(Include { host, guest })
    }
}

/// Checks a guest path and returns it without the leading '/'.
fn normalize(path: &str) -> Result<String, ImageError> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| ImageError::BadGuestPath(path.to_string()))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty()
        || path.contains('\0')
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(ImageError::BadGuestPath(path.to_string()));
    }
    Ok(rest.to_string())
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// The skeleton every testbed guest needs: /dev/console (so the kernel
    /// gives /init a console), and mount points.
    pub fn with_skeleton() -> Self {
        let mut fs = Self::new();
        for dir in ["/dev", "/proc", "/sys", "/tmp", "/etc", "/bin"] {
            fs.add_dir(dir, 0o755).expect("static path is valid");
        }
        // include/uapi/linux/major.h: TTYAUX_MAJOR 5, /dev/console minor 1.
        fs.add_char_dev("/dev/console", 0o600, 5, 1)
            .expect("static path is valid");
        fs
    }

    fn parents(&mut self, rel: &str) -> Result<(), ImageError> {
        let mut acc = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            match self.nodes.get(&acc) {
                None => {
                    self.nodes.insert(acc.clone(), Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(ImageError::Conflict(format!("/{acc}"))),
            }
        }
        Ok(())
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), ImageError> {
        let rel = normalize(path)?;
        self.parents(&rel)?;
        match (self.nodes.get(&rel), &node) {
            (Some(Node::Dir { .. }), Node::Dir { .. }) | (None, _) => {}
            (Some(Node::Dir { .. }), _) | (Some(_), Node::Dir { .. }) => {
                return Err(ImageError::Conflict(path.to_string()))
            }
            (Some(_), _) => {}
        }
        self.nodes.insert(rel, node);
        Ok(())
    }

    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), ImageError> {
        self.insert(path, Node::Dir { mode })
    }

    pub fn add_file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), ImageError> {
        if u32::try_from(data.len()).is_err() {
            return Err(ImageError::TooLarge(PathBuf::from(path)));
        }
        self.insert(path, Node::File { data, mode })
    }

    pub fn add_char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), ImageError> {
        self.insert(path, Node::CharDev { mode, major, minor })
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a host file, or a host directory recursively, at `guest`.
    /// Permission bits are kept; symlinks are stored as symlinks.
    pub fn add_host_path(&mut self, host: &Path, guest: &str) -> Result<(), ImageError> {
        let read_err = |source| ImageError::Read {
            path: host.to_path_buf(),
            source,
        };
        let meta = fs::symlink_metadata(host).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ImageError::IncludeNotFound(host.to_path_buf())
            } else {
                read_err(e)
            }
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(host).map_err(read_err)?;
            return self.add_symlink(guest, &target.to_string_lossy());
        }
        if meta.is_dir() {
            self.add_dir(guest, mode)?;
            let mut children: Vec<_> = fs::read_dir(host)
                .map_err(read_err)?
                .collect::<Result<_, _>>()
                .map_err(read_err)?;
            children.sort_by_key(|e| e.file_name());
            for child in children {
                let name = child.file_name();
                let guest_child =
                    format!("{}/{}", guest.trim_end_matches('/'), name.to_string_lossy());
                self.add_host_path(&child.path(), &guest_child)?;
            }
            return Ok(());
        }
        if meta.len() > u64::from(u32::MAX) {
            return Err(ImageError::TooLarge(host.to_path_buf()));
        }
        let data = fs::read(host).map_err(read_err)?;
        self.add_file(guest, data, mode)
    }

    pub fn add_include(&mut self, inc: &Include) -> Result<(), ImageError> {
        self.add_host_path(&inc.host, &inc.guest)
    }

    /// Guest paths in the archive (absolute), in archive order.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.nodes.keys().map(|k| format!("/{k}"))
    }

    /// Writes the archive (entries in path order, parents first, then the trailer).
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<W, ImageError> {
        for (ino, (path, node)) in self.nodes.iter().enumerate() {
            let ino =
                u32::try_from(ino + 1).map_err(|_| ImageError::TooLarge(PathBuf::from(path)))?;
            let base = newc::Builder::new(path).ino(ino).uid(0).gid(0).mtime(0);
            let (builder, data): (newc::Builder, &[u8]) = match node {
                Node::Dir { mode } => (
                    base.mode(*mode)
                        .set_mode_file_type(ModeFileType::Directory)
                        .nlink(2),
                    &[],
                ),
                Node::File { data, mode } => (
                    base.mode(*mode)
                        .set_mode_file_type(ModeFileType::Regular)
                        .nlink(1),
                    data,
                ),
                Node::CharDev { mode, major, minor } => (
                    base.mode(*mode)
                        .set_mode_file_type(ModeFileType::Char)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
                Node::Symlink { target } => (
                    base.mode(0o777)
                        .set_mode_file_type(ModeFileType::Symlink)
                        .nlink(1),
                    target.as_bytes(),
                ),
            };
            let len =
                u32::try_from(data.len()).map_err(|_| ImageError::TooLarge(PathBuf::from(path)))?;
            let mut w = builder.write(out, len);
            w.write_all(data)?;
            out = w.finish()?;
        }
        Ok(newc::trailer(out)?)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ImageError> {
        self.write_to(Vec::new())
    }

    /// Writes the archive to `path` atomically (temporary file + rename).
    pub fn write_file(&self, path: &Path) -> Result<(), ImageError> {
        let tmp = path.with_extension("tmp");
        let file = fs::File::create(&tmp)?;
        let mut file = self.write_to(io::BufWriter::new(file))?;
        file.flush()?;
        drop(file);
        fs::rename(&tmp, path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (name, mode, data, (rdev major, rdev minor)) of one archive entry.
    type ReadEntry = (String, u32, Vec<u8>, (u32, u32));

    /// Reads an archive back with the cpio crate's reader.
    fn read_back(bytes: &[u8]) -> Vec<ReadEntry> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let mut r = newc::Reader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            let (name, mode, rdev) = (
                e.name().to_string(),
                e.mode(),
                (e.rdev_major(), e.rdev_minor()),
            );
            let mut data = Vec::new();
            r.read_to_end(&mut data).unwrap();
            out.push((name, mode, data, rdev));
            rest = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn skeleton_and_file_round_trip() {
        let mut fs = Initramfs::with_skeleton();
        fs.add_file("/init", b"\x7fELF-agent".to_vec(), 0o755)
            .unwrap();
        fs.add_file("/usr/share/x/data.bin", vec![1, 2, 3], 0o644)
            .unwrap();
        let entries = read_back(&fs.to_bytes().unwrap());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "dev/console",
                "etc",
                "init",
                "proc",
                "sys",
                "tmp",
                "usr",
                "usr/share",
                "usr/share/x",
                "usr/share/x/data.bin"
            ]
        );
        let init = entries.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init.1, 0o100755);
        assert_eq!(init.2, b"\x7fELF-agent");
        let console = entries.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!(console.1, 0o020600);
        assert_eq!(console.3, (5, 1));
        let dir = entries.iter().find(|e| e.0 == "usr/share").unwrap();
        assert_eq!(dir.1, 0o040755);
    }

    #[test]
    fn output_is_deterministic_and_padded() {
        let build = || {
            let mut fs = Initramfs::with_skeleton();
            fs.add_file("/a", vec![9; 7], 0o600).unwrap();
            fs.add_symlink("/sbin/init", "/init").unwrap();
            fs.to_bytes().unwrap()
        };
        let a = build();
        assert_eq!(a, build());
        // newc archives are padded to 4 bytes and end with the trailer entry.
        assert_eq!(a.len() % 4, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn include_spec_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tool");
        fs::write(&f, b"x").unwrap();
        let spec = f.to_str().unwrap();
        assert_eq!(Include::parse(spec).unwrap().guest, "/tool");
        assert_eq!(
            Include::parse(&format!("{spec}:/bin/t")).unwrap().guest,
            "/bin/t"
        );
        assert!(matches!(
            Include::parse("/no/such/file"),
            Err(ImageError::IncludeNotFound(_))
        ));
        assert!(matches!(
            Include::parse(&format!("{spec}:relative")),
            Err(ImageError::BadGuestPath(_))
        ));
        assert!(matches!(
            Include::parse(&format!("{spec}:/a/../b")),
            Err(ImageError::BadGuestPath(_))
        ));
        assert!(matches!(
            Include::parse(":/x"),
            Err(ImageError::BadIncludeSpec(_))
        ));
        let err = Include::parse("/no/such/file").unwrap_err().to_string();
        assert_eq!(err, "include file not found: /no/such/file");
    }

    #[test]
    fn host_directory_is_added_recursively_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(
            dir.path().join("sub/run.sh"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("run.sh", dir.path().join("sub/link")).unwrap();
        let mut img = Initramfs::new();
        img.add_host_path(dir.path(), "/opt/t").unwrap();
        let entries = read_back(&img.to_bytes().unwrap());
        let run = entries.iter().find(|e| e.0 == "opt/t/sub/run.sh").unwrap();
        assert_eq!(run.1, 0o100750);
        assert_eq!(run.2, b"#!/bin/sh\n");
        let link = entries.iter().find(|e| e.0 == "opt/t/sub/link").unwrap();
        assert_eq!(link.1 & 0o170000, 0o120000);
        assert_eq!(link.2, b"run.sh");
    }

    #[test]
    fn file_over_directory_conflicts() {
        let mut img = Initramfs::new();
        img.add_file("/a/b", vec![], 0o644).unwrap();
        assert!(matches!(
            img.add_file("/a/b/c", vec![], 0o644),
            Err(ImageError::Conflict(_))
        ));
        assert!(matches!(
            img.add_dir("/a/b", 0o755),
            Err(ImageError::Conflict(_))
        ));
        // Re-adding a file replaces it.
        img.add_file("/a/b", vec![1], 0o644).unwrap();
    }

    #[test]
    fn write_file_is_atomic_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initramfs.cpio");
        let mut img = Initramfs::with_skeleton();
        img.add_file("/init", vec![0xAA; 4096], 0o755).unwrap();
        img.write_file(&out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), img.to_bytes().unwrap());
        assert!(!out.with_extension("tmp").exists());
    }
}
