//! `cargo xtask boot`: build what is missing, boot, report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use images::Include;
use serde::Serialize;

use crate::kernel::{self, KernelOpts};
use crate::paths;
use crate::progress::fmt_dur;
use crate::runner::{self, BootOutcome, BootSpec, RunnerKind, Timeouts};
use crate::{agent, image};

/// The kernel command line every run starts with: serial console, no reboot
/// loop on panic (panic=-1 reboots at once and the runner sees the VM end),
/// reboot by triple fault (works on both runners without ACPI or i8042).
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 reboot=t";

#[derive(Clone, Debug)]
pub struct BootOpts {
    pub runner: RunnerKind,
    pub kernel: KernelOpts,
    /// `HOST_PATH[:GUEST_PATH]` specs.
    pub includes: Vec<String>,
    /// The command the agent runs (empty = only the report).
    pub cmd: Vec<String>,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    pub mem_mib: u64,
    pub timeouts: Timeouts,
    /// Show all kernel messages (no `quiet`).
    pub kernel_log: bool,
    /// Echo the console to stdout.
    pub echo: bool,
}

impl Default for BootOpts {
    fn default() -> Self {
        BootOpts {
            runner: RunnerKind::Auto,
            kernel: KernelOpts::default(),
            includes: Vec::new(),
            cmd: Vec::new(),
            append: Vec::new(),
            mem_mib: 512,
            timeouts: Timeouts {
                boot: Duration::from_secs(120),
                run: Duration::from_secs(600),
            },
            kernel_log: false,
            echo: true,
        }
    }
}

#[derive(Serialize)]
struct RunRecord<'a> {
    runner: String,
    kernel_key: &'a str,
    kernel_release: Option<&'a str>,
    cmdline: &'a str,
    command: &'a [String],
    status: String,
    exit_code: i32,
    ready_after_ms: Option<u128>,
    total_ms: u128,
}

/// Builds the kernel, agent and initramfs as needed and boots them.
pub fn boot(opts: &BootOpts) -> Result<(BootOutcome, PathBuf)> {
    // Check user input before any long step.
    let includes: Vec<Include> = opts
        .includes
        .iter()
        .map(|s| Include::parse(s))
        .collect::<Result<_, _>>()?;
    let kernel = kernel::build(&opts.kernel)?;
    let (runner, why) = runner::choose(opts.runner, &kernel.bzimage);
    eprintln!("runner: {runner} ({why})");
    let agent = agent::build()?;
    let run_dir = paths::new_run_dir().context("creating the run directory")?;
    let initramfs = run_dir.join("initramfs.cpio");
    image::build(&agent, &includes, &opts.cmd, &initramfs)?;

    let mut cmdline = BASE_CMDLINE.to_string();
    if !opts.kernel_log {
        cmdline.push_str(" quiet");
    }
    for word in &opts.append {
        cmdline.push(' ');
        cmdline.push_str(word);
    }
    let spec = BootSpec {
        bzimage: kernel.bzimage.clone(),
        initramfs,
        cmdline: cmdline.clone(),
        mem_mib: opts.mem_mib,
        serial_log: run_dir.join("serial.log"),
        echo: opts.echo,
        timeouts: opts.timeouts,
    };
    eprintln!(
        "boot: {} + initramfs, run directory {}",
        kernel.meta.release,
        run_dir.display()
    );
    let outcome = runner::boot(runner, &spec)?;
    let record = RunRecord {
        runner: runner.to_string(),
        kernel_key: &kernel.meta.key,
        kernel_release: outcome.release.as_deref(),
        cmdline: &cmdline,
        command: &opts.cmd,
        status: outcome.status.describe(),
        exit_code: outcome.status.exit_code(),
        ready_after_ms: outcome.ready_after.map(|d| d.as_millis()),
        total_ms: outcome.total.as_millis(),
    };
    std::fs::write(
        run_dir.join("run.json"),
        serde_json::to_vec_pretty(&record)?,
    )?;
    Ok((outcome, run_dir))
}

/// One-paragraph summary for the terminal.
pub fn summary(outcome: &BootOutcome, echoed: bool) -> String {
    let ready = outcome
        .ready_after
        .map(|d| format!("agent ready after {}", fmt_dur(d)))
        .unwrap_or_else(|| "agent never ready".into());
    let mut s = format!(
        "boot: {} ({ready}, total {}, runner {}); console log {}",
        outcome.status.describe(),
        fmt_dur(outcome.total),
        outcome.runner,
        outcome.serial_log.display()
    );
    if outcome.status.exit_code() != 0 && !echoed {
        s.push_str("\nlast console lines:\n");
        for l in &outcome.tail {
            s.push_str("  ");
            s.push_str(l);
            s.push('\n');
        }
    }
    s
}
