//! `vmm`: boot a Linux kernel in a small KVM virtual machine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vmm::{BootProtocol, VmConfig, VmExit};

const AFTER_HELP: &str = "\
The guest's serial console (COM1, ttyS0) is printed on stdout. The VM ends when
the guest resets (Linux `reboot` with reboot=k, or a panic with panic=-1), powers
off, triple-faults, or --timeout passes.

Exit status:
  0  the guest reset or powered off (a panic with panic=-1 also resets: look for
     \"Kernel panic\" in the serial output to tell)
  1  the VMM could not start the VM (bad arguments, kernel, KVM) - see the message
  2  the guest triple-faulted (KVM shutdown)
  3  --timeout passed
  4  KVM could not run the guest (entry failure, emulation error)

On a host whose KVM is PVM (no vmx/svm), only PVM-aware kernels boot; others
are refused at once with a hint to use the QEMU runner (`cargo xtask boot --runner qemu`).

Examples:
  vmm --kernel bzImage --initrd initramfs.cpio --mem 512 --vcpus 2 --timeout 60
  vmm --kernel bzImage --initrd initramfs.cpio --vsock-uds /tmp/v.sock --guest-cid 3
    (guest connects to CID 2 port 52 reach a listener on /tmp/v.sock_52)
  vmm --kernel bzImage --initrd initramfs.cpio --net tap=tap0
    (virtio-net on the tap tap0, MAC 52:54:00:12:34:56)
  vmm --kernel bzImage --initrd initramfs.cpio --net tap=tap0,vhost=on --host-kcov host.pcs
    (the host kernel's vhost-net serves the rings; the PCs its vhost worker ran
     under our kcov common handle land in host.pcs)

Without /dev/vhost-net on the host, vhost=on falls back to the userspace tap
backend; without host kcov (/sys/kernel/debug/kcov), --host-kcov is dropped.
Both say so on stderr and the run goes on.";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Boot {
    /// PVH entry if the ELF vmlinux has one, else the 64-bit Linux entry
    Auto,
    /// 64-bit Linux boot protocol (zero page in RSI)
    Linux64,
    /// PVH entry (ELF vmlinux with a PVH note only)
    Pvh,
}

/// Boot a Linux kernel (bzImage or ELF vmlinux) in a small KVM virtual machine
/// with a serial console.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, after_help = AFTER_HELP)]
struct Args {
    /// Kernel to boot: a bzImage (arch/x86/boot/bzImage) or an ELF vmlinux
    #[arg(long, value_name = "FILE")]
    kernel: PathBuf,
    /// initrd or initramfs (cpio) to hand to the kernel
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// Kernel command line
    #[arg(long, value_name = "STRING", default_value = vmm::DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory in MiB
    #[arg(long, value_name = "MiB", default_value_t = 512)]
    mem: u64,
    /// Number of virtual CPUs
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u32,
    /// Also write the serial console to FILE
    #[arg(long, value_name = "FILE")]
    serial_log: Option<PathBuf>,
    /// Stop the VM after this many seconds (exit status 3)
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Do not copy the serial console to stdout
    #[arg(long, short)]
    quiet: bool,
    /// How to enter the kernel
    #[arg(long, value_enum, default_value_t = Boot::Auto)]
    boot: Boot,
    /// Skip the host check (PVM host with a kernel we do not recognise as PVM-aware)
    #[arg(long)]
    no_host_check: bool,
    /// Print debug messages (unclaimed I/O, exits) on stderr
    #[arg(long, short)]
    verbose: bool,
    /// Give the guest a virtio-vsock device whose host side is the Unix socket
    /// PATH (Firecracker hybrid vsock: the guest's connects to CID 2 port P
    /// reach a listener on PATH_P; a host process connects to PATH and writes
    /// "CONNECT <port>\n" to reach a guest listener)
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID (3 or more; 0, 1 and 2 are reserved)
    #[arg(long, value_name = "N", default_value_t = 3, requires = "vsock_uds")]
    guest_cid: u64,
    /// Give the guest a virtio-net device backed by the tap NAME (created
    /// when absent, attached to when it is a persistent tap; it must be up for
    /// frames to flow; needs CAP_NET_ADMIN); the MAC defaults to
    /// 52:54:00:12:34:56
    /// With vhost=on the host kernel's vhost-net moves the frames between the
    /// rings and the tap instead of the VMM.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,vhost=on|off]")]
    net: Option<vmm::devices::virtio::net::NetSpec>,
    /// Collect host kernel coverage of the vhost-net worker serving --net
    /// (implies vhost=on; needs a kcov host kernel) and write its PCs to FILE
    /// (one hex PC per line, sorted, unique) when the VM ends
    #[arg(long, value_name = "FILE", requires = "net")]
    host_kcov: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, exit status 1 like every other input error.
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!(
                "vmm: {} (see vmm --help)",
                msg.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(1);
        }
    };
    vmm::set_verbose(args.verbose);
    let Ok(vcpus) = u8::try_from(args.vcpus) else {
        eprintln!(
            "vmm: --vcpus {} is above the maximum of {}",
            args.vcpus,
            vmm::arch::x86_64::mptable::max_cpus()
        );
        return ExitCode::from(1);
    };
    let timeout = match args.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t < 1e9 => Some(Duration::from_secs_f64(t)),
        Some(t) => {
            eprintln!("vmm: --timeout {t}: expected a positive number of seconds");
            return ExitCode::from(1);
        }
    };
    // The vsock device binds its socket now: a bad CID or path fails before
    // the kernel is even read.
    let mut virtio_devices = Vec::new();
    if let Some(uds) = &args.vsock_uds {
        let vcfg = vmm::devices::virtio::vsock::VsockConfig::new(uds, args.guest_cid);
        match vmm::devices::virtio::vsock::VsockDevice::new(&vcfg) {
            Ok(dev) => virtio_devices.push(vmm::devices::virtio::VirtioMmioDevice::new(
                std::sync::Arc::new(std::sync::Mutex::new(dev)),
            )),
            Err(e) => {
                use vmm::devices::virtio::vsock::VsockDeviceError::Backend;
                match e {
                    Backend(vsock::Error::InvalidGuestCid(c)) => {
                        eprintln!("vmm: --guest-cid {c}: {e}")
                    }
                    _ => eprintln!("vmm: --vsock-uds {}: {e}", uds.display()),
                }
                return ExitCode::from(1);
            }
        }
        // Warnings (a guest connect nobody listens for, a refused host CONNECT) always.
        vsock::log_to_stderr(if args.verbose {
            vsock::LevelFilter::Debug
        } else {
            vsock::LevelFilter::Warn
        });
    }
    let mut host_kcov = None;
    if let Some(spec) = &args.net {
        let built = match spec.build(args.host_kcov.is_some()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("vmm: --net: {e}");
                return ExitCode::from(1);
            }
        };
        for n in &built.notes {
            eprintln!("vmm: --net: {n}");
        }
        if let (true, Some(h)) = (args.verbose, &built.host_kcov) {
            eprintln!(
                "vmm: host kcov on, common handle {:#018x}",
                h.owner().handle()
            );
        }
        host_kcov = built.host_kcov;
        virtio_devices.push(vmm::devices::virtio::VirtioMmioDevice::new(
            std::sync::Arc::new(std::sync::Mutex::new(built.device)),
        ));
    }
    let cfg = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_mib: args.mem,
        vcpus,
        serial_log: args.serial_log,
        serial_stdout: !args.quiet,
        timeout,
        boot_protocol: match args.boot {
            Boot::Auto => BootProtocol::Auto,
            Boot::Linux64 => BootProtocol::Linux64,
            Boot::Pvh => BootProtocol::Pvh,
        },
        skip_host_check: args.no_host_check,
        virtio_devices,
        ..Default::default()
    };
    let result = vmm::run(&cfg);
    // The devices are reset when the VM ends; only then is the host area complete.
    drop(cfg);
    if let (Some(h), Some(path)) = (host_kcov, &args.host_kcov) {
        match h.finish() {
            Ok(cov) => match std::fs::write(path, cov.to_text()) {
                Ok(()) => eprintln!("vmm: host kcov: {} -> {}", cov.summary(), path.display()),
                Err(e) => eprintln!("vmm: --host-kcov {}: {e}", path.display()),
            },
            Err(e) => eprintln!("vmm: {e}"),
        }
    }
    match result {
        Ok(o) => {
            let code = match &o.exit {
                e if e.is_clean() => 0,
                VmExit::Shutdown => 2,
                VmExit::Timeout => 3,
                _ => 4,
            };
            if args.verbose || code != 0 {
                eprintln!(
                    "vmm: guest ended: {:?} after {:.3}s{}{}",
                    o.exit,
                    o.wall.as_secs_f64(),
                    o.boot_to_first_serial
                        .map(|d| format!(", first serial output after {:.3}s", d.as_secs_f64()))
                        .unwrap_or_default(),
                    o.rss_kib
                        .map(|r| format!(", VMM RSS {r} KiB"))
                        .unwrap_or_default()
                );
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            ExitCode::from(1)
        }
    }
}
