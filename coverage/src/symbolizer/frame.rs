//! What symbolization yields: source frames, and the path normalisation that makes their file
//! names relative to the kernel tree. A leaf: the decoders (`batch`, `dwarf`) and everything
//! that stores or renders frames build on it.

use std::sync::Arc;

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

pub(super) fn clean_path(path: &str) -> String {
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
