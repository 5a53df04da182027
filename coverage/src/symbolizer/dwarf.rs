//! Stage 2: call-site address → source frames (inline frames included) with addr2line.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::vmlinux::Vmlinux;
use super::Error;

type Reader<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// One source frame. A site's frames are innermost first: the first is where the code is
/// (possibly inside an inlined function), each next one is the call line in the function that
/// inlined the previous, and the last is the real (symbol-level) function.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    /// Function name (DWARF; for the outermost frame the ELF symbol when DWARF has none).
    pub function: Option<Arc<str>>,
    /// Source file, relative to the kernel source root when it lies inside it
    /// (e.g. `drivers/vhost/net.c`), else the absolute path from DWARF.
    pub file: Option<Arc<str>>,
    /// 1-based line; `None` when unknown (DWARF line 0 included).
    pub line: Option<u32>,
}

#[derive(Default)]
struct Interner {
    strings: HashSet<Arc<str>>,
    /// Raw DWARF path → normalised, interned path.
    paths: HashMap<Box<str>, Arc<str>>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }

    fn path(&mut self, raw: &str, roots: &[String]) -> Arc<str> {
        if let Some(a) = self.paths.get(raw) {
            return a.clone();
        }
        let a = self.intern(&normalize_path(raw, roots));
        self.paths.insert(raw.into(), a.clone());
        a
    }
}

/// Lexically cleans `path` (drops `.` and empty components, resolves `..`) and, when it lies
/// under one of `src_roots` (the longest that matches wins), makes it relative to it:
/// `/src/linux/./drivers/vhost/../vhost/net.c` with root `/src/linux` gives
/// `drivers/vhost/net.c`. Paths outside every root stay absolute.
pub fn normalize_path<S: AsRef<str>>(path: &str, src_roots: &[S]) -> String {
    let cleaned = clean_path(path);
    let mut best: Option<&str> = None;
    for root in src_roots {
        let root = root.as_ref().trim_end_matches('/');
        let Some(rest) = cleaned.strip_prefix(root) else {
            continue;
        };
        let Some(rel) = rest.strip_prefix('/') else {
            continue;
        };
        if !rel.is_empty() && best.is_none_or(|b| rel.len() < b.len()) {
            best = Some(rel);
        }
    }
    best.map(str::to_string).unwrap_or(cleaned)
}

fn clean_path(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Maps code addresses of one [`Vmlinux`] to source frames. Caches parsed DWARF units internally,
/// so reuse one symbolizer for many lookups. Not `Sync` (addr2line caches lazily).
pub struct Symbolizer<'a> {
    vmlinux: &'a Vmlinux,
    ctx: addr2line::Context<Reader<'a>>,
    src_roots: Vec<String>,
    interner: RefCell<Interner>,
    dwarf_errors: Cell<usize>,
}

impl<'a> Symbolizer<'a> {
    /// Parses the unit index of the image's DWARF and infers the source roots that paths are made
    /// relative to (the build directory, plus the source tree of an `O=` build: see
    /// [`Symbolizer::src_roots`]); override them with [`Symbolizer::with_src_roots`].
    pub fn new(vmlinux: &'a Vmlinux) -> Result<Self, Error> {
        vmlinux.require_dwarf()?;
        let endian = if vmlinux.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let dwarf_err = |source| Error::Dwarf {
            path: vmlinux.path().to_path_buf(),
            addr: None,
            source,
        };
        let load = || {
            vmlinux
                .dwarf
                .borrow(|s| gimli::EndianSlice::new(vmlinux.section_bytes(s), endian))
        };
        let src_roots = infer_src_roots(&load()).map_err(dwarf_err)?;
        let ctx = addr2line::Context::from_dwarf(load()).map_err(dwarf_err)?;
        Ok(Symbolizer {
            vmlinux,
            ctx,
            src_roots,
            interner: RefCell::default(),
            dwarf_errors: Cell::new(0),
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
        self.interner.get_mut().paths.clear();
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

    /// DWARF lookup errors met by [`Symbolizer::symbolize_sorted`] so far (those addresses fell
    /// back to the symbol table).
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

    /// Frames for many addresses, in the order given (sorted input is the fast path: units and
    /// functions are parsed once and reused; repeated addresses are looked up once). A DWARF
    /// error for one address does not fail the batch: that address gets the symbol-table
    /// fallback and is counted in [`Symbolizer::dwarf_errors`].
    pub fn symbolize_sorted(&self, addrs: &[u64]) -> Vec<Vec<Frame>> {
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

    fn dwarf_frames(&self, addr: u64) -> Result<Vec<Frame>, gimli::Error> {
        let mut interner = self.interner.borrow_mut();
        let roots = &self.src_roots;
        let mut iter = self.ctx.find_frames(addr).skip_all_loads()?;
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
        let needs_name = frames.last().is_none_or(|f| f.function.is_none());
        if !needs_name {
            return;
        }
        let Some(sym) = self.vmlinux.symbols().lookup(addr) else {
            return;
        };
        let name = self.interner.borrow_mut().intern(&sym.name);
        match frames.last_mut() {
            Some(last) => last.function = Some(name),
            None => frames.push(Frame {
                function: Some(name),
                file: None,
                line: None,
            }),
        }
    }
}

/// The source roots of an image, primary first.
///
/// The build directory is the most common `DW_AT_comp_dir` (kbuild runs every compile from the
/// object tree). Compilation units whose file (`DW_AT_name`, joined to its `comp_dir`) lies
/// outside it come from a separate source tree (`make O=...`): that tree is the deepest directory
/// holding at least 90% of those files. Returns `[source tree, build dir]`, or just
/// `[build dir]` for in-tree builds.
fn infer_src_roots(dwarf: &gimli::Dwarf<Reader<'_>>) -> Result<Vec<String>, gimli::Error> {
    let mut units = Vec::new();
    let mut iter = dwarf.units();
    while let Some(header) = iter.next()? {
        let unit = dwarf.unit(header)?;
        let comp_dir = unit
            .comp_dir
            .map(|d| clean_path(&d.to_string_lossy()))
            .filter(|d| d.starts_with('/'));
        let name = unit.name.map(|n| n.to_string_lossy().into_owned());
        units.push((comp_dir, name));
    }
    Ok(src_roots_from_units(&units))
}

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
