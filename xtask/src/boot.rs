//! `cargo xtask boot`: build what is missing, boot, report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use images::Include;
use kcov_wire::plan::{Plan, PlanError, Transport};

use crate::kernel::{self, KernelOpts};
use crate::paths;
use crate::progress::fmt_dur;
use crate::runner::{self, BootOutcome, BootSpec, RunnerKind, Timeouts, VsockReceiver};
use crate::runs::{self, RunDir};
use crate::{agent, image};
use coverage::run::RunRecord;

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
    /// Guest vCPUs (every runner).
    pub vcpus: u8,
    pub timeouts: Timeouts,
    /// Show all kernel messages (no `quiet`).
    pub kernel_log: bool,
    /// Echo the console to stdout.
    pub echo: bool,
    /// The agent's plan (rendered as `testbed.*` kernel command-line words, kcov-wire/src/plan.rs).
    pub plan: Plan,
    /// A virtio-net device on a host tap (kvm runner only).
    pub net: Option<vmm::devices::virtio::net::NetSpec>,
    /// Host-side vhost-net coverage into the run store (kvm runner with `net`).
    pub host_kcov: bool,
    /// Extra words for the nested runner's L1 kernel command line.
    pub l1_append: Vec<String>,
    /// QEMU `-cpu` model of the nested runner's L1 (None: `max`, which emulates SVM).
    pub l1_cpu: Option<String>,
    /// Stops the VM from another thread (a fuzz campaign's watchdog); None: its timeouts only.
    pub stop: Option<crate::runner::StopSignal>,
}

/// The plan every boot starts from: [`Plan::default`] with the stream over vsock (every run
/// has a virtio-vsock device; `--transport console` is the fallback for guests without one).
pub fn default_plan() -> Plan {
    Plan {
        transport: Transport::Vsock,
        ..Plan::default()
    }
}

/// The agent's plan as the command line spells it (`--workload`, `--cover`, `--area`,
/// `--transport`, `--param`), made a typed [`Plan`] by [`PlanOpts::to_plan`] with the agent's
/// own checks, before anything is built.
#[derive(Clone, Debug, Default)]
pub struct PlanOpts {
    /// Workloads in order (`testbed.workloads=`).
    pub workloads: Vec<String>,
    /// `pc`, `cmp` or `off` (`testbed.cover=`).
    pub cover: Option<String>,
    /// kcov area size in words (`testbed.area=`).
    pub area: Option<u64>,
    /// `console` or `vsock` (`testbed.transport=`).
    pub transport: Option<String>,
    /// Further `KEY=VALUE` plan settings (`testbed.KEY=VALUE`).
    pub params: Vec<String>,
}

impl PlanOpts {
    /// The typed plan, starting from [`default_plan`]; a bad word, value or a key given twice
    /// is the agent's own error.
    pub fn to_plan(&self) -> Result<Plan, PlanError> {
        let mut plan = default_plan();
        let mut settings: Vec<(String, String)> = Vec::new();
        if !self.workloads.is_empty() {
            settings.push(("workloads".into(), self.workloads.join(",")));
        }
        if let Some(c) = &self.cover {
            settings.push(("cover".into(), c.clone()));
        }
        if let Some(a) = self.area {
            settings.push(("area".into(), a.to_string()));
        }
        if let Some(t) = &self.transport {
            settings.push(("transport".into(), t.clone()));
        }
        for p in &self.params {
            let (k, v) = p.split_once('=').ok_or_else(|| PlanError::Malformed {
                word: format!("testbed.{p}"),
            })?;
            settings.push((k.to_string(), v.to_string()));
        }
        for (i, (k, v)) in settings.iter().enumerate() {
            if settings[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(PlanError::Duplicate { key: k.clone() });
            }
            plan.set(k, v)?;
        }
        Ok(plan)
    }
}

/// Guest memory the runners accept, in MiB: enough for the kernel and initramfs, at most the
/// host's memory.
pub const MIN_MEM_MIB: u64 = 64;

/// Refuses memory sizes and timeouts no run can use, before anything is built.
fn check_limits(opts: &BootOpts) -> Result<()> {
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(u64::MAX);
    if opts.mem_mib < MIN_MEM_MIB || opts.mem_mib > host_mib {
        anyhow::bail!(
            "--mem {}: expected {MIN_MEM_MIB} to {host_mib} MiB (this host's memory)",
            opts.mem_mib
        );
    }
    if opts.timeouts.boot.is_zero() {
        anyhow::bail!("--boot-timeout 0: expected a positive number of seconds");
    }
    if opts.timeouts.run.is_zero() {
        anyhow::bail!("--timeout 0: expected a positive number of seconds");
    }
    Ok(())
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
            vcpus: 1,
            timeouts: Timeouts {
                boot: Duration::from_secs(120),
                run: Duration::from_secs(600),
            },
            kernel_log: false,
            echo: true,
            plan: default_plan(),
            net: None,
            host_kcov: false,
            l1_append: Vec::new(),
            l1_cpu: None,
            stop: None,
        }
    }
}

/// Writes `run.json` atomically (a reader never sees half a file).
fn write_record(run_dir: &Path, record: &RunRecord) -> Result<()> {
    record.write(run_dir).with_context(|| {
        format!(
            "writing {}",
            run_dir.join(coverage::run::RUN_JSON).display()
        )
    })
}

/// Builds the kernel, agent and initramfs as needed and boots them. The run directory stays
/// marked in use (`cargo xtask runs prune` leaves it alone) until the returned [`RunDir`] is
/// dropped.
pub fn boot(opts: &BootOpts) -> Result<(BootOutcome, RunDir)> {
    boot_with(opts, |_| {})
}

/// [`boot`], telling `on_run_dir` the run directory once it exists, before the VM starts
/// (`cargo xtask fuzz` follows the stream while the VM runs).
pub fn boot_with(opts: &BootOpts, on_run_dir: impl FnOnce(&Path)) -> Result<(BootOutcome, RunDir)> {
    // Check user input before any long step.
    let includes: Vec<Include> = opts
        .includes
        .iter()
        .map(|s| Include::parse(s))
        .collect::<Result<_, _>>()?;
    if opts.net.is_some() && opts.runner == RunnerKind::Qemu {
        anyhow::bail!(
            "--net needs the kvm runner (our VMM's virtio-net device; the qemu runner has no \
             vhost-user-net backend for it yet)"
        );
    }
    let max_cpus = vmm::arch::x86_64::mptable::max_cpus();
    if opts.vcpus == 0 || usize::from(opts.vcpus) > usize::from(max_cpus) {
        anyhow::bail!("--vcpus {}: expected 1 to {max_cpus}", opts.vcpus);
    }
    check_limits(opts)?;
    // auto never picks nested, so L1 options need it asked for.
    if (!opts.l1_append.is_empty() || opts.l1_cpu.is_some()) && opts.runner != RunnerKind::Nested {
        anyhow::bail!("--l1-append and --l1-cpu are for the nested runner (--runner nested)");
    }
    // The agent's plan, parsed here exactly as the agent will parse it: a typo fails now,
    // not after a kernel build and a boot.
    let mut plan = opts.plan.clone();
    if plan.workloads.is_empty() && opts.cmd.is_empty() && plan.fuzz.is_none() {
        // Nothing to stream: no transport word on the command line.
        plan.transport = Plan::default().transport;
    }
    let words: Vec<String> = plan
        .words()
        .into_iter()
        .chain(plan.kernel_words())
        .chain(opts.append.clone())
        .collect();
    // `--append` may carry plan words too: the whole line is parsed as the agent will.
    let plan = Plan::parse(&words.join(" "), !opts.cmd.is_empty())
        .map_err(|e| anyhow::anyhow!("the agent's plan: {e}"))?;
    let kernel = kernel::build(&opts.kernel)?;
    let (runner, why) = runner::choose(opts.runner, &kernel.bzimage);
    eprintln!("runner: {runner} ({why})");
    if opts.net.is_some() && !matches!(runner, RunnerKind::Kvm | RunnerKind::Nested) {
        anyhow::bail!(
            "--net needs our VMM (kvm or nested runner; the qemu runner has no \
             vhost-user-net backend for it yet), and the {runner} runner was chosen ({why}); \
             use --runner nested, or run on a host with hardware KVM"
        );
    }
    let nested_l1 = match runner {
        RunnerKind::Nested => Some(nested_parts(&opts.kernel)?),
        _ => None,
    };
    let agent = agent::build()?;
    let image_bytes = image::build_bytes(&agent, &includes, &opts.cmd)?;
    let run_dir = runs::create()?;
    on_run_dir(&run_dir);

    let mut cmdline = BASE_CMDLINE.to_string();
    if !opts.kernel_log {
        cmdline.push_str(" quiet");
    }
    if runner == RunnerKind::Qemu {
        cmdline.push(' ');
        cmdline.push_str(runner::qemu::GUEST_CMDLINE);
    }
    for word in &words {
        cmdline.push(' ');
        cmdline.push_str(word);
    }
    // The image goes into the content-addressed cache and run.json names it, both under the
    // cache's shared lock: a concurrent prune either sees the entry named or waits.
    let cache_dir = paths::initramfs_cache_dir();
    let cache_lock = image::lock_cache(&cache_dir, false)?;
    let initramfs = image::cache(&cache_dir, image_bytes)?;
    let mut record = RunRecord {
        host_kernel_key: nested_l1.as_ref().map(|(l1, _, _)| l1.meta.key.clone()),
        runner: Some(runner.to_string()),
        kernel_key: Some(kernel.meta.key.clone()),
        kernel_release: None,
        cmdline: Some(cmdline.clone()),
        command: opts.cmd.clone(),
        initramfs: Some(initramfs.reference()),
        status: Some("running (the VM has not ended yet, or xtask was killed)".into()),
        exit_code: None,
        ready_after_ms: None,
        total_ms: None,
    };
    // Before the VM starts: a killed boot still names its kernel, so reports of whatever was
    // streamed are checked against the right vmlinux.
    write_record(&run_dir, &record)?;
    drop(cache_lock);
    let spec = BootSpec {
        bzimage: kernel.bzimage.clone(),
        initramfs: initramfs.path.clone(),
        cmdline: cmdline.clone(),
        mem_mib: opts.mem_mib,
        vcpus: opts.vcpus,
        serial_log: run_dir.join("serial.log"),
        echo: opts.echo,
        timeouts: opts.timeouts,
        vsock: Some(runner::VsockSpec::in_dir(&run_dir)),
        net: opts.net.clone(),
        host_kcov: opts.host_kcov,
        nested: nested_l1
            .as_ref()
            .map(|(l1, vmm, init)| runner::nested::NestedSpec {
                l1_kernel: l1.bzimage.clone(),
                vmm: vmm.clone(),
                init: init.clone(),
                relay_ports: vec![plan.port],
                l1_append: opts.l1_append.clone(),
                l1_cpu: opts.l1_cpu.clone().unwrap_or_else(|| "max".into()),
            }),
        stop: opts.stop.clone(),
    };
    eprintln!(
        "boot: {} + initramfs {} ({}), run directory {}",
        kernel.meta.release,
        &initramfs.sha256[..12],
        runs::human_bytes(initramfs.len()),
        run_dir.display()
    );
    let receiver = match plan.transport {
        Transport::Vsock => spec
            .vsock
            .as_ref()
            .map(|v| VsockReceiver::start(&v.uds, plan.port, &run_dir.join(STREAM_FILE)))
            .transpose()?,
        _ => None,
    };
    // Someone may have cleared the cache since: the runner must find the entry.
    if initramfs.ensure_present()? {
        eprintln!(
            "boot: initramfs cache entry {} was removed meanwhile; wrote it again",
            initramfs.path.display()
        );
    }
    let outcome = runner::boot(runner, &spec);
    if let Some(r) = receiver {
        r.finish()?;
    }
    let mut outcome = outcome?;
    outcome.host_vmlinux = nested_l1.as_ref().map(|(l1, _, _)| l1.vmlinux.clone());
    record.kernel_release = outcome.release.clone();
    record.status = Some(outcome.status.describe());
    record.exit_code = Some(outcome.status.exit_code());
    record.ready_after_ms = outcome.ready_after.map(|d| d.as_millis());
    record.total_ms = Some(outcome.total.as_millis());
    write_record(&run_dir, &record)?;
    Ok((outcome, run_dir))
}

/// The nested runner's L1 pieces: its kernel (same source as the guest's, default fragments
/// plus `nested-l1.config`; the user's extra fragments are for the kernel under test), the
/// static vmm and the L1 init.
pub fn nested_parts(guest: &KernelOpts) -> Result<(kernel::Kernel, PathBuf, PathBuf)> {
    let l1_opts = KernelOpts {
        src: guest.src.clone(),
        fragments: Vec::new(),
        extra_fragments: vec![paths::fragment_dir().join(runner::nested::L1_FRAGMENT)],
        jobs: guest.jobs,
    };
    eprintln!(
        "nested: L1 host kernel (guest kernel + {})",
        runner::nested::L1_FRAGMENT
    );
    let l1 = kernel::build(&l1_opts).context("building the nested runner's L1 kernel")?;
    let vmm = agent::build_static_vmm()?;
    let init = agent::build_nested_init()?;
    Ok((l1, vmm, init))
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
    let mut tail = |title: String, lines: &[String]| {
        s.push_str(&format!("\n{title}:\n"));
        for l in lines {
            s.push_str("  ");
            s.push_str(l);
            s.push('\n');
        }
    };
    let failed = outcome.status.exit_code() != 0;
    if failed && !echoed {
        let level = if outcome.l1_log.is_some() {
            " (L2)"
        } else {
            ""
        };
        tail(format!("last console lines{level}"), &outcome.tail);
    }
    if let (Some(log), true) = (&outcome.l1_log, failed) {
        tail(
            format!("last console lines (L1, {})", log.display()),
            &outcome.l1_tail,
        );
    }
    s
}

pub use coverage::run::StreamSummary;
use coverage::run::STREAM_FILE;

/// Name of the host coverage entry in the run store.
pub const HOST_COVERAGE_NAME: &str = "vhost-net";
/// The host PCs as text in the run directory (one hex PC per line, sorted, unique).
pub const HOST_PCS_FILE: &str = "host-vhost-net.pcs.txt";

/// Keeps the host-side coverage of a run (`--host-kcov`): always as text in the run
/// directory, and, when the run has a guest stream, in the run store next to the guest's
/// workloads, labelled source=host (never symbolized against the guest vmlinux). Returns the
/// line to show the user.
pub fn store_host_coverage(
    run_dir: &Path,
    hc: &vmm::host_kcov::HostCoverage,
    host_vmlinux: Option<&Path>,
) -> Result<String> {
    // The host kernel's identity, so reports map the PCs onto the right vmlinux.
    let kernel_build_id = match host_vmlinux {
        Some(p) => Some(
            coverage::Vmlinux::read_notes(p)
                .with_context(|| format!("reading the host kernel {}", p.display()))?
                .build_id
                .map(|b| b.to_hex())
                .with_context(|| format!("{} has no build-id", p.display()))?,
        ),
        None => None,
    };
    let text = run_dir.join(HOST_PCS_FILE);
    std::fs::write(&text, hc.to_text()).with_context(|| format!("writing {}", text.display()))?;
    let mut msg = format!(
        "host coverage: {} of the host kernel's vhost-net worker -> {}",
        hc.summary(),
        text.display()
    );
    if run_dir.join(STREAM_FILE).is_file() {
        crate::run_kernel::open_or_collect(run_dir, true)?;
        let info = coverage::store::HostCoverageInfo {
            kernel_release: Some(hc.kernel_release.clone()),
            kernel_build_id,
            common_handle: hc.handle,
            mode: wire_mode(hc.coverage.mode),
            overflow: hc.coverage.overflow,
        };
        let dir = coverage::run::store_dir(run_dir);
        coverage::store::add_host_coverage(&dir, HOST_COVERAGE_NAME, info, hc.coverage.pcs())
            .with_context(|| format!("adding host coverage to {}", dir.display()))?;
        msg.push_str(" and the run store (source=host)");
    }
    Ok(msg)
}

/// The wire mode of a trace mode: the vmm reports host coverage in `frontends::kcov` terms,
/// the store keeps `kcov_wire`'s.
fn wire_mode(mode: vmm::host_kcov::TraceMode) -> kcov_wire::KcovMode {
    match mode {
        vmm::host_kcov::TraceMode::Pc => kcov_wire::KcovMode::Pc,
        vmm::host_kcov::TraceMode::Cmp => kcov_wire::KcovMode::Cmp,
    }
}

/// Reassembles the console stream lines of `serial_log` into `<run_dir>/coverage.kcw` (a vsock
/// stream is already there), collects the stream into the run's store with the kernel the run
/// booted, and summarizes it. `Ok(None)` when the agent sent no stream.
pub fn collect_stream(run_dir: &Path, serial_log: &Path) -> Result<Option<StreamSummary>> {
    use std::io::BufRead;
    let file = std::fs::File::open(serial_log)
        .with_context(|| format!("reading {}", serial_log.display()))?;
    let mut asm = kcov_wire::console::LineAssembler::new();
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let _ = asm.push(line.trim_end_matches(['\n', '\r']));
    }
    let out = run_dir.join(STREAM_FILE);
    let mut console_error = None;
    if asm.lines() > 0 {
        let (bytes, err) = asm.finish();
        std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
        console_error = err;
    } else if !out.is_file() {
        // No console stream and no vsock stream.
        return Ok(None);
    }
    let store = crate::run_kernel::open_or_collect(run_dir, true)?;
    let bytes = std::fs::metadata(&out).map_or(0, |m| m.len());
    let mut summary = StreamSummary::from_meta(&store.meta, bytes);
    if let Some(e) = console_error {
        summary.problem = Some(format!("console stream: {e}"));
    }
    Ok(Some(summary))
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use kcov_wire::{encode, Done, Frame, Hello, KcovMode};

    fn stream(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| encode(f).unwrap()).collect()
    }

    #[test]
    fn host_coverage_lands_beside_the_guest_store() {
        let hc = vmm::host_kcov::HostCoverage {
            handle: 0x42,
            kernel_release: "6.8.0-host".into(),
            coverage: frontends_coverage(&[
                0xffff_ffff_8100_0020,
                0xffff_ffff_8100_0010,
                0xffff_ffff_8100_0020,
            ]),
        };
        // Without a guest stream: only the text file.
        let bare = tempfile::tempdir().unwrap();
        let m = store_host_coverage(bare.path(), &hc, None).unwrap();
        assert!(m.contains("3 PCs (2 distinct)"), "{m}");
        assert!(!m.contains("run store"), "{m}");
        let text = std::fs::read_to_string(bare.path().join(HOST_PCS_FILE)).unwrap();
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            ["0xffffffff81000010", "0xffffffff81000020"]
        );
        // With one: also in the store, labelled host, apart from the guest's PCs.
        let run = tempfile::tempdir().unwrap();
        let bytes = crate::test_support::workload_stream(&[0xffff_ffff_8200_0000], 0);
        std::fs::write(run.path().join(STREAM_FILE), bytes).unwrap();
        let m = store_host_coverage(run.path(), &hc, None).unwrap();
        assert!(m.contains("run store (source=host)"), "{m}");
        let store = coverage::store::Store::open(&coverage::run::store_dir(run.path())).unwrap();
        let host = store.host_pcs().unwrap();
        assert_eq!(host.len(), 1);
        assert_eq!(
            host[0].1.pcs,
            [0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020]
        );
        let guest = store.all_pcs(None).unwrap();
        assert!(
            guest.iter().all(|(_, p)| p.pcs == [0xffff_ffff_8200_0000]),
            "{guest:?}"
        );
    }

    fn frontends_coverage(words: &[u64]) -> vmm::host_kcov::Coverage {
        vmm::host_kcov::Coverage {
            mode: vmm::host_kcov::TraceMode::Pc,
            words: words.to_vec(),
            overflow: false,
            reported_count: words.len() as u64,
        }
    }

    #[test]
    fn plan_words() {
        let p = PlanOpts {
            workloads: vec!["vhost-net-tx".into(), "vhost-vsock".into()],
            cover: Some("off".into()),
            area: Some(512),
            transport: None,
            params: vec!["frames=9".into()],
        };
        assert_eq!(
            p.to_plan().unwrap().words(),
            [
                "testbed.workloads=vhost-net-tx,vhost-vsock",
                "testbed.cover=off",
                "testbed.area=512",
                "testbed.transport=vsock",
                "testbed.frames=9"
            ]
        );
        assert_eq!(PlanOpts::default().to_plan(), Ok(default_plan()));
        // The agent's checks, on the host, before anything is built.
        let bad = |p: PlanOpts| p.to_plan().unwrap_err().to_string();
        let e = bad(PlanOpts {
            workloads: vec!["vhost-nett-tx".into()],
            ..PlanOpts::default()
        });
        assert!(e.contains("unknown workload \"vhost-nett-tx\""), "{e}");
        let e = bad(PlanOpts {
            params: vec!["frames=1".into(), "frames=2".into()],
            ..PlanOpts::default()
        });
        assert!(e.contains("testbed.frames given twice"), "{e}");
        let e = bad(PlanOpts {
            params: vec!["frames".into()],
            ..PlanOpts::default()
        });
        assert!(e.contains("malformed plan word"), "{e}");
    }

    #[test]
    fn stream_is_reassembled_from_the_console_log() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = stream(&[
            Frame::Hello(Hello {
                agent_version: "t".into(),
                kernel_release: "6.12".into(),
                kcov_mode: KcovMode::Pc,
                area_words: 512,
                common_handle: 1,
            }),
            Frame::Done(Done { status: 4 }),
        ]);
        let mut w = kcov_wire::console::LineWriter::new(Vec::new());
        w.write_all(&bytes).unwrap();
        let lines = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, format!("boot noise\r\n{lines}@@TESTBED-EXIT@@ 0\n")).unwrap();
        let r = collect_stream(dir.path(), &log).unwrap().unwrap();
        assert_eq!(r.done, Some(4));
        assert_eq!(std::fs::read(dir.path().join(STREAM_FILE)).unwrap(), bytes);
        // A run without any stream (neither console lines nor a vsock file).
        let empty = tempfile::tempdir().unwrap();
        let log = empty.path().join("serial.log");
        std::fs::write(&log, "no stream here\n").unwrap();
        assert!(collect_stream(empty.path(), &log).unwrap().is_none());
    }
}
