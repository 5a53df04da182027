//! Host side of the kcov testbed: from raw kcov PCs to coverage data.
//!
//! This layer is a pipeline of plain data (syzkaller `pkg/cover` style):
//! raw PCs → call sites ([`symbolizer::enumerate_sites`], [`symbolizer::map_pcs`]) → source frames
//! ([`symbolizer::Symbolizer`], [`symbolizer::SiteTable`], cached per build-id by
//! [`symbolizer::SymbolCache`]) → lines and functions ([`map::CoverageMap`]), which reports
//! are made from. Around it: the collector and run store ([`store`]: kcov-wire stream → PC files),
//! reports ([`report`]: terminal, lcov, JSON; [`html`]), run and patch diffs ([`diff`]) and
//! golden coverage checks ([`golden`]), the function-by-case table ([`matrix`]). [`run`] owns the run directory (layout, `run.json`,
//! collect-on-open, the loaded run with its build-id check); the CLI only finds kernels.

pub mod diff;
pub mod glob;
pub mod golden;
pub mod html;
pub mod map;
pub mod matrix;
pub mod merge;
pub mod report;
pub mod run;
pub mod store;
pub mod symbolizer;

#[cfg(test)]
mod fixture;

pub use glob::PathGlob;
pub use map::{Attribution, CoverageMap, FunctionKey, LineKey, MapOptions, SiteSet, Summary};
pub use symbolizer::{
    symbolize_all_sites, CallSite, Error as SymbolizeError, Frame, PcMapping, SiteKind, SiteTable,
    SymbolCache, Symbolizer, Vmlinux,
};
