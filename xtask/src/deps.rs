//! Host packages the testbed needs, installed with apt-get when missing.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian packages needed to build the guest kernel.
pub const KERNEL_BUILD_PACKAGES: &[&str] = &[
    "make",
    "gcc",
    "libc6-dev",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "xz-utils",
    // The bzImage is LZ4-compressed (kernel-config/base.config says why).
    "lz4",
];
/// The default kernel source: Debian's linux-source-6.12 tarball.
pub const KERNEL_SOURCE_PACKAGE: &str = "linux-source-6.12";
/// The qemu runner.
pub const QEMU_PACKAGES: &[&str] = &["qemu-system-x86"];
/// Checking coverage reports: `genhtml` reads our lcov tracefiles, headless Chromium renders
/// our HTML (tests/tests/coverage_report.rs), binutils' `addr2line` is the symbolizer baseline.
pub const REPORT_CHECK_PACKAGES: &[&str] = &["lcov", "chromium", "binutils"];

fn is_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed"
        })
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure every package in `pkgs` is installed; installs the missing ones
/// with apt-get when running as root, otherwise stops with the exact command.
pub fn ensure_packages(pkgs: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("missing Debian packages for {why}: {list}; install them with: sudo apt-get update && sudo apt-get install -y --no-install-recommends {list}");
    }
    eprintln!("installing {list} ({why}) with apt-get");
    let apt = |args: &[&str]| -> Result<bool> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        Ok(status.success())
    };
    if !apt(&["update", "-q"])? {
        bail!("apt-get update failed; check the package sources, then run: apt-get install -y --no-install-recommends {list}");
    }
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing.iter().copied());
    if !apt(&args)? {
        bail!("apt-get install {list} failed (see its output above)");
    }
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these packages are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// The installed version of a Debian package, if any.
pub fn package_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", pkg])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once('\t')?;
    (out.status.success() && status == "install ok installed").then(|| version.trim().to_string())
}
