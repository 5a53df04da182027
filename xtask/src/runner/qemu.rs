//! The qemu runner: QEMU TCG, microvm machine, serial console on stdio.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use std::path::Path;

use super::{watch, BootOutcome, BootSpec, RunnerKind, VmEvent, VsockSpec};
use crate::deps;

pub const QEMU: &str = "qemu-system-x86_64";

/// The microvm machine options. The RTC stays on: without it the kernel's boot-time read of
/// the CMOS clock (`mach_get_cmos_time`) polls the absent chip's update flag for its whole
/// 1 s timeout ("Unable to read current time from RTC"), measured as 1.0-1.4 s of a 3.3 s
/// boot to the agent.
const MACHINE: &str = "microvm,acpi=off,x-option-roms=off,rtc=on";

/// Kernel command-line words for a guest under QEMU TCG. `nolapic_timer`: the local APIC
/// timer's calibration and verification against the PIT (`calibrate_APIC_clock`) took
/// 0.25-0.45 s of each boot under TCG, and on a loaded host its verification failed and
/// disabled the timer anyway ("APIC timer disabled due to verification failure"); the PIT
/// drives the tick instead (broadcast to other vCPUs with `--vcpus N`). `no_timer_check`: the
/// IO-APIC setup's check that the PIT ticks (`timer_irq_works`) busy-waits on the TSC for a few
/// ticks; on a loaded host the emulated PIT can fall behind that wait and the boot panics
/// (`IO-APIC + timer doesn't work!`, seen in a `cargo xtask test` run with other jobs on both
/// cores).
/// microvm's PIT behind its IO-APIC does work; the check only measures the host's load.
pub const GUEST_CMDLINE: &str = "nolapic_timer no_timer_check";

/// One QEMU TCG microvm: what it boots, with what.
pub struct Machine<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub mem_mib: u64,
    pub cpus: u8,
    /// QEMU `-cpu` model (`max`: every feature TCG emulates, SVM included).
    pub cpu: &'a str,
    pub vsock: Option<&'a VsockSpec>,
}

impl<'a> Machine<'a> {
    /// The machine of a plain qemu run of `spec`.
    pub fn of(spec: &'a BootSpec) -> Machine<'a> {
        Machine {
            kernel: &spec.bzimage,
            initrd: &spec.initramfs,
            cmdline: &spec.cmdline,
            mem_mib: spec.mem_mib,
            cpus: spec.vcpus.max(1),
            cpu: "max",
            vsock: spec.vsock.as_ref(),
        }
    }
}

/// The QEMU command line for a machine. With vsock, guest RAM is a shared memfd
/// (the vhost-user backend maps it) and the device is QEMU's
/// `vhost-user-vsock-device` talking to our backend on `vhost_socket`.
pub fn command(m: &Machine) -> Command {
    let mut cmd = Command::new(QEMU);
    match m.vsock {
        None => {
            cmd.args(["-M", MACHINE]);
        }
        Some(v) => {
            let mut chardev = std::ffi::OsString::from("socket,id=vsock0,path=");
            chardev.push(&v.vhost_socket);
            cmd.args(["-M", &format!("{MACHINE},memory-backend=mem")])
                .arg("-object")
                .arg(format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    m.mem_mib
                ))
                .arg("-chardev")
                .arg(chardev)
                .args(["-device", "vhost-user-vsock-device,chardev=vsock0"]);
        }
    }
    cmd.args(["-accel", "tcg", "-cpu", m.cpu, "-m"])
        .arg(m.mem_mib.to_string())
        .arg("-smp")
        .arg(m.cpus.to_string())
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(m.kernel)
        .arg("-initrd")
        .arg(m.initrd)
        .arg("-append")
        .arg(m.cmdline);
    cmd
}

pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    boot_machine(spec, RunnerKind::Qemu, &Machine::of(spec), VmEvent::Line)
}

/// QEMU must not outlive us: killed by SIGKILL, SIGTERM or SIGINT, xtask can run no clean-up,
/// so the kernel kills the child when its parent dies (`PR_SET_PDEATHSIG`). The thread that
/// spawns QEMU waits for it, so the signal cannot fire early (it follows the spawning thread).
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: between fork and exec only async-signal-safe calls: prctl, getppid, _exit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before prctl took effect: go now.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Runs machine `m` for `spec` (its vsock backend, console watch, timeouts); each console
/// line becomes the event `route` makes of it.
pub fn boot_machine(
    spec: &BootSpec,
    runner: RunnerKind,
    m: &Machine,
    route: fn(String) -> VmEvent,
) -> Result<BootOutcome> {
    deps::ensure_packages(deps::QEMU_PACKAGES, "the qemu runner")?;
    // The backend binds its sockets before QEMU starts (QEMU connects to it).
    let backend = match m.vsock {
        None => None,
        Some(v) => {
            let cfg = vsock::vhost_user::BackendConfig::new(&v.vhost_socket, &v.uds, v.guest_cid);
            Some(vsock::vhost_user::spawn(&cfg).with_context(|| {
                format!(
                    "starting the vsock backend (vhost-user {}, host sockets {})",
                    v.vhost_socket.display(),
                    v.uds.display()
                )
            })?)
        }
    };
    let outcome = boot_qemu(spec, runner, m, route);
    if let Some(b) = backend {
        // QEMU is gone: its vhost-user connection closed and the backend ends.
        if let Err(e) = b.stop() {
            eprintln!("warning: the vsock backend ended with an error: {e}");
        }
    }
    let mut outcome = outcome?;
    outcome.vsock_uds = m.vsock.map(|v| v.uds.clone());
    Ok(outcome)
}

fn boot_qemu(
    spec: &BootSpec,
    runner: RunnerKind,
    m: &Machine,
    route: fn(String) -> VmEvent,
) -> Result<BootOutcome> {
    let mut cmd = command(m);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting {QEMU}"))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors2 = Arc::clone(&errors);
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut e) = errors2.lock() {
                e.push(line);
            }
        }
    });
    let tx2 = tx.clone();
    let out_thread = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // The UART gives raw bytes: split on \n, drop \r, keep invalid UTF-8 readable.
        while let Ok(n) = reader.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            let _ = tx2.send(route(line));
            buf.clear();
        }
        let _ = tx2.send(VmEvent::Ended("qemu exited".into()));
    });
    let pid = child.id();
    let outcome = watch(
        runner,
        &rx,
        &spec.serial_log,
        spec.echo,
        spec.timeouts,
        spec.stop.as_ref(),
        || {
            // SAFETY: sending SIGKILL to our own child process.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        },
    );
    // Make sure QEMU is gone whatever happened.
    let _ = child.kill();
    let status = child.wait();
    let _ = out_thread.join();
    let _ = err_thread.join();
    let mut outcome = outcome?;
    let qemu_errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    if let (super::GuestStatus::NoStatus(_), Ok(st)) = (&outcome.status, &status) {
        if !st.success() || !qemu_errors.is_empty() {
            outcome.status =
                super::GuestStatus::NoStatus(format!("qemu {st}: {}", qemu_errors.join(" | ")));
        }
    }
    Ok(outcome)
}
