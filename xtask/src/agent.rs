//! Builds the guest agent as a static x86_64 binary (`-C target-feature=+crt-static`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{deps, paths};

pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `cargo_args` (release, static, for [`GUEST_TARGET`]) in the guest target directory,
/// so the static RUSTFLAGS never invalidate the host build, and returns the binary at
/// `rel` (below `<target dir>/<target>/release/`), checked to need no dynamic loader.
fn build_static(what: &str, cargo_args: &[&str], rel: &str) -> Result<PathBuf> {
    // Static linking against glibc needs libc.a.
    deps::ensure_packages(&["libc6-dev"], &format!("linking the static {what}"))?;
    let target_dir = paths::workspace_root().join("target").join("guest");
    let mut args = cargo_args.to_vec();
    args.extend(["--target", GUEST_TARGET]);
    let status = paths::cargo_build_release(&args)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .with_context(|| format!("running cargo to build the {what}"))?;
    if !status.success() {
        bail!("building the {what} failed (see cargo's output above)");
    }
    let bin = target_dir.join(GUEST_TARGET).join("release").join(rel);
    let data = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if has_interpreter(&data)? {
        bail!(
            "{} is dynamically linked; the guest has no libc to load it",
            bin.display()
        );
    }
    Ok(bin)
}

/// Builds `guest-agent` (release, static); returns the agent binary's path.
pub fn build() -> Result<PathBuf> {
    build_static("guest agent", &["--package", "guest-agent"], "guest-agent")
}

/// The nested runner's L1 init, built with the agent (same package); returns its path.
pub fn build_nested_init() -> Result<PathBuf> {
    build_static(
        "nested L1 init",
        &["--package", "guest-agent", "--bin", "nested-l1-init"],
        "nested-l1-init",
    )
}

/// Our `vmm` binary (release, static) for running inside the nested runner's L1.
pub fn build_static_vmm() -> Result<PathBuf> {
    build_static("vmm for L1", &["--package", "vmm", "--bin", "vmm"], "vmm")
}

/// Builds `vmm`'s `vhost_net_selftest` example (release, static, in the guest agent's
/// target directory): the VMM's vhost-net backend and host kcov, run inside the guest,
/// whose kernel has vhost-net and kcov. Returns the binary path.
pub fn build_vhost_selftest() -> Result<PathBuf> {
    build_static(
        "vhost self-test",
        &["--package", "vmm", "--example", "vhost_net_selftest"],
        "examples/vhost_net_selftest",
    )
}

/// Compiles the C program `src` into the static binary `out` (`gcc -static -O2`), for guests
/// that have no libc: test programs, bench helpers. The error carries gcc's messages.
pub fn gcc_static(src: &Path, out: &Path) -> Result<()> {
    deps::ensure_packages(&["gcc", "libc6-dev"], "static guest test programs")?;
    let o = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(src)
        .output()
        .context("running gcc")?;
    if !o.status.success() {
        bail!(
            "gcc -static {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// True when an ELF64 little-endian file has a PT_INTERP program header
/// (i.e. it needs a dynamic loader). Bounds-checked; errors on non-ELF input.
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let rd = |off: usize, len: usize| -> Result<u64> {
        let bytes = elf.get(off..off + len).context("truncated ELF header")?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let phoff = usize::try_from(rd(0x20, 8)?)?;
    let phentsize = usize::try_from(rd(0x36, 2)?)?;
    let phnum = usize::try_from(rd(0x38, 2)?)?;
    for i in 0..phnum {
        let off = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .context("bad program header table")?;
        if rd(off, 4)? == u64::from(PT_INTERP) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dynamic_and_static_binaries() {
        // This test binary itself is dynamically linked (default Rust on gnu).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap());
        assert!(has_interpreter(b"not an elf").is_err());
        let mut truncated = me[..0x40].to_vec();
        truncated.truncate(0x39);
        assert!(has_interpreter(&truncated).is_err());
    }
}
