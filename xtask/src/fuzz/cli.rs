//! `cargo xtask fuzz`'s command line: a campaign, `--repro FILE`, or `--self-test`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use kcov_wire::program::{ProvokeKind, Target};

use super::{campaign, cmin, crashes, minimize, repro, selftest, FuzzOpts};
use crate::runner::RunnerKind;

/// `cargo xtask fuzz`'s arguments.
#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// vhost-net or vhost-vsock (with --repro: the target of a raw corpus file; a reproducer
    /// file names its own).
    pub target: Option<String>,
    /// Seconds the campaign runs, boots included.
    #[arg(long, default_value_t = 300)]
    pub time: u64,
    /// Corpus directory: read at the start (its programs seed the campaign), new entries
    /// written into it (named by content hash). Default: the campaign directory's corpus/.
    #[arg(long, value_name = "DIR")]
    pub corpus: Option<PathBuf>,
    /// Replay this reproducer (or corpus file) once and show the kernel's report.
    #[arg(long, value_name = "FILE")]
    pub repro: Option<PathBuf>,
    /// With --repro: find the fewest ops that still give the same report (kind and title),
    /// one VM per candidate, and write them next to FILE as NAME-min.txt.
    #[arg(long, requires = "repro")]
    pub minimize: bool,
    /// Minimise the corpus (--corpus DIR, only read) into --out NEW (default DIR-min): its
    /// programs replayed smallest first in one VM, only those that add PCs kept.
    #[arg(long, requires = "corpus", conflicts_with_all = ["repro", "self_test"])]
    pub cmin: bool,
    /// With --minimize: at most this many replays (the first, of FILE as it is, included).
    #[arg(long, default_value_t = 60, requires = "minimize")]
    pub max_replays: u32,
    /// Campaign directory (default target/testbed/fuzz/TARGET-MS); with --cmin the
    /// minimised corpus (default: the corpus directory's name + "-min", beside it).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The default kernel instead of the fuzz kernel (KASAN + lockdep, kernel-config/fuzz.config).
    #[arg(long)]
    pub plain_kernel: bool,
    /// Where to boot (see `cargo xtask boot --help`).
    #[arg(long, value_enum, default_value_t = RunnerKind::Auto)]
    pub runner: RunnerKind,
    /// Build from this kernel tree instead of Debian's linux-source-6.12.
    #[arg(long, value_name = "DIR")]
    pub kernel_src: Option<PathBuf>,
    /// Extra config fragment (repeatable), after the fuzz fragment.
    #[arg(long, value_name = "FILE")]
    pub fragment: Vec<PathBuf>,
    /// Extra kernel command-line word (repeatable).
    #[arg(long, value_name = "WORD")]
    pub append: Vec<String>,
    /// Mutation seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds from a VM's start until its agent must run.
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
    /// Echo the guests' consoles (a replay always does).
    #[arg(long)]
    pub echo: bool,
    /// Let `Provoke` ops run (they ask lkdtm for a kernel bug; the fuzz kernel has it): for
    /// replaying the self-test's reproducers. Mutants never hold such an op.
    #[arg(long)]
    pub provoke: bool,
    /// Prove the crash pipeline on this kernel: provoke a panic, a KASAN use-after-free, a
    /// WARN and a hung task (lkdtm), check each is recorded with its reproducer, the campaign
    /// goes on, and each replay shows the same report; exit 1 if not.
    #[arg(long, conflicts_with_all = ["repro", "corpus"])]
    pub self_test: bool,
    /// With --self-test: the kinds to provoke (panic, kasan-uaf, warn, hang; lockup and
    /// lockdep are slower: the guest stops and the host's watchdog ends it).
    #[arg(
        long,
        value_delimiter = ',',
        requires = "self_test",
        default_value = "panic,kasan-uaf,warn,hang"
    )]
    pub kinds: Vec<String>,
}

/// `cargo xtask fuzz`: exit 0 after a campaign (crashes are findings, listed), and for a
/// replay the guest's status (70 when the kernel panicked).
pub fn fuzz_cmd(args: &FuzzArgs) -> Result<std::process::ExitCode> {
    let target = match &args.target {
        Some(t) => Some(
            Target::from_name(t)
                .ok_or_else(|| anyhow!("unknown fuzz target {t:?}: vhost-net or vhost-vsock"))?,
        ),
        None => None,
    };
    if args.time == 0 {
        bail!("--time 0: expected a positive number of seconds");
    }
    if args.boot_timeout == 0 {
        bail!("--boot-timeout 0: expected a positive number of seconds");
    }
    let mut opts = FuzzOpts::new(target.unwrap_or(Target::VhostNet));
    opts.time = Duration::from_secs(args.time);
    opts.corpus = args.corpus.clone();
    opts.out = args.out.clone();
    opts.plain_kernel = args.plain_kernel;
    opts.runner = args.runner;
    opts.kernel.src = args.kernel_src.clone();
    opts.kernel.extra_fragments = args.fragment.clone();
    opts.append = args.append.clone();
    opts.seed = args.seed;
    opts.boot_timeout = Duration::from_secs(args.boot_timeout);
    opts.echo = args.echo;
    opts.provoke = args.provoke;
    if args.self_test {
        let Some(target) = target else {
            bail!("which device? cargo xtask fuzz vhost-net|vhost-vsock --self-test");
        };
        opts.target = target;
        let kinds = args
            .kinds
            .iter()
            .map(|k| {
                ProvokeKind::from_name(k).ok_or_else(|| {
                    anyhow!("unknown --kinds entry {k:?}: panic, kasan-uaf, warn, hang, lockup or lockdep")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if kinds.is_empty() {
            bail!("--kinds: at least one kind");
        }
        let report = selftest::run(&opts, &kinds)?;
        print!("{}", report.render());
        return Ok(if report.ok() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(1)
        });
    }
    if args.cmin {
        let (Some(target), Some(corpus)) = (target, &args.corpus) else {
            bail!("which device? cargo xtask fuzz vhost-net|vhost-vsock --cmin --corpus DIR");
        };
        opts.target = target;
        let out = args.out.clone().unwrap_or_else(|| {
            let mut name = corpus.file_name().unwrap_or_default().to_os_string();
            name.push("-min");
            corpus.with_file_name(name)
        });
        let c = cmin::cmin(&opts, corpus, &out)?;
        for (name, kind, title) in &c.crashed {
            println!("fuzz: cmin: left out {name}: it crashes the kernel ({kind}: {title})");
        }
        println!(
            "fuzz: cmin: {} files, {} distinct programs -> {} in {} ({} PCs, {} remote, seen in the replay; {} VMs, {:.0} s)",
            c.files,
            c.distinct,
            c.kept,
            c.out.display(),
            c.pcs,
            c.remote,
            c.vms,
            c.elapsed.as_secs_f64()
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let (Some(file), true) = (&args.repro, args.minimize) {
        if args.max_replays == 0 {
            bail!("--max-replays 0: expected a positive number");
        }
        let m = minimize::minimize(file, &opts, target, args.max_replays)?;
        println!(
            "fuzz: minimised {kind}: {title}\n{before} ops -> {after} in {replays} replays ({secs:.0} s){spent}:\n{program}fuzz: written to {file}",
            kind = m.kind,
            title = m.title,
            before = m.before,
            after = m.program.ops.len(),
            replays = m.replays,
            secs = m.elapsed.as_secs_f64(),
            spent = if m.budget_spent {
                " (the --max-replays budget ran out first)"
            } else {
                ""
            },
            program = m.program,
            file = m.file.display()
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(file) = &args.repro {
        opts.echo = true;
        let r = repro(file, &opts, target)?;
        match &r.report {
            Some((kind, title)) => {
                println!(
                    "fuzz: replay: {kind}: {title}\n--- the kernel's report ---\n{}",
                    r.excerpt
                );
            }
            None => println!("fuzz: replay: no kernel report ({})", r.status.describe()),
        }
        println!("fuzz: replay run directory {}", r.run_dir.display());
        let code = r.status.exit_code();
        return Ok(std::process::ExitCode::from(
            u8::try_from(code).unwrap_or(1),
        ));
    }
    if target.is_none() {
        bail!("which device? cargo xtask fuzz vhost-net|vhost-vsock [--time S] [--corpus DIR]");
    }
    let out = campaign(&opts)?;
    print!("{}", crashes::summary(&out.unique));
    println!(
        "fuzz: {} execs, {} PCs, {} corpus entries in {}, {} crashes ({} unique); {}",
        out.execs,
        out.pcs,
        out.corpus,
        out.corpus_dir.display(),
        out.crashes.len(),
        out.unique.len(),
        out.dir.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
