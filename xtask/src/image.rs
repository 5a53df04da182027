//! The guest initramfs: /init = guest agent, the user's `--include` files,
//! and the command to run (`-- CMD ARGS`).

use std::path::Path;

use anyhow::{Context, Result};
use images::{Include, Initramfs};

use kcov_wire::console::{render_argv, CMD_FILE};

/// Builds the initramfs into `out`.
pub fn build(agent: &Path, includes: &[Include], cmd: &[String], out: &Path) -> Result<()> {
    let mut img = Initramfs::with_skeleton();
    let agent_bytes =
        std::fs::read(agent).with_context(|| format!("reading {}", agent.display()))?;
    img.add_file("/init", agent_bytes, 0o755)?;
    for inc in includes {
        img.add_include(inc)?;
    }
    if !cmd.is_empty() {
        img.add_file(CMD_FILE, render_argv(cmd), 0o644)?;
    }
    img.write_file(out)?;
    Ok(())
}
