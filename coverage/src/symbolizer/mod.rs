//! The symbolizer: kcov PCs → call sites → source frames, as plain-data pipeline stages
//! (syzkaller `pkg/cover` style).
//!
//! ```text
//! Vmlinux::open ──► enumerate_sites ──► SiteScan { sites: [CallSite] }
//!                                            │  map_pcs(raw kcov PCs) ──► PcMapping { hits, unmatched }
//!      Symbolizer (addr2line) ──► SiteTable { sites, frames }   (cached per build-id: SymbolCache)
//!                                            └──► CoverageMap::build(table, hits) (crate::map)
//! ```
//!
//! Both stages run on all cores: code is decoded in chunks, and `Symbolizer::symbolize_sorted`
//! reads each DWARF unit once for all the addresses in it (`batch`, on gimli: `unit` finds the
//! units of an address, `line` runs a unit's line program, `function` walks its DIEs), giving
//! exactly the frames addr2line's per-address `find_frames` gives (`Symbolizer::symbolize`,
//! `Symbolizer::symbolize_each`).

mod batch;
mod cache;
mod decl;
mod dwarf;
mod frame;
mod function;
mod line;
mod lookup;
mod sites;
mod table;
mod unit;
mod vmlinux;

use std::path::PathBuf;

use addr2line::gimli;

pub use cache::{CacheOutcome, SymbolCache, CACHE_FORMAT_VERSION};
pub use decl::{decl_lines, DeclLines};
pub use dwarf::{normalize_path, Frame, Symbolizer};
pub use sites::{
    enumerate_sites, enumerate_sites_on, map_pcs, CallSite, PcMapping, SiteKind, SiteScan,
    TailCall, TRACE_CMP_HOOKS, TRACE_PC_HOOK,
};
pub use table::{symbolize_all_sites, SiteTable, SymbolizeAllStats};
pub use vmlinux::{BuildId, ExecSection, FunctionSymbol, ImageNotes, SymbolTable, Vmlinux};

/// What the symbolizer layer can fail with. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not an ELF object `object` can parse.
    #[error("{}: not a usable ELF image: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser error.
        source: object::Error,
    },
    /// Structurally broken ELF.
    #[error("{}: malformed ELF image: {what}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: &'static str,
    },
    /// No `.debug_line`/`.debug_info`: PCs cannot be mapped to file:line.
    #[error(
        "{}: vmlinux has no DWARF line info: rebuild with kernel-config/debug-info.config",
        path.display()
    )]
    NoDwarf {
        /// The file.
        path: PathBuf,
    },
    /// No `__sanitizer_cov_trace_pc` symbol: the kernel was built without kcov.
    #[error(
        "{}: no __sanitizer_cov_trace_pc symbol: the kernel was built without CONFIG_KCOV; \
         rebuild with kernel-config/kcov.config",
        path.display()
    )]
    NotInstrumented {
        /// The file.
        path: PathBuf,
    },
    /// Call-site decoding is x86_64 only.
    #[error("{}: architecture {arch} is not supported (x86_64 only)", path.display())]
    UnsupportedArch {
        /// The file.
        path: PathBuf,
        /// `object`'s name for it.
        arch: String,
    },
    /// The DWARF data could not be parsed.
    #[error("{}: bad DWARF{}: {source}", path.display(),
        addr.map(|a| format!(" at {a:#x}")).unwrap_or_default())]
    Dwarf {
        /// The file.
        path: PathBuf,
        /// The address being looked up, if any.
        addr: Option<u64>,
        /// gimli's error.
        source: gimli::Error,
    },
    /// A cache file could not be written.
    #[error("symbol cache {}: {reason}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

#[cfg(test)]
mod tests;
