//! Stage 2: call-site address → source frames (inline frames included).
//!
//! Many addresses at once go through the batch path (`batch`: one pass per compilation unit,
//! units in parallel); single addresses and the reference path go through addr2line's
//! `find_frames`. Both give the same frames.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;

use addr2line::gimli;

use super::batch::{self, Interner};
use super::frame::clean_path;
pub use super::frame::{normalize_path, Frame};
use super::unit::{Reader, UnitIndex};
use super::vmlinux::Vmlinux;
use super::Error;

/// Maps code addresses of one [`Vmlinux`] to source frames. Parses the unit index once; reuse
/// one symbolizer for many lookups. Not `Sync` (the per-address path caches lazily); the batch
/// path ([`Symbolizer::symbolize_sorted`]) uses several threads internally.
pub struct Symbolizer<'a> {
    vmlinux: &'a Vmlinux,
    dwarf: gimli::Dwarf<Reader<'a>>,
    index: UnitIndex<'a>,
    /// addr2line, for single addresses and for units the batch path cannot read.
    ctx: OnceCell<Result<addr2line::Context<Reader<'a>>, gimli::Error>>,
    src_roots: Vec<String>,
    interner: RefCell<Interner>,
    dwarf_errors: Cell<usize>,
    threads: usize,
}

impl<'a> Symbolizer<'a> {
    /// Parses the unit index of the image's DWARF and infers the source roots that paths are made
    /// relative to (the build directory, plus the source tree of an `O=` build: see
    /// [`Symbolizer::src_roots`]); override them with [`Symbolizer::with_src_roots`].
    pub fn new(vmlinux: &'a Vmlinux) -> Result<Self, Error> {
        vmlinux.require_dwarf()?;
        let dwarf = load_dwarf(vmlinux);
        let (index, names) = UnitIndex::parse(&dwarf).map_err(|source| Error::Dwarf {
            path: vmlinux.path().to_path_buf(),
            addr: None,
            source,
        })?;
        let units: Vec<(Option<String>, Option<String>)> = names
            .into_iter()
            .map(|(dir, name)| {
                (
                    dir.map(|d| clean_path(&d)).filter(|d| d.starts_with('/')),
                    name,
                )
            })
            .collect();
        let src_roots = src_roots_from_units(&units);
        Ok(Symbolizer {
            vmlinux,
            dwarf,
            index,
            ctx: OnceCell::new(),
            src_roots,
            interner: RefCell::default(),
            dwarf_errors: Cell::new(0),
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
        })
    }

    /// Uses `roots` (e.g. the kernel source tree and the build directory) as the prefixes to
    /// strip; an empty list keeps paths as DWARF spells them (cleaned).
    pub fn with_src_roots(mut self, roots: &[&str]) -> Self {
        self.src_roots = roots
            .iter()
            .map(|r| clean_path(r))
            .filter(|r| r != "/")
            .collect();
        self.interner.get_mut().clear_paths();
        self
    }

    /// Runs the batch path on at most `threads` threads (default: the available parallelism,
    /// at most 8). The frames do not depend on it.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The prefixes stripped from source paths: the source tree first, then the build
    /// directory when it differs (out-of-tree `O=` builds).
    pub fn src_roots(&self) -> &[String] {
        &self.src_roots
    }

    /// The image.
    pub fn vmlinux(&self) -> &'a Vmlinux {
        self.vmlinux
    }

    /// DWARF lookup errors met by [`Symbolizer::symbolize_sorted`] and
    /// [`Symbolizer::symbolize_each`] so far (those addresses fell back to the symbol table).
    pub fn dwarf_errors(&self) -> usize {
        self.dwarf_errors.get()
    }

    /// Frames for one address, innermost first. Falls back to the ELF symbol for the outermost
    /// function name; empty only when neither DWARF nor the symbol table knows the address.
    pub fn symbolize(&self, addr: u64) -> Result<Vec<Frame>, Error> {
        let mut frames = self.dwarf_frames(addr).map_err(|source| Error::Dwarf {
            path: self.vmlinux.path().to_path_buf(),
            addr: Some(addr),
            source,
        })?;
        self.symtab_fallback(addr, &mut frames);
        Ok(frames)
    }

    /// Frames for many addresses, in the order given: the same frames as
    /// [`Symbolizer::symbolize`] gives each, computed in one pass per compilation unit, units in
    /// parallel (sorted input saves a sort). A DWARF error for one address does not fail the
    /// batch: that address gets the symbol-table fallback and is counted in
    /// [`Symbolizer::dwarf_errors`].
    pub fn symbolize_sorted(&self, addrs: &[u64]) -> Vec<Vec<Frame>> {
        let sorted_distinct = addrs.windows(2).all(|w| w[0] < w[1]);
        let owned;
        let probes: &[u64] = if sorted_distinct {
            addrs
        } else {
            let mut p = addrs.to_vec();
            p.sort_unstable();
            p.dedup();
            owned = p;
            &owned
        };
        let batch = batch::symbolize(
            &self.dwarf,
            &self.index,
            &self.src_roots,
            self.vmlinux.symbols(),
            probes,
            self.threads,
        );
        let mut frames = batch.frames;
        let mut failed = Vec::new();
        if !batch.fallback.is_empty() {
            failed.resize(probes.len(), false);
        }
        for &i in &batch.fallback {
            frames[i] = self.dwarf_frames(probes[i]).unwrap_or_else(|_| {
                failed[i] = true;
                Vec::new()
            });
            self.symtab_fallback(probes[i], &mut frames[i]);
        }
        // The batch applied the fallback to the frames it found.
        for (f, &addr) in frames.iter_mut().zip(probes) {
            if f.is_empty() {
                self.symtab_fallback(addr, f);
            }
        }
        // Errors count once per run of equal addresses, as looking each up in turn would.
        let is_failed = |i: usize| failed.get(i).copied().unwrap_or(false);
        let mut errors = 0;
        let out = if sorted_distinct {
            errors = failed.iter().filter(|f| **f).count();
            frames
        } else {
            let mut prev = None;
            addrs
                .iter()
                .map(|&addr| {
                    let i = probes.binary_search(&addr).unwrap_or_default();
                    if prev != Some(addr) && is_failed(i) {
                        errors += 1;
                    }
                    prev = Some(addr);
                    frames[i].clone()
                })
                .collect()
        };
        self.dwarf_errors.set(self.dwarf_errors.get() + errors);
        out
    }

    /// Frames for many addresses, each looked up on its own with addr2line's `find_frames`
    /// (the reference [`Symbolizer::symbolize_sorted`] is tested against; much slower).
    /// Errors are handled and counted as there.
    pub fn symbolize_each(&self, addrs: &[u64]) -> Vec<Vec<Frame>> {
        let mut out: Vec<Vec<Frame>> = Vec::with_capacity(addrs.len());
        let mut prev: Option<u64> = None;
        for &addr in addrs {
            if prev == Some(addr) {
                let again = out.last().cloned().unwrap_or_default();
                out.push(again);
                continue;
            }
            prev = Some(addr);
            let mut frames = self.dwarf_frames(addr).unwrap_or_else(|_| {
                self.dwarf_errors.set(self.dwarf_errors.get() + 1);
                Vec::new()
            });
            self.symtab_fallback(addr, &mut frames);
            out.push(frames);
        }
        out
    }

    fn context(&self) -> Result<&addr2line::Context<Reader<'a>>, gimli::Error> {
        self.ctx
            .get_or_init(|| addr2line::Context::from_dwarf(load_dwarf(self.vmlinux)))
            .as_ref()
            .map_err(|e| *e)
    }

    fn dwarf_frames(&self, addr: u64) -> Result<Vec<Frame>, gimli::Error> {
        let ctx = self.context()?;
        let mut interner = self.interner.borrow_mut();
        let roots = &self.src_roots;
        let mut iter = ctx.find_frames(addr).skip_all_loads()?;
        let mut frames = Vec::new();
        while let Some(f) = iter.next()? {
            let function = match &f.function {
                Some(name) => Some(interner.intern(&name.raw_name()?)),
                None => None,
            };
            let (file, line) = match &f.location {
                Some(loc) => (
                    loc.file.map(|p| interner.path(p, roots)),
                    loc.line.filter(|l| *l != 0),
                ),
                None => (None, None),
            };
            frames.push(Frame {
                function,
                file,
                line,
            });
        }
        Ok(frames)
    }

    fn symtab_fallback(&self, addr: u64, frames: &mut Vec<Frame>) {
        batch::symtab_fallback(
            self.vmlinux.symbols(),
            &mut self.interner.borrow_mut(),
            addr,
            frames,
        );
    }
}

pub(super) fn load_dwarf(vmlinux: &Vmlinux) -> gimli::Dwarf<Reader<'_>> {
    let endian = if vmlinux.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    vmlinux
        .dwarf
        .borrow(|s| gimli::EndianSlice::new(vmlinux.section_bytes(s), endian))
}

/// The source roots of an image, primary first.
///
/// The build directory is the most common `DW_AT_comp_dir` (kbuild runs every compile from the
/// object tree). Compilation units whose file (`DW_AT_name`, joined to its `comp_dir`) lies
/// outside it come from a separate source tree (`make O=...`): that tree is the deepest directory
/// holding at least 90% of those files. Returns `[source tree, build dir]`, or just
/// `[build dir]` for in-tree builds. `units` holds each unit's cleaned absolute `comp_dir` and
/// its `DW_AT_name`.
fn src_roots_from_units(units: &[(Option<String>, Option<String>)]) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for dir in units.iter().filter_map(|u| u.0.as_deref()) {
        *counts.entry(dir).or_default() += 1;
    }
    let build_dir = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map(|(d, _)| d.to_string());

    let outside: Vec<String> = units
        .iter()
        .filter_map(|(dir, name)| {
            let name = name.as_deref()?;
            let path = if name.starts_with('/') {
                clean_path(name)
            } else {
                clean_path(&format!("{}/{name}", dir.as_deref()?))
            };
            let under_build = build_dir
                .as_deref()
                .is_some_and(|b| path.strip_prefix(b).is_some_and(|r| r.starts_with('/')));
            (!under_build).then_some(path)
        })
        .collect();
    let mut prefixes: HashMap<&str, usize> = HashMap::new();
    for path in &outside {
        // Every proper ancestor directory except "/".
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            if slash == 0 {
                break;
            }
            *prefixes.entry(&path[..slash]).or_default() += 1;
            end = slash;
        }
    }
    let need = (outside.len() * 9).div_ceil(10).max(1);
    let src_tree = prefixes
        .into_iter()
        .filter(|(_, n)| *n >= need)
        .max_by(|a, b| a.0.len().cmp(&b.0.len()).then(b.0.cmp(a.0)))
        .map(|(p, _)| p.to_string());

    src_tree.into_iter().chain(build_dir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        let root = ["/src/linux/"];
        assert_eq!(
            normalize_path("/src/linux/./drivers/vhost/../vhost/net.c", &root),
            "drivers/vhost/net.c"
        );
        assert_eq!(
            normalize_path("/src/linux/include/linux/list.h", &root),
            "include/linux/list.h"
        );
        // A sibling directory that merely shares the prefix string is outside the root.
        assert_eq!(
            normalize_path("/src/linux-other/a.c", &root),
            "/src/linux-other/a.c"
        );
        assert_eq!(
            normalize_path("/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h", &root),
            "/usr/lib/gcc/x86_64-linux-gnu/12/include/stddef.h"
        );
        let none: [&str; 0] = [];
        assert_eq!(normalize_path("./a/b.c", &none), "a/b.c");
        assert_eq!(normalize_path("../a/b.c", &none), "../a/b.c");
        assert_eq!(normalize_path("/../a//b.c", &none), "/a/b.c");
        // The longest matching root wins (build dir inside the source tree).
        let roots = ["/src/linux", "/src/linux/build"];
        assert_eq!(
            normalize_path("/src/linux/build/include/generated/autoconf.h", &roots),
            "include/generated/autoconf.h"
        );
        assert_eq!(normalize_path("/src/linux/mm/slub.c", &roots), "mm/slub.c");
    }

    fn unit(dir: &str, name: &str) -> (Option<String>, Option<String>) {
        (Some(dir.to_string()), Some(name.to_string()))
    }

    #[test]
    fn infers_roots() {
        // In-tree build: relative names, one comp_dir.
        let units = [
            unit("/src/linux", "drivers/vhost/net.c"),
            unit("/src/linux", "kernel/fork.c"),
        ];
        assert_eq!(src_roots_from_units(&units), ["/src/linux"]);

        // O= build: comp_dir is the object tree, names are absolute source paths; a generated
        // file lives in the object tree. drivers/ holds most files but not 90%.
        let mut units = vec![unit("/tmp/kb", "/tmp/kb/.vmlinux.export.c")];
        for i in 0..8 {
            units.push(unit("/tmp/kb", &format!("/tmp/ksrc/linux/drivers/d{i}.c")));
        }
        units.push(unit("/tmp/kb", "/tmp/ksrc/linux/kernel/fork.c"));
        units.push(unit("/tmp/kb", "/tmp/ksrc/linux/arch/x86/entry/entry_64.S"));
        assert_eq!(src_roots_from_units(&units), ["/tmp/ksrc/linux", "/tmp/kb"]);

        // Object tree inside the source tree, relative "../" names.
        let units = [
            unit("/src/linux/build", "../drivers/vhost/net.c"),
            unit("/src/linux/build", "../kernel/fork.c"),
        ];
        assert_eq!(
            src_roots_from_units(&units),
            ["/src/linux", "/src/linux/build"]
        );
        assert!(src_roots_from_units(&[]).is_empty());
    }
}
