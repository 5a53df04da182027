//! `cargo xtask`: the testbed's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use xtask::boot::{self, BootOpts};
use xtask::kernel::{self, KernelOpts};
use xtask::runner::{RunnerKind, Timeouts};
use xtask::{agent, image, test};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "kcov remote-coverage testbed for vhost: build, boot, test"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct KernelArgs {
    /// Build from this kernel tree instead of Debian's linux-source-6.12 (out of tree, the tree stays clean).
    #[arg(long, value_name = "DIR")]
    kernel_src: Option<PathBuf>,
    /// Extra config fragment merged after kernel-config/*.config (repeatable).
    #[arg(long, value_name = "FILE")]
    fragment: Vec<PathBuf>,
    /// Parallel make jobs (default: number of CPUs).
    #[arg(long, short = 'j', default_value_t = 0)]
    jobs: usize,
}

impl KernelArgs {
    fn opts(&self) -> KernelOpts {
        KernelOpts {
            src: self.kernel_src.clone(),
            fragments: Vec::new(),
            extra_fragments: self.fragment.clone(),
            jobs: self.jobs,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kcov guest kernel (cached by content under ~/.cache/kcov-testbed).
    Kernel {
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Build the static guest agent.
    Agent,
    /// Coverage-guided fuzzing of the guest's vhost-net or vhost-vsock (the agent executes),
    /// or --repro FILE: replay one reproducer and show the kernel's report.
    Fuzz(xtask::fuzz::cli::FuzzArgs),
    /// Write an initramfs with the agent as /init.
    Image {
        /// Output file.
        #[arg(long, short, default_value = "initramfs.cpio")]
        output: PathBuf,
        /// Add HOST_PATH at GUEST_PATH (default /<file name>); directories are added recursively.
        #[arg(long, value_name = "HOST_PATH[:GUEST_PATH]")]
        include: Vec<String>,
        /// Command for the agent to run in the guest.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Build what is missing and boot the guest; exits with the guest's status.
    Boot {
        /// Where to boot: auto picks kvm where hardware KVM can boot the kernel, else qemu, and
        /// says why; it never picks nested (our VMM inside a QEMU TCG guest with KVM: the kvm
        /// path anywhere, but slower than qemu).
        #[arg(long, value_enum, default_value_t = RunnerKind::Auto)]
        runner: RunnerKind,
        #[command(flatten)]
        kernel: KernelArgs,
        /// Add HOST_PATH at GUEST_PATH (default /<file name>) to the initramfs (repeatable).
        #[arg(long, value_name = "HOST_PATH[:GUEST_PATH]")]
        include: Vec<String>,
        /// Extra kernel command-line word (repeatable).
        #[arg(long, value_name = "WORD")]
        append: Vec<String>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 512)]
        mem: u64,
        /// Guest vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u8,
        /// Seconds from start until the agent must be running.
        #[arg(long, default_value_t = 120)]
        boot_timeout: u64,
        /// Seconds the agent may run after it started.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Show all kernel messages (default: quiet, warnings and panics only).
        #[arg(long)]
        kernel_log: bool,
        /// Do not echo the guest console (it is still logged in the run directory).
        #[arg(long)]
        no_echo: bool,
        /// Workload for the agent, in order (repeatable): vhost-net-tx, vhost-net-rx, vhost-vsock, cmd.
        #[arg(long, value_name = "NAME")]
        workload: Vec<String>,
        /// kcov remote trace mode; off = no remote enable (negative control).
        #[arg(long, value_name = "pc|cmp|off")]
        cover: Option<String>,
        /// kcov area size in u64 words.
        #[arg(long, value_name = "WORDS")]
        area: Option<u64>,
        /// Where the agent streams coverage: vsock (default) or console (marker lines).
        #[arg(long, value_name = "console|vsock")]
        transport: Option<String>,
        /// Workload parameter, e.g. frames=100, size=1514, indirect=on (repeatable; testbed.KEY=VALUE).
        #[arg(long, value_name = "KEY=VALUE")]
        param: Vec<String>,
        /// Give the guest a virtio-net device on the host tap NAME (kvm and nested runners;
        /// nested: the tap lives in L1; vhost=on hands its rings to the host's vhost-net)
        #[arg(long, value_name = "tap=NAME[,mac=MAC][,vhost=on|off]")]
        net: Option<vmm::devices::virtio::net::NetSpec>,
        /// Collect host kernel coverage of the vhost-net worker serving --net into the run
        /// store, labelled source=host (kvm runner on a kcov host kernel, or nested: L1's
        /// vhost worker; implies vhost=on)
        #[arg(long, requires = "net")]
        host_kcov: bool,
        /// Extra word for the L1 kernel command line (nested runner; repeatable).
        #[arg(long, value_name = "WORD")]
        l1_append: Vec<String>,
        /// QEMU -cpu model for L1 (nested runner; default max, which emulates SVM).
        #[arg(long, value_name = "MODEL")]
        l1_cpu: Option<String>,
        /// Command for the agent to run in the guest (from the initramfs, see --include).
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Coverage report of a run: terminal summary, lcov, HTML, JSON, patch coverage.
    Report(xtask::report::ReportArgs),
    /// Functions and lines one run covers that another does not.
    Diff(xtask::diff::DiffArgs),
    /// Reproducible coverage: run workloads K times, check (or --update) goldens/.
    Golden(xtask::golden::GoldenArgs),
    /// Coverage tests of a testbed.toml (or one shard of it): JUnit XML, lcov, JSON, Markdown;
    /// exits non-zero when a case or a gate fails.
    Ci(xtask::ci::CiArgs),
    /// Merge the outputs of several ci shards (one kernel build) into one report and gates.
    Merge(xtask::merge::MergeArgs),
    /// Run directories: list them, prune old ones and the initramfs cache entries no run uses.
    Runs {
        #[command(subcommand)]
        cmd: xtask::runs::RunsCmd,
    },
    /// Benchmarks, each against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// Format check, clippy -D warnings and the whole test suite (kernel and agent built first).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Arguments for the test runner (cargo nextest run / cargo test).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// VMM process start to the test guest's first port write, and VMM RSS.
    VmmStart {
        /// Number of runs (median reported).
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// vsock throughput: qemu runner (real kernel), our VMM's device, the core; vs a Unix socket pair.
    Vsock,
    /// virtio-net + tap frames/s and MB/s, both ways, 64 B/1514 B/64 KiB; vs host threads on a tap.
    Net {
        /// Frames per run (default: about one second's worth of the VM's rate).
        #[arg(long)]
        frames: Option<u32>,
    },
    /// Symbolize every instrumented site of the vmlinux vs binutils addr2line; report generation.
    Symbolize {
        /// vmlinux (default: the cached kernel's).
        #[arg(long)]
        vmlinux: Option<PathBuf>,
    },
    /// Nested runner vs qemu runner: boot, stream rate, vsock and TCP echo throughput.
    Nested {
        /// Boots per runner for the boot and stream figures (median reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The developer's loop: edit drivers/vhost/net.c, kernel, boot, patch report; vs bare make.
    Loop {
        /// Passes, each a different edit (medians reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Fuzzing: executions/s, remote PCs after 1/5/30 min vs the shipped workloads' on the
    /// same kernel, the coverage stream's cost (fuzz kernel unless --plain-kernel).
    Fuzz {
        /// vhost-net or vhost-vsock.
        #[arg(default_value = "vhost-net")]
        target: String,
        /// Seconds of fuzzing (300 for the 5-minute figure, 1800 for the 30-minute one).
        #[arg(long, default_value_t = 300)]
        time: u64,
        /// The default kernel instead of the KASAN + lockdep one.
        #[arg(long)]
        plain_kernel: bool,
    },
    /// vhost workloads with coverage on vs off, and PCs/s shipped over vsock vs console.
    Workload {
        /// Frames/messages per workload.
        #[arg(long, default_value_t = 300)]
        frames: u32,
    },
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Kernel { kernel } => {
            let k = kernel::build(&kernel.opts())?;
            println!("bzImage {}", k.bzimage.display());
            println!("vmlinux {}", k.vmlinux.display());
            println!("config  {}", k.config.display());
        }
        Cmd::Agent => println!("{}", agent::build()?.display()),
        Cmd::Image {
            output,
            include,
            cmd,
        } => {
            let includes = include
                .iter()
                .map(|s| images::Include::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            let agent = agent::build()?;
            image::build(&agent, &includes, &cmd, &output)?;
            println!("{}", output.display());
        }
        Cmd::Boot {
            runner,
            kernel,
            include,
            append,
            mem,
            vcpus,
            boot_timeout,
            timeout,
            kernel_log,
            no_echo,
            workload,
            cover,
            area,
            transport,
            param,
            net,
            host_kcov,
            l1_append,
            l1_cpu,
            cmd,
        } => {
            let opts = BootOpts {
                runner,
                kernel: kernel.opts(),
                includes: include,
                cmd,
                append,
                mem_mib: mem,
                vcpus,
                timeouts: Timeouts {
                    boot: Duration::from_secs(boot_timeout),
                    run: Duration::from_secs(timeout),
                },
                kernel_log,
                echo: !no_echo,
                plan: boot::PlanOpts {
                    workloads: workload,
                    cover,
                    area,
                    transport,
                    params: param,
                }
                .to_plan()
                .map_err(|e| anyhow::anyhow!("the agent's plan: {e}"))?,
                net,
                host_kcov,
                l1_append,
                l1_cpu,
                stop: None,
            };
            let (outcome, run_dir) = boot::boot(&opts)?;
            eprintln!("{}", boot::summary(&outcome, opts.echo));
            let mut code = outcome.status.exit_code();
            if let Some(report) = boot::collect_stream(&run_dir, &outcome.serial_log)? {
                println!("{report}");
                println!(
                    "raw stream: {}",
                    run_dir.join(coverage::run::STREAM_FILE).display()
                );
                if code == 0 && report.problem.is_some() {
                    eprintln!("error: the coverage stream is incomplete or corrupt (see above)");
                    code = 1;
                }
            }
            if let Some(hc) = &outcome.host_coverage {
                match boot::store_host_coverage(&run_dir, hc, outcome.host_vmlinux.as_deref()) {
                    Ok(line) => eprintln!("{line}"),
                    Err(e) => {
                        eprintln!("error: keeping the host coverage: {e:#}");
                        code = code.max(1);
                    }
                }
            }
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Cmd::Report(args) => return xtask::report::report_cmd(&args),
        Cmd::Diff(args) => return xtask::diff::diff_cmd(&args),
        Cmd::Golden(args) => return xtask::golden::golden_cmd(&args),
        Cmd::Ci(args) => return xtask::ci::ci_cmd(&args),
        Cmd::Merge(args) => return xtask::merge::merge_cmd(&args),
        Cmd::Runs { cmd } => return xtask::runs::runs_cmd(&cmd),
        Cmd::Fuzz(args) => return xtask::fuzz::cli::fuzz_cmd(&args),
        Cmd::Bench { .. } if cfg!(debug_assertions) => {
            // Benchmarks measure optimized code: re-run this command from a release build.
            eprintln!("bench: rebuilding xtask in release mode");
            let status = xtask::paths::cargo()
                .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
                .args(std::env::args_os().skip(1))
                .status()?;
            return Ok(ExitCode::from(
                u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
            ));
        }
        Cmd::Bench { which } => match which {
            BenchCmd::VmmStart { runs } => xtask::bench::vmm_start(runs)?,
            BenchCmd::Vsock => xtask::bench::vsock()?,
            BenchCmd::Net { frames } => xtask::bench::net(frames)?,
            BenchCmd::Symbolize { vmlinux } => xtask::report::bench(vmlinux.as_deref())?,
            BenchCmd::Workload { frames } => xtask::bench::workload(frames)?,
            BenchCmd::Nested { runs } => xtask::bench::nested(runs)?,
            BenchCmd::Loop { runs } => xtask::bench_loop::run(runs)?,
            BenchCmd::Fuzz {
                target,
                time,
                plain_kernel,
            } => xtask::fuzz::bench::fuzz(
                kcov_wire::program::Target::from_name(&target)
                    .ok_or_else(|| anyhow::anyhow!("unknown fuzz target {target:?}"))?,
                Duration::from_secs(time),
                plain_kernel,
            )?,
        },
        Cmd::Test { no_lint, args } => test::run(&test::TestOpts {
            lint: !no_lint,
            args,
        })?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // The vsock backend's warnings (a guest connect nobody listens for, a refused host
    // CONNECT) reach the user at the default level.
    vsock::log_to_stderr(vsock::LevelFilter::Warn);
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
