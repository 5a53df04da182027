//! Shared helpers for the end-to-end tests in `tests/tests/`.
//!
//! These tests need the guest kernel and agent that `cargo xtask test` builds
//! and announces through environment variables. Run alone (plain `cargo
//! test`), they skip with a printed reason; under `cargo xtask test`
//! (`TESTBED_REQUIRE_KERNEL=1`) a missing artifact is a failure.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path in environment variable `var`, or None after printing why the
/// test is skipped. Panics when `TESTBED_REQUIRE_KERNEL=1`.
pub fn artifact(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => Some(PathBuf::from(v)),
        None => {
            if std::env::var("TESTBED_REQUIRE_KERNEL").as_deref() == Ok("1") {
                panic!("{var} is not set although TESTBED_REQUIRE_KERNEL=1");
            }
            eprintln!("SKIP: {var} not set (run via `cargo xtask test`, which builds the guest kernel and agent)");
            None
        }
    }
}

/// Runs the xtask binary (the same one `cargo xtask` runs) with `args`.
pub fn xtask(args: &[&str]) -> Option<Output> {
    let bin = artifact("TESTBED_XTASK_BIN")?;
    let out = Command::new(bin)
        .args(args)
        .current_dir(xtask::paths::workspace_root())
        .output()
        .expect("running xtask");
    Some(out)
}

/// stdout + stderr as text, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Lines of stderr that start with "error:".
pub fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}
