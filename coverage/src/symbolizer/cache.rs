//! Per-build-id cache of a [`SiteTable`]: `<dir>/<build-id>.bin`, written atomically
//! (temporary file in the same directory, fsync, rename).
//!
//! Format (little-endian, LEB128 varints, strings interned once):
//! ```text
//! "KCOVSYM\0" u32:version
//! bytes:build_id  varint:n_roots { bytes:src_root }  varint:decode_errors  varint:dwarf_errors
//! varint:n_strings  { bytes:utf8 }
//! varint:n_tail     { varint:addr-delta u8:kind }
//! varint:n_sites    { varint:call_addr-delta u8:call_len u8:kind (+0x80: a tail-return site)
//!                     varint:n_frames { varint:function+1 varint:file+1 varint:line } }   (0 = none)
//! "END\0"
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dwarf::Frame;
use super::sites::{CallSite, SiteKind, TailCall};
use super::table::SiteTable;
use super::vmlinux::{BuildId, Vmlinux};
use super::Error;

/// Bumped whenever the file layout or what a table means changes.
pub const CACHE_FORMAT_VERSION: u32 = 2;

const MAGIC: &[u8; 8] = b"KCOVSYM\0";
const TRAILER: &[u8; 4] = b"END\0";

/// What [`SiteTable::load_or_build`] did with the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from this file; nothing was decoded or symbolized.
    Hit {
        /// The cache file.
        path: PathBuf,
    },
    /// Built and stored. `stale` says why an existing file was not used.
    Stored {
        /// The cache file.
        path: PathBuf,
        /// Why the old file was rejected, if there was one.
        stale: Option<String>,
    },
    /// Built, not stored.
    NotCached {
        /// Why.
        reason: String,
    },
}

/// A directory of symbol tables keyed by build-id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolCache {
    dir: PathBuf,
}

impl SymbolCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SymbolCache { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/kcov-testbed/symbols`, else `$HOME/.cache/kcov-testbed/symbols`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })?;
        Some(base.join("kcov-testbed").join("symbols"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/<build-id hex>.bin`.
    pub fn path_for(&self, build_id: &BuildId) -> PathBuf {
        self.dir.join(format!("{}.bin", build_id.to_hex()))
    }

    /// The stored table for `build_id`: `Ok(None)` if there is none, `Err(reason)` if the file
    /// exists but is unusable (other version, other build-id, truncated, corrupt).
    pub fn load(&self, build_id: &BuildId) -> Result<Option<SiteTable>, String> {
        let path = self.path_for(build_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let table = decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if table.build_id.as_ref() != Some(build_id) {
            return Err(format!("{}: written for another build-id", path.display()));
        }
        Ok(Some(table))
    }

    /// Writes `table` under its build-id; returns the file written.
    pub fn store(&self, table: &SiteTable) -> Result<PathBuf, Error> {
        let Some(build_id) = &table.build_id else {
            return Err(Error::Cache {
                path: self.dir.clone(),
                reason: "the table has no build-id to key it by".into(),
            });
        };
        let path = self.path_for(build_id);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let tmp = self
            .dir
            .join(format!(".{}.tmp.{}", build_id.to_hex(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encode(table))?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&path)(e));
        }
        Ok(path)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// The cache is a layer above tables: tables know nothing of it.
impl SiteTable {
    /// The cached table for this image's build-id if there is a valid one, else builds it and
    /// stores it (atomically). With `cache == None`, or an image without build-id, it just builds.
    /// A cache that cannot be written is reported in the outcome, not as an error.
    pub fn load_or_build(
        vmlinux: &Vmlinux,
        cache: Option<&SymbolCache>,
    ) -> Result<(Self, CacheOutcome), Error> {
        let (Some(cache), Some(build_id)) = (cache, vmlinux.build_id()) else {
            let reason = if cache.is_none() {
                "no cache directory given"
            } else {
                "the image has no build-id"
            };
            return Ok((
                Self::build(vmlinux)?,
                CacheOutcome::NotCached {
                    reason: reason.to_string(),
                },
            ));
        };
        let stale = match cache.load(build_id) {
            Ok(Some(table)) => {
                return Ok((
                    table,
                    CacheOutcome::Hit {
                        path: cache.path_for(build_id),
                    },
                ))
            }
            Ok(None) => None,
            Err(reason) => Some(reason),
        };
        let table = Self::build(vmlinux)?;
        let outcome = match cache.store(&table) {
            Ok(path) => CacheOutcome::Stored { path, stale },
            Err(e) => CacheOutcome::NotCached {
                reason: e.to_string(),
            },
        };
        Ok((table, outcome))
    }
}

/// Set in a site's kind byte for [`CallSite::tail`].
const TAIL_BIT: u8 = 0x80;

fn kind_byte(k: SiteKind) -> u8 {
    match k {
        SiteKind::Pc => 0,
        SiteKind::Cmp => 1,
    }
}

/// String id + 1 (0 = none), interning on first use.
fn intern<'t>(
    index: &mut HashMap<&'t str, u64>,
    strings: &mut Vec<&'t str>,
    s: &'t Option<Arc<str>>,
) -> u64 {
    let Some(s) = s else { return 0 };
    let next = index.len() as u64;
    let id = *index.entry(s).or_insert_with(|| {
        strings.push(s);
        next
    });
    id + 1
}

fn encode(table: &SiteTable) -> Vec<u8> {
    let mut strings: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, u64> = HashMap::new();
    let mut body = Vec::new();
    put_varint(&mut body, table.sites.len() as u64);
    let mut prev = 0u64;
    for (site, frames) in table.sites.iter().zip(&table.frames) {
        put_varint(&mut body, site.call_addr.wrapping_sub(prev));
        prev = site.call_addr;
        body.push(site.call_len);
        body.push(kind_byte(site.kind) | if site.tail { TAIL_BIT } else { 0 });
        put_varint(&mut body, frames.len() as u64);
        for f in frames {
            let function = intern(&mut index, &mut strings, &f.function);
            let file = intern(&mut index, &mut strings, &f.file);
            put_varint(&mut body, function);
            put_varint(&mut body, file);
            put_varint(&mut body, u64::from(f.line.unwrap_or(0)));
        }
    }

    let mut out = Vec::with_capacity(body.len() + 64 * strings.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&CACHE_FORMAT_VERSION.to_le_bytes());
    put_bytes(
        &mut out,
        table
            .build_id
            .as_ref()
            .map(|b| b.0.as_slice())
            .unwrap_or(&[]),
    );
    put_varint(&mut out, table.src_roots.len() as u64);
    for r in &table.src_roots {
        put_bytes(&mut out, r.as_bytes());
    }
    put_varint(&mut out, table.decode_errors);
    put_varint(&mut out, table.dwarf_errors as u64);
    put_varint(&mut out, strings.len() as u64);
    for s in &strings {
        put_bytes(&mut out, s.as_bytes());
    }
    put_varint(&mut out, table.tail_calls.len() as u64);
    let mut prev = 0u64;
    for t in &table.tail_calls {
        put_varint(&mut out, t.addr.wrapping_sub(prev));
        prev = t.addr;
        out.push(kind_byte(t.kind));
    }
    out.extend_from_slice(&body);
    out.extend_from_slice(TRAILER);
    out
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("bad varint".into())
    }

    /// A count, bounded by the bytes left (each item takes at least one byte).
    fn count(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err("count larger than the file".into());
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.count()?;
        self.take(n)
    }
}

fn kind_from(b: u8) -> Result<SiteKind, String> {
    match b {
        0 => Ok(SiteKind::Pc),
        1 => Ok(SiteKind::Cmp),
        _ => Err(format!("bad site kind {b}")),
    }
}

fn decode(buf: &[u8]) -> Result<SiteTable, String> {
    let mut c = Cursor { buf, pos: 0 };
    if c.take(MAGIC.len())? != MAGIC {
        return Err("not a symbol cache file".into());
    }
    let version = u32::from_le_bytes(c.take(4)?.try_into().map_err(|_| "truncated")?);
    if version != CACHE_FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this build reads {CACHE_FORMAT_VERSION}"
        ));
    }
    let build_id = c.bytes()?;
    let build_id = (!build_id.is_empty()).then(|| BuildId(build_id.to_vec()));
    let n = c.count()?;
    let mut src_roots = Vec::with_capacity(n);
    for _ in 0..n {
        src_roots.push(
            std::str::from_utf8(c.bytes()?)
                .map_err(|_| "bad utf-8")?
                .to_string(),
        );
    }
    let decode_errors = c.varint()?;
    let dwarf_errors = c.varint()? as usize;
    let n = c.count()?;
    let mut strings: Vec<Arc<str>> = Vec::with_capacity(n);
    for _ in 0..n {
        strings.push(Arc::from(
            std::str::from_utf8(c.bytes()?).map_err(|_| "bad utf-8")?,
        ));
    }
    let string = |id: u64| -> Result<Option<Arc<str>>, String> {
        match id {
            0 => Ok(None),
            i => strings
                .get(i as usize - 1)
                .cloned()
                .map(Some)
                .ok_or_else(|| "bad string index".to_string()),
        }
    };
    let n = c.count()?;
    let mut tail_calls = Vec::with_capacity(n);
    let mut prev = 0u64;
    for _ in 0..n {
        prev = prev.wrapping_add(c.varint()?);
        tail_calls.push(TailCall {
            addr: prev,
            kind: kind_from(c.u8()?)?,
        });
    }
    let n = c.count()?;
    let mut sites = Vec::with_capacity(n);
    let mut frames = Vec::with_capacity(n);
    let mut prev = 0u64;
    for _ in 0..n {
        prev = prev.wrapping_add(c.varint()?);
        let call_len = c.u8()?;
        let byte = c.u8()?;
        let kind = kind_from(byte & !TAIL_BIT)?;
        sites.push(CallSite {
            call_addr: prev,
            call_len,
            ret_addr: prev.wrapping_add(u64::from(call_len)),
            kind,
            tail: byte & TAIL_BIT != 0,
        });
        let nf = c.count()?;
        let mut fs = Vec::with_capacity(nf);
        for _ in 0..nf {
            let function = string(c.varint()?)?;
            let file = string(c.varint()?)?;
            let line = u32::try_from(c.varint()?).map_err(|_| "bad line")?;
            fs.push(Frame {
                function,
                file,
                line: (line != 0).then_some(line),
            });
        }
        frames.push(fs);
    }
    if c.take(TRAILER.len())? != TRAILER || c.pos != buf.len() {
        return Err("bad trailer".into());
    }
    if !sites.windows(2).all(|w| w[0].call_addr < w[1].call_addr) {
        return Err("sites not sorted".into());
    }
    Ok(SiteTable {
        build_id,
        src_roots,
        sites,
        frames,
        tail_calls,
        decode_errors,
        dwarf_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SiteTable {
        let file: Arc<str> = Arc::from("drivers/vhost/net.c");
        let f = |name: &str, line| Frame {
            function: Some(Arc::from(name)),
            file: Some(file.clone()),
            line,
        };
        SiteTable {
            build_id: Some(BuildId(vec![0xde, 0xad, 0xbe, 0xef])),
            src_roots: vec!["/src/linux".into(), "/src/build".into()],
            sites: vec![
                CallSite {
                    call_addr: 0xffff_ffff_8100_0010,
                    call_len: 5,
                    ret_addr: 0xffff_ffff_8100_0015,
                    kind: SiteKind::Pc,
                    tail: false,
                },
                CallSite {
                    call_addr: 0xffff_ffff_8100_0100,
                    call_len: 5,
                    ret_addr: 0xffff_ffff_8100_0105,
                    kind: SiteKind::Cmp,
                    tail: true,
                },
            ],
            frames: vec![
                vec![f("vhost_has_feature", Some(12)), f("handle_tx", Some(800))],
                vec![Frame {
                    function: Some(Arc::from("x")),
                    file: None,
                    line: None,
                }],
            ],
            tail_calls: vec![TailCall {
                addr: 0xffff_ffff_8100_0200,
                kind: SiteKind::Pc,
            }],
            decode_errors: 3,
            dwarf_errors: 1,
        }
    }

    #[test]
    fn roundtrip_and_rejects() {
        let t = sample();
        let bytes = encode(&t);
        assert_eq!(decode(&bytes).unwrap(), t);
        for cut in [0, 7, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[8] = 99;
        assert!(decode(&bad).unwrap_err().contains("version"));
    }

    #[test]
    fn store_is_atomic_and_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SymbolCache::new(dir.path().join("symbols"));
        let t = sample();
        let id = t.build_id.clone().unwrap();
        assert_eq!(cache.load(&id), Ok(None));
        let path = cache.store(&t).unwrap();
        assert_eq!(path, dir.path().join("symbols/deadbeef.bin"));
        assert_eq!(cache.load(&id).unwrap(), Some(t.clone()));
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("deadbeef.bin")]);
        // A file under the wrong name (another build-id) is rejected, not trusted.
        let other = BuildId(vec![1, 2]);
        std::fs::copy(&path, cache.path_for(&other)).unwrap();
        assert!(cache.load(&other).unwrap_err().contains("another build-id"));
        // Corruption is reported.
        std::fs::write(&path, b"garbage").unwrap();
        assert!(cache.load(&id).is_err());
    }
}
