//! Host side of the kcov testbed: from raw kcov PCs to coverage data.
//!
//! This layer is a pipeline of plain data (syzkaller `pkg/cover` style):
//! raw PCs → call sites ([`symbolizer::enumerate_sites`], [`symbolizer::map_pcs`]) → source frames
//! ([`symbolizer::Symbolizer`], [`symbolizer::SiteTable`], cached per build-id by
//! [`symbolizer::SymbolCache`]) → lines and functions ([`map::CoverageMap`]), which reports
//! are made from.

pub mod glob;
pub mod map;
pub mod symbolizer;

#[cfg(test)]
mod fixture;

pub use glob::PathGlob;
pub use map::{Attribution, CoverageMap, FunctionKey, LineKey, MapOptions, SiteSet, Summary};
pub use symbolizer::{
    symbolize_all_sites, CallSite, Error as SymbolizeError, Frame, PcMapping, SiteKind, SiteTable,
    SymbolCache, Symbolizer, Vmlinux,
};
