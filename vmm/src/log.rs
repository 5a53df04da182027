//! Debug logging: always a `tracing` debug event; also printed to stderr when
//! verbose output is switched on (the `vmm` binary's `--verbose`).

use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Print debug messages on stderr too.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Log a debug message.
pub fn debug(args: std::fmt::Arguments<'_>) {
    tracing::debug!("{}", args);
    if VERBOSE.load(Ordering::Relaxed) {
        eprintln!("vmm: debug: {args}");
    }
}
