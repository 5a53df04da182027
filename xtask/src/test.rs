//! `cargo xtask test`: format check, clippy, then the whole test suite with
//! the guest kernel and agent built, so no test that needs them is skipped.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::kernel::{self, KernelOpts};
use crate::{agent, paths};

fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("test: {name}");
    let status = cmd.status().with_context(|| format!("running {name}"))?;
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}

fn has_nextest() -> bool {
    paths::cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub struct TestOpts {
    pub lint: bool,
    /// Extra arguments for the test runner (e.g. a filter, `--partition count:1/2`).
    pub args: Vec<String>,
}

pub fn run(opts: &TestOpts) -> Result<()> {
    if opts.lint {
        step(
            "cargo fmt --check",
            paths::cargo().args(["fmt", "--all", "--", "--check"]),
        )?;
        step(
            "cargo clippy -D warnings",
            paths::cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    eprintln!("test: preparing the guest kernel and agent");
    let kernel = kernel::build(&KernelOpts::default())?;
    let agent = agent::build()?;
    let vhost_selftest = agent::build_vhost_selftest()?;
    // The nested runner's L1 kernel, static vmm and L1 init, built here rather than inside
    // the first nested test (a cold L1 kernel takes minutes).
    crate::boot::nested_parts(&KernelOpts::default())?;
    crate::deps::ensure_packages(
        crate::deps::REPORT_CHECK_PACKAGES,
        "the coverage report tests (genhtml, headless chromium, addr2line)",
    )?;
    let xtask_bin = std::env::current_exe().context("locating the xtask binary")?;
    let mut cmd = paths::cargo();
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(&opts.args)
        .env("TESTBED_REQUIRE_KERNEL", "1")
        .env("TESTBED_BZIMAGE", &kernel.bzimage)
        .env("TESTBED_VMLINUX", &kernel.vmlinux)
        .env("TESTBED_KCONFIG", &kernel.config)
        .env("TESTBED_AGENT", &agent)
        .env("TESTBED_VHOST_SELFTEST", &vhost_selftest)
        .env("TESTBED_XTASK_BIN", &xtask_bin);
    step("test suite", &mut cmd)
}
