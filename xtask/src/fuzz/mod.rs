//! `cargo xtask fuzz vhost-net|vhost-vsock [--time S] [--corpus DIR]`: a coverage-guided
//! campaign whose executor is the guest agent (`guest-agent/src/fuzz.rs`), and
//! `cargo xtask fuzz --repro FILE`, which replays one reproducer and shows the kernel's report.
//!
//! The campaign boots VM after VM until `--time` is spent: each VM gets the corpus so far in
//! its initramfs (`kcov_wire::program::CORPUS_DIR`) and the plan `testbed.fuzz=TARGET` with
//! the time left; this file follows the VM's stream while it runs ([`stream`]: corpus files,
//! progress) and, when the VM ends in anything but a clean exit (panic, KASAN or lockdep
//! report, the agent's hang watchdog, a run timeout, a VM without status), saves the program
//! that was in flight as a reproducer with the console's report beside it, then boots the next
//! VM. Crashes are grouped by kind and normalised title ([`crashes`]: one directory per
//! unique crash, with a count and its first reproducers). The campaign directory holds
//! `crashes/`, `progress.tsv`, `coverage.svg` and, unless `--corpus` says otherwise,
//! `corpus/`. `--self-test` ([`selftest`]) provokes each kind of kernel bug once to prove
//! this pipeline; the command line is [`cli`].
//!
//! The guest kernel is the default one plus `kernel-config/fuzz.config` (KASAN, lockdep,
//! panic on oops; its own cache key), booted with `panic_on_warn=1`; `--plain-kernel` uses the
//! default kernel (faster to boot; `cargo xtask test` builds both).

pub mod bench;
pub mod cli;
pub mod cmin;
pub mod crashes;
pub mod minimize;
pub mod plot;
pub mod selftest;
pub mod stream;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kcov_wire::plan::FuzzPlan;
use kcov_wire::program::{Program, Target, CORPUS_DIR, HANG_STATUS};

use crate::boot::{self, BootOpts};
use crate::kernel::KernelOpts;
use crate::paths;
use crate::runner::{GuestStatus, RunnerKind, StopSignal, Timeouts};
use coverage::store::write_atomic;
pub use crashes::{parse_repro, repro_text, Crash, Unique};
use crashes::{report_excerpt, CrashLog, Occurrence};
use stream::{Campaign, Point};

/// The fuzz kernel's extra fragment (in `kernel-config/`).
pub const FUZZ_FRAGMENT: &str = "fuzz.config";
/// Command-line words for the fuzz kernel: a WARN (and so a KASAN report) panics; warnings
/// (lockdep) reach the console despite `quiet`; 4-level paging (`no5lvl`): QEMU's `-cpu max`
/// has LA57, and with 5-level paging 6.12's `identify_cpu()` clears the boot CPU's feature
/// words for a moment, so `pgtable_l5_enabled()` reads false, KASAN's shadow bounds shrink to
/// the 4-level ones, and an interrupt taken in that window reports its lock (in the 5-level
/// direct map, `ff11...`) as a `wild-memory-access` and panics the boot (seen 2 in about 60
/// boots, in `lockdep_lock` and `do_raw_spin_lock` under `handle_edge_irq`).
pub const FUZZ_CMDLINE: &[&str] = &[
    "panic_on_warn=1",
    "kasan.fault=panic",
    "loglevel=5",
    "no5lvl",
];
/// What a VM spends booting before the agent fuzzes, until one was measured (taken off the
/// agent's time; the KASAN kernel under TCG on a busy host boots in 7 to 25 s).
const BOOT_ALLOWANCE: Duration = Duration::from_secs(10);
/// A campaign stops after this many VMs in a row that ran no program.
const MAX_IDLE_VMS: u32 = 5;
/// A VM whose stream has been silent this long is hung (the agent sends a frame per program,
/// and its own watchdog ends a program after 10 s): the campaign kills it.
const STALL: Duration = Duration::from_secs(30);
/// A replay's run timeout (agent ready to VM end).
const REPLAY_RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Boots a replay may take when each crashes before the agent starts (then the last counts).
const REPLAY_BOOT_ATTEMPTS: u32 = 3;
/// How long past the campaign's end a VM may run before it is stopped (a guest clock that
/// runs slow under a loaded TCG host makes the agent's own budget late).
const DEADLINE_GRACE: Duration = Duration::from_secs(20);

/// What `cargo xtask fuzz` was asked.
#[derive(Clone, Debug)]
pub struct FuzzOpts {
    pub target: Target,
    pub time: Duration,
    /// Corpus directory (default: `<campaign dir>/corpus`).
    pub corpus: Option<PathBuf>,
    /// Campaign directory (default: `target/testbed/fuzz/<target>-<start ms>`).
    pub out: Option<PathBuf>,
    pub runner: RunnerKind,
    /// The kernel (the fuzz fragment is added unless `plain_kernel`).
    pub kernel: KernelOpts,
    pub plain_kernel: bool,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// Mutation seed of the first VM (the n-th VM uses seed + n).
    pub seed: u64,
    pub boot_timeout: Duration,
    /// Echo the guests' consoles.
    pub echo: bool,
    /// Let programs' `Provoke` ops run (`testbed.fuzz_provoke=1`): the self-test, and the
    /// replay of its reproducers.
    pub provoke: bool,
    /// At most this many seconds of mutation per VM (default: the campaign's time left).
    pub vm_time: Option<Duration>,
    /// Stop after the first VM that ends without a crash (the self-test: once its provoked
    /// bugs are through, one clean VM shows the campaign goes on).
    pub stop_on_clean_vm: bool,
    /// Stop after this many VMs.
    pub max_vms: Option<u32>,
}

impl FuzzOpts {
    /// Defaults for `target`: 60 s, auto runner, the fuzz kernel.
    pub fn new(target: Target) -> FuzzOpts {
        FuzzOpts {
            target,
            time: Duration::from_secs(60),
            corpus: None,
            out: None,
            runner: RunnerKind::Auto,
            kernel: KernelOpts::default(),
            plain_kernel: false,
            append: Vec::new(),
            seed: 1,
            boot_timeout: Duration::from_secs(120),
            echo: false,
            provoke: false,
            vm_time: None,
            stop_on_clean_vm: false,
            max_vms: None,
        }
    }

    /// The kernel the VMs boot: `kernel` plus the fuzz fragment unless `plain_kernel`.
    pub fn kernel(&self) -> KernelOpts {
        let mut k = self.kernel.clone();
        if !self.plain_kernel {
            k.extra_fragments
                .push(paths::fragment_dir().join(FUZZ_FRAGMENT));
        }
        k
    }

    fn cmdline(&self) -> Vec<String> {
        let mut words: Vec<String> = Vec::new();
        if !self.plain_kernel {
            words.extend(FUZZ_CMDLINE.iter().map(|w| w.to_string()));
        }
        words.extend(self.append.iter().cloned());
        words
    }
}

/// What a campaign did.
#[derive(Debug)]
pub struct Outcome {
    pub dir: PathBuf,
    pub corpus_dir: PathBuf,
    pub vms: u32,
    pub execs: u64,
    pub pcs: usize,
    /// The remote (vhost worker) PCs among `pcs`.
    pub remote: std::collections::HashSet<u64>,
    pub corpus: usize,
    /// Every crash, in order (each with its unique crash's directory).
    pub crashes: Vec<Crash>,
    /// The unique crashes (kind + normalised title) with their counts.
    pub unique: Vec<Unique>,
    /// Programs each VM ran, in order.
    pub vm_execs: Vec<u64>,
    /// Microseconds the agents fuzzed, of them sending the stream, and their executions.
    pub agent_us: u64,
    pub stream_us: u64,
    pub agent_execs: u64,
    pub elapsed: Duration,
    pub points: Vec<Point>,
    /// The runs (one per VM).
    pub runs: Vec<PathBuf>,
}

/// The kind of a VM's end and its title, or `None` for a clean end without a report.
pub fn classify(status: &GuestStatus, console: &str) -> Option<(String, String)> {
    let first = |marker: &str| {
        console
            .lines()
            .find(|l| l.contains(marker))
            .map(|l| l.trim().to_string())
    };
    let report = || -> Option<(String, String)> {
        for (marker, kind) in [
            ("BUG: KASAN", "kasan"),
            ("possible circular locking", "lockdep"),
            ("possible recursive locking", "lockdep"),
            ("inconsistent lock state", "lockdep"),
            ("possible irq lock inversion", "lockdep"),
            ("bad unlock balance detected", "lockdep"),
            ("held lock freed", "lockdep"),
            ("lock held when returning to user space", "lockdep"),
            ("suspicious RCU usage", "lockdep"),
            ("WARNING: ", "warn"),
            ("BUG: ", "bug"),
            ("general protection fault", "gpf"),
            ("INFO: task", "hung-task"),
        ] {
            if let Some(line) = first(marker) {
                return Some((kind.to_string(), line));
            }
        }
        None
    };
    match status {
        GuestStatus::Exited(0) => report(),
        GuestStatus::Exited(s) if *s == HANG_STATUS => Some((
            "hang".into(),
            first("did not finish within").unwrap_or_else(|| "the agent's watchdog".into()),
        )),
        GuestStatus::Exited(s) => {
            Some(("agent-exit".into(), format!("agent exited with status {s}")))
        }
        GuestStatus::Panicked(line) => {
            Some(report().unwrap_or_else(|| ("panic".into(), line.clone())))
        }
        GuestStatus::RunTimeout(_) | GuestStatus::Stopped(_) => {
            Some(report().unwrap_or_else(|| ("hang".into(), status.describe())))
        }
        GuestStatus::BootTimeout(_) => Some(("boot-timeout".into(), status.describe())),
        GuestStatus::NoStatus(_) | GuestStatus::HostFailed(_) => {
            Some(report().unwrap_or_else(|| ("vm-ended".into(), status.describe())))
        }
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Runs a campaign.
pub fn campaign(opts: &FuzzOpts) -> Result<Outcome> {
    let dir = match &opts.out {
        Some(d) => d.clone(),
        None => paths::workspace_root()
            .join("target/testbed/fuzz")
            .join(format!("{}-{}", opts.target, now_ms())),
    };
    std::fs::create_dir_all(dir.join("crashes"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let corpus_dir = opts.corpus.clone().unwrap_or_else(|| dir.join("corpus"));
    let mut camp = Campaign::new(&corpus_dir)
        .with_context(|| format!("corpus directory {}", corpus_dir.display()))?;
    eprintln!(
        "fuzz: {} for {} s, campaign directory {}, corpus {} ({} entries){}",
        opts.target,
        opts.time.as_secs(),
        dir.display(),
        corpus_dir.display(),
        camp.corpus.len(),
        if opts.plain_kernel {
            ", default kernel"
        } else {
            ", KASAN + lockdep kernel"
        }
    );
    let start = Instant::now();
    camp.points.push(Point {
        t: 0.0,
        execs: 0,
        pcs: 0,
        remote: 0,
        corpus: camp.corpus.len(),
    });
    let mut crashes = CrashLog::new(&dir.join("crashes"))?;
    let mut vm_execs = Vec::new();
    let mut runs = Vec::new();
    let mut vms = 0u32;
    let mut idle = 0u32;
    let mut boot_allowance = BOOT_ALLOWANCE;
    while start.elapsed() < opts.time {
        let left = opts.time.saturating_sub(start.elapsed());
        let mut fuzz_s = left.saturating_sub(boot_allowance).as_secs().max(1) as u32;
        if let Some(t) = opts.vm_time {
            fuzz_s = fuzz_s.min(t.as_secs().max(1) as u32);
        }
        let mut plan = boot::default_plan();
        plan.fuzz = Some(FuzzPlan {
            target: opts.target,
            time_s: fuzz_s,
            seed: opts.seed.wrapping_add(u64::from(vms)),
            provoke: opts.provoke,
        });
        let includes = if camp.corpus.is_empty() {
            Vec::new()
        } else {
            vec![format!("{}:{CORPUS_DIR}", corpus_dir.display())]
        };
        // The corpus replays first (tens of ms a program under TCG), then fuzz_s of mutation.
        let replay = Duration::from_millis(500) * camp.corpus.len() as u32;
        let bopts = BootOpts {
            runner: opts.runner,
            kernel: opts.kernel(),
            includes,
            append: opts.cmdline(),
            timeouts: Timeouts {
                boot: opts.boot_timeout,
                run: Duration::from_secs(u64::from(fuzz_s) + 60) + replay,
            },
            echo: opts.echo,
            plan,
            ..BootOpts::default()
        };
        let before = camp.execs();
        let deadline = start + opts.time + DEADLINE_GRACE;
        let end = run_vm(&bopts, &mut camp, start, deadline, opts, true)?;
        let (outcome, run_dir) = (&end.status, end.run_dir.clone());
        if let Some(d) = end.first_bytes {
            boot_allowance = d;
        }
        let ended_t = start.elapsed().as_secs_f64();
        vms += 1;
        vm_execs.push(camp.execs() - before);
        let inflight = camp.end_vm();
        runs.push(run_dir.clone());
        let console = std::fs::read_to_string(run_dir.join("serial.log")).unwrap_or_default();
        let verdict = if end.deadline && !end.stalled {
            eprintln!("fuzz: stopped the VM at the campaign's end (its stream was live)");
            None
        } else {
            end.verdict(&console)
        };
        let clean = verdict.is_none();
        if let Some((kind, title)) = verdict {
            let c = crashes.record(&Occurrence {
                target: opts.target,
                kind: &kind,
                title: &title,
                inflight: inflight.as_ref(),
                console: &console,
                vm: vms - 1,
                run_dir: &run_dir,
                ended_t,
                at_boot: inflight.is_none() && end.first_bytes.is_none(),
            })?;
            if let Some(i) = &inflight {
                if camp.drop_from_corpus(&i.data) {
                    eprintln!(
                        "fuzz: the crashing program was a corpus entry: removed from the corpus"
                    );
                }
            }
            eprintln!(
                "fuzz: CRASH {} ({}): {}{} -> {}{}",
                c.kind,
                if end.stalled {
                    "killed by the campaign".to_string()
                } else {
                    outcome.describe()
                },
                c.title,
                match c.caught_after {
                    Some(d) if c.has_repro() => format!(
                        " (its program ran {:.1} s before the VM ended)",
                        d.as_secs_f64()
                    ),
                    _ if c.at_boot => " (while booting: before the agent started)".to_string(),
                    _ => " (no program in flight)".to_string(),
                },
                c.dir.display(),
                if c.occurrence > 1 {
                    format!(" (seen {} times)", c.occurrence)
                } else {
                    String::new()
                }
            );
        }
        idle = if camp.execs() > before { 0 } else { idle + 1 };
        if idle >= MAX_IDLE_VMS && start.elapsed() < opts.time {
            eprintln!(
                "fuzz: {idle} VMs in a row ran no program: stopping the campaign (see the crashes)"
            );
            break;
        }
        if clean && opts.stop_on_clean_vm {
            eprintln!("fuzz: a VM ended without a crash: stopping the campaign (as asked)");
            break;
        }
        if opts.max_vms.is_some_and(|m| vms >= m) {
            eprintln!("fuzz: {vms} VMs: stopping the campaign (as asked)");
            break;
        }
    }
    let elapsed = start.elapsed();
    camp.points.push(Point {
        t: elapsed.as_secs_f64(),
        execs: camp.execs(),
        pcs: camp.pcs.len(),
        remote: camp.remote.len(),
        corpus: camp.corpus.len(),
    });
    let mut tsv = String::from("seconds\texecs\tpcs\tcorpus\n");
    for p in &camp.points {
        tsv.push_str(&format!(
            "{:.2}\t{}\t{}\t{}\n",
            p.t, p.execs, p.pcs, p.corpus
        ));
    }
    write_atomic(&dir.join("progress.tsv"), tsv.as_bytes())?;
    write_atomic(
        &dir.join("coverage.svg"),
        plot::svg(opts.target.name(), &camp.points).as_bytes(),
    )?;
    let out = Outcome {
        dir,
        corpus_dir,
        vms,
        execs: camp.execs(),
        pcs: camp.pcs.len(),
        remote: std::mem::take(&mut camp.remote),
        corpus: camp.corpus.len(),
        crashes: crashes.all.clone(),
        unique: crashes.unique.clone(),
        vm_execs,
        agent_us: camp.agent_us,
        stream_us: camp.stream_us,
        agent_execs: camp.agent_execs,
        elapsed,
        points: camp.points.clone(),
        runs,
    };
    eprintln!(
        "fuzz: done: {} execs in {:.0} s ({:.1}/s), {} distinct PCs, {} corpus entries, {} VMs, {} crashes ({} unique); plot {}",
        out.execs,
        elapsed.as_secs_f64(),
        out.execs as f64 / elapsed.as_secs_f64().max(1e-3),
        out.pcs,
        out.corpus,
        out.vms,
        out.crashes.len(),
        out.unique.len(),
        out.dir.join("coverage.svg").display()
    );
    Ok(out)
}

/// How a VM ended.
struct VmEnd {
    status: GuestStatus,
    run_dir: PathBuf,
    /// From its start to its first stream bytes.
    first_bytes: Option<Duration>,
    /// Killed by the campaign: its stream was silent for [`STALL`].
    stalled: bool,
    /// Killed by the campaign: past its end (plus [`DEADLINE_GRACE`]).
    deadline: bool,
}

impl VmEnd {
    /// The kind and title of the VM's end, or `None` for a clean one. A VM stopped for a
    /// silent stream is a hang, unless the kernel printed a report before it stopped (lockdep
    /// on a lock taken twice, say): that names the bug better than the silence does.
    fn verdict(&self, console: &str) -> Option<(String, String)> {
        if !self.stalled {
            return classify(&self.status, console);
        }
        Some(
            classify(&self.status, console)
                .filter(|(kind, _)| kind != "hang")
                .unwrap_or_else(|| {
                    (
                        "hang".to_string(),
                        format!(
                            "no stream frames for {} s: the guest stopped making progress",
                            STALL.as_secs()
                        ),
                    )
                }),
        )
    }
}

/// Boots one VM, following its stream into `camp` (and printing progress) while it runs;
/// kills it when its stream stalls or the campaign's `deadline` passes.
fn run_vm(
    bopts: &BootOpts,
    camp: &mut Campaign,
    start: Instant,
    deadline: Instant,
    opts: &FuzzOpts,
    progress: bool,
) -> Result<VmEnd> {
    camp.start_vm();
    let vm_start = Instant::now();
    let mut first_bytes = None;
    let mut last_bytes = Instant::now();
    let (mut stalled, mut past_deadline) = (false, false);
    let (dir_tx, dir_rx) = mpsc::channel::<PathBuf>();
    // The campaign's watchdog: every runner kills its VM when this is set.
    let stop = StopSignal::default();
    let mut bopts = bopts.clone();
    bopts.stop = Some(stop.clone());
    let vm = std::thread::Builder::new()
        .name("fuzz-vm".into())
        .spawn(move || {
            boot::boot_with(&bopts, |p| {
                let _ = dir_tx.send(p.to_path_buf());
            })
            .map(|(o, rd)| (o.status, rd.path().to_path_buf()))
        })
        .context("spawning the VM thread")?;
    let mut run_dir: Option<PathBuf> = None;
    let mut file: Option<std::fs::File> = None;
    let mut last_print = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let finished = vm.is_finished();
        if run_dir.is_none() {
            run_dir = dir_rx.try_recv().ok();
        }
        if let (Some(d), None) = (&run_dir, &file) {
            file = std::fs::File::open(d.join(coverage::run::STREAM_FILE)).ok();
        }
        if let Some(f) = &mut file {
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        first_bytes.get_or_insert_with(|| vm_start.elapsed());
                        last_bytes = Instant::now();
                        let t = start.elapsed().as_secs_f64();
                        for name in camp.feed(&buf[..n], t) {
                            if opts.echo {
                                eprintln!("fuzz: new corpus entry {name}");
                            }
                        }
                    }
                }
            }
            // At EOF for now: the file grows while the VM runs, and a later read goes on
            // from here.
        }
        if progress && (last_print.elapsed() >= Duration::from_secs(5) || finished) {
            let t = start.elapsed().as_secs_f64();
            eprintln!(
                "fuzz: {:>5.0} s  execs {:>7} ({:.1}/s)  PCs {:>6}  corpus {:>4}",
                t,
                camp.execs(),
                camp.execs() as f64 / t.max(1e-3),
                camp.pcs.len(),
                camp.corpus.len()
            );
            last_print = Instant::now();
        }
        if finished {
            break;
        }
        if !stalled && !past_deadline {
            if first_bytes.is_some() && last_bytes.elapsed() >= STALL {
                stop.stop(&format!("its stream was silent for {} s", STALL.as_secs()));
                stalled = true;
            } else if Instant::now() >= deadline {
                stop.stop("the campaign's time is up");
                past_deadline = true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(why) = camp.broken() {
        eprintln!("fuzz: warning: stopped reading the VM's stream: {why}");
    }
    let (status, run_dir) = vm.join().map_err(|_| anyhow!("the VM thread panicked"))??;
    Ok(VmEnd {
        status,
        run_dir,
        first_bytes,
        stalled,
        deadline: past_deadline,
    })
}

/// What a replay showed.
#[derive(Debug)]
pub struct Replay {
    pub status: GuestStatus,
    /// `classify` of the run: the report's kind and title, if any.
    pub report: Option<(String, String)>,
    /// The report excerpt of the console.
    pub excerpt: String,
    pub run_dir: PathBuf,
}

/// Larger files are no program (one is at most a few KiB): read neither as a reproducer nor
/// as a corpus entry.
pub const MAX_PROGRAM_FILE: usize = 1 << 20;

/// Reads the reproducer (or raw corpus file) `file`: its target and canonical program bytes.
pub fn read_repro(file: &Path, default_target: Option<Target>) -> Result<(Target, Vec<u8>)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if bytes.len() > MAX_PROGRAM_FILE {
        bail!("{}: {} bytes is no reproducer", file.display(), bytes.len());
    }
    parse_repro(&bytes, default_target)
}

/// Boots once with the reproducer `file` (its program alone, no mutation) and reads the
/// kernel's report off the console.
pub fn repro(file: &Path, opts: &FuzzOpts, default_target: Option<Target>) -> Result<Replay> {
    let (target, data) = read_repro(file, default_target)?;
    eprintln!(
        "fuzz: replaying {} on {target} ({} ops):\n{}",
        file.display(),
        Program::decode(&data).ops.len(),
        Program::decode(&data)
    );
    if !opts.provoke && Program::decode(&data).ops.iter().any(|op| op.is_provoke()) {
        eprintln!("fuzz: note: this program provokes a kernel bug on purpose (lkdtm); without --provoke the agent skips that op");
    }
    replay(target, &data, opts)
}

/// A VM that runs the programs in `corpus` (file name order) on `target` once each, without
/// mutation, with `run` from its agent's start to its end.
fn replay_boot_opts(target: Target, corpus: &Path, run: Duration, opts: &FuzzOpts) -> BootOpts {
    let mut plan = boot::default_plan();
    plan.fuzz = Some(FuzzPlan {
        target,
        time_s: 0,
        seed: opts.seed,
        provoke: opts.provoke,
    });
    BootOpts {
        runner: opts.runner,
        kernel: opts.kernel(),
        includes: vec![format!("{}:{CORPUS_DIR}", corpus.display())],
        append: opts.cmdline(),
        timeouts: Timeouts {
            boot: opts.boot_timeout,
            run,
        },
        echo: opts.echo,
        plan,
        ..BootOpts::default()
    }
}

/// Boots once with the program `data` on `target` (no mutation) and reads the kernel's report
/// off the console; a VM that crashes before its agent starts is booted again (the program
/// never ran), up to [`REPLAY_BOOT_ATTEMPTS`] boots.
pub fn replay(target: Target, data: &[u8], opts: &FuzzOpts) -> Result<Replay> {
    let tmp = tempfile::tempdir()?;
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus)?;
    std::fs::write(corpus.join("repro.bin"), data)?;
    // One program, which the agent's watchdog ends after 10 s: a minute is plenty (a kernel
    // that stopped altogether is stopped sooner, after STALL of silence).
    let bopts = replay_boot_opts(target, &corpus, REPLAY_RUN_TIMEOUT, opts);
    // The replay follows the VM's stream like a campaign does (quietly): a kernel that
    // stopped is stopped after the same STALL of silence, not at the run timeout.
    let quiet = FuzzOpts {
        echo: false,
        ..opts.clone()
    };
    // A kernel report before the agent came up is the boot's, not the program's: boot again,
    // a bounded number of times, and say so.
    let mut attempt = 1;
    let (end, console, report) = loop {
        let mut seen = Campaign::new(&tmp.path().join("seen"))?;
        let start = Instant::now();
        let deadline = start + opts.boot_timeout + REPLAY_RUN_TIMEOUT + DEADLINE_GRACE;
        let end = run_vm(&bopts, &mut seen, start, deadline, &quiet, false)?;
        let console = std::fs::read_to_string(end.run_dir.join("serial.log")).unwrap_or_default();
        let report = end.verdict(&console);
        match &report {
            Some((kind, title)) if end.first_bytes.is_none() && attempt < REPLAY_BOOT_ATTEMPTS => {
                eprintln!(
                    "fuzz: replay: the VM crashed before the agent started ({kind}: {title}; {}): the program never ran, booting again ({} of {REPLAY_BOOT_ATTEMPTS})",
                    end.run_dir.display(),
                    attempt + 1
                );
                attempt += 1;
            }
            _ => break (end, console, report),
        }
    };
    Ok(Replay {
        excerpt: if report.is_some() {
            report_excerpt(&console)
        } else {
            String::new()
        },
        status: end.status,
        report,
        run_dir: end.run_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_vm_ends() {
        assert_eq!(classify(&GuestStatus::Exited(0), "all fine\n"), None);
        let kasan = "x\n==================\nBUG: KASAN: slab-use-after-free in vhost_worker+0x1/0x2\nRead of size 8\nKernel panic - not syncing: KASAN: panic_on_warn set ...\n";
        let (kind, title) = classify(
            &GuestStatus::Panicked("Kernel panic - not syncing".into()),
            kasan,
        )
        .unwrap();
        assert_eq!(kind, "kasan");
        assert!(title.starts_with("BUG: KASAN: slab-use-after-free"));
        assert!(report_excerpt(kasan).contains("Read of size 8"));
        assert_eq!(
            classify(
                &GuestStatus::Exited(HANG_STATUS),
                "fuzz: input 7 did not finish within 10000 ms (hang)\n"
            )
            .unwrap()
            .0,
            "hang"
        );
        assert_eq!(
            classify(&GuestStatus::RunTimeout(Duration::from_secs(9)), "")
                .unwrap()
                .0,
            "hang"
        );
        assert_eq!(
            classify(
                &GuestStatus::Panicked("Kernel panic - not syncing: No working init found.".into()),
                "Kernel panic - not syncing: No working init found.\n"
            )
            .unwrap()
            .0,
            "panic"
        );
        let lockdep = "WARNING: possible circular locking dependency detected\n";
        assert_eq!(
            classify(&GuestStatus::Exited(0), lockdep).unwrap().0,
            "lockdep"
        );
        // lkdtm SPINLOCKUP twice, as this kernel prints it: lockdep's first report (it turns
        // itself off after one), then the guest stops and the host stops the VM.
        let twice = "testbed-agent: fuzz: provoking lockdep (lkdtm SPINLOCKUP)\n\n================================================\nWARNING: lock held when returning to user space!\n6.12.118 #8 Not tainted\n------------------------------------------------\nfuzz-exec/34 is leaving the kernel with locks still held!\n1 lock held by fuzz-exec/34:\n #0: ffffffff826277d8 (lock_me_up){+.+.}-{2:2}, at: lkdtm_do_action+0x50/0x5b\nlkdtm: Performing direct entry SPINLOCKUP\n";
        let (kind, title) = classify(&GuestStatus::Stopped("stalled".into()), twice).unwrap();
        assert_eq!(kind, "lockdep");
        assert_eq!(title, "WARNING: lock held when returning to user space!");
        assert_eq!(
            classify(
                &GuestStatus::Exited(0),
                "WARNING: possible recursive locking detected\nBUG: spinlock recursion\n"
            )
            .unwrap()
            .0,
            "lockdep"
        );
        assert_eq!(
            classify(
                &GuestStatus::Exited(0),
                "WARNING: lock held when returning to user space!\n"
            )
            .unwrap()
            .0,
            "lockdep"
        );
    }
}
