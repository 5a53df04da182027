//! The testbed's task runner as a library: kernel build and cache, guest
//! agent, initramfs, runners and boot. `cargo xtask` is its command line;
//! integration tests call it directly.

pub mod agent;
pub mod bench;
pub mod bench_loop;
pub mod boot;
pub mod ci;
pub mod deps;
pub mod diff;
pub mod fuzz;
pub mod golden;
pub mod image;
pub mod kernel;
pub mod lock;
pub mod merge;
pub mod paths;
pub mod progress;
pub mod report;
pub mod run_kernel;
pub mod runner;
pub mod runs;
pub mod test;
#[cfg(test)]
mod test_support;
