//! Runners boot the guest kernel + initramfs and watch its serial console.
//!
//! Both runners give the same thing: serial lines, from which the console
//! protocol of the guest agent is read (`@@TESTBED-READY@@ <release>` when the
//! agent runs, `@@TESTBED-EXIT@@ <status>` as its last line), and a status.

pub mod kvm;
pub mod nested;
pub mod qemu;
pub mod vsock_echo;

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};

pub use kcov_wire::console::{EXIT_MARKER, READY_MARKER};
const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Lines of console kept to explain a failure.
const TAIL_LINES: usize = 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RunnerKind {
    /// Pick kvm where hardware KVM can boot the kernel, else qemu.
    Auto,
    /// Our VMM on /dev/kvm.
    Kvm,
    /// QEMU TCG (software emulation), microvm machine.
    Qemu,
    /// Our VMM inside a QEMU TCG guest ("L1") whose KVM runs on emulated SVM: proves the kvm
    /// path with a real Linux anywhere QEMU runs. Slower than qemu; auto never picks it.
    Nested,
}

impl std::fmt::Display for RunnerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunnerKind::Auto => "auto",
            RunnerKind::Kvm => "kvm",
            RunnerKind::Qemu => "qemu",
            RunnerKind::Nested => "nested",
        })
    }
}

/// Resolves `auto` into a concrete runner for `kernel` and says why: kvm
/// where our VMM's host check accepts the kernel, else qemu.
pub fn choose(kind: RunnerKind, kernel: &Path) -> (RunnerKind, String) {
    match kind {
        RunnerKind::Auto => match vmm::host_check(kernel) {
            Ok(_) => (RunnerKind::Kvm, "hardware KVM available".into()),
            Err(e) => {
                let why = e.to_string();
                let why = why
                    .strip_suffix("; use --runner qemu")
                    .unwrap_or(&why)
                    .to_string();
                (RunnerKind::Qemu, format!("{why}; using QEMU TCG"))
            }
        },
        k => (k, "requested".into()),
    }
}

/// How a guest run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestStatus {
    /// The agent printed its exit marker with this status.
    Exited(i32),
    /// The kernel panicked (the panic line).
    Panicked(String),
    /// The agent never reported ready within the boot timeout.
    BootTimeout(Duration),
    /// The agent was ready but did not finish within the run timeout.
    RunTimeout(Duration),
    /// The VM ended without an exit marker or panic.
    NoStatus(String),
    /// Nested runner: L1 (the Linux hosting our VMM) failed, so the L2 gave no status.
    HostFailed(String),
    /// Stopped by its caller through a [`StopSignal`] (why, in words).
    Stopped(String),
}

impl GuestStatus {
    /// The process exit code `cargo xtask boot` uses for this status.
    pub fn exit_code(&self) -> i32 {
        match self {
            GuestStatus::Exited(code) => (*code).clamp(0, 255),
            GuestStatus::Panicked(_) => 70,
            GuestStatus::BootTimeout(_) | GuestStatus::RunTimeout(_) | GuestStatus::Stopped(_) => {
                124
            }
            GuestStatus::NoStatus(_) | GuestStatus::HostFailed(_) => 71,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            GuestStatus::Exited(0) => "agent finished successfully".into(),
            GuestStatus::Exited(c) => format!("agent exited with status {c}"),
            GuestStatus::Panicked(line) => format!("guest kernel panicked: {line}"),
            GuestStatus::BootTimeout(t) => format!("the guest agent did not start within {}s (kernel hung or /init failed); raise --boot-timeout if the host is very slow", t.as_secs()),
            GuestStatus::RunTimeout(t) => format!("the guest did not finish within {}s; raise --timeout for long workloads", t.as_secs()),
            GuestStatus::NoStatus(why) => format!("the VM ended without an exit status from the agent ({why})"),
            GuestStatus::HostFailed(why) => format!("L1 (the nested Linux host running our vmm) failed: {why}"),
            GuestStatus::Stopped(why) => format!("the VM was stopped by its caller: {why}"),
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    pub runner: RunnerKind,
    pub status: GuestStatus,
    pub serial_log: PathBuf,
    /// Kernel release the agent reported.
    pub release: Option<String>,
    /// Runner start → agent ready.
    pub ready_after: Option<Duration>,
    pub total: Duration,
    /// Last console lines (for error reports).
    pub tail: Vec<String>,
    /// The host side of the guest's vsock device (`<uds>`, `<uds>_<port>`), if it had one.
    pub vsock_uds: Option<PathBuf>,
    /// Host-side coverage (`BootSpec::host_kcov` where the host allowed it).
    pub host_coverage: Option<vmm::host_kcov::HostCoverage>,
    /// The host kernel's vmlinux where it is one of ours (nested runner: L1's).
    pub host_vmlinux: Option<PathBuf>,
    /// Nested runner: runner start → the L1 init running.
    pub l1_ready_after: Option<Duration>,
    /// Nested runner: the L1 console log and its last lines.
    pub l1_log: Option<PathBuf>,
    pub l1_tail: Vec<String>,
}

/// Serial-console state machine: feeds lines, tracks the agent's markers (or, for the
/// nested runner's L1 console, the L1 init's).
#[derive(Debug)]
pub struct Console {
    ready_marker: &'static str,
    exit_marker: &'static str,
    error_prefix: Option<&'static str>,
    pub release: Option<String>,
    pub exit: Option<i32>,
    pub panic: Option<String>,
    /// The first line starting with the error prefix (L1 console), without the prefix.
    pub error: Option<String>,
    tail: VecDeque<String>,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            ready_marker: READY_MARKER,
            exit_marker: EXIT_MARKER,
            error_prefix: None,
            release: None,
            exit: None,
            panic: None,
            error: None,
            tail: VecDeque::new(),
        }
    }
}

impl Console {
    /// The L1 console of the nested runner (`kcov_wire::nested` markers).
    pub fn l1() -> Console {
        use kcov_wire::nested;
        Console {
            ready_marker: nested::L1_READY_MARKER,
            exit_marker: nested::L1_EXIT_MARKER,
            error_prefix: Some(nested::L1_ERROR_PREFIX),
            ..Console::default()
        }
    }

    pub fn feed(&mut self, line: &str) {
        if let Some(pos) = line.find(self.ready_marker) {
            let rest = line[pos + self.ready_marker.len()..].trim();
            self.release = Some(rest.to_string());
        } else if let Some(pos) = line.find(self.exit_marker) {
            let rest = line[pos + self.exit_marker.len()..].trim();
            // A garbled status still ends the run as a failure.
            self.exit = Some(rest.parse().unwrap_or(255));
        } else if line.contains(PANIC_MARKER) && self.panic.is_none() {
            self.panic = Some(line.trim().to_string());
        } else if let Some(rest) = self.error_prefix.and_then(|p| line.strip_prefix(p)) {
            self.error.get_or_insert_with(|| rest.trim().to_string());
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    /// The status once the VM has ended.
    pub fn final_status(&self, vm_end: &str) -> GuestStatus {
        match (&self.panic, self.exit) {
            (Some(p), _) => GuestStatus::Panicked(p.clone()),
            (None, Some(code)) => GuestStatus::Exited(code),
            (None, None) => GuestStatus::NoStatus(vm_end.to_string()),
        }
    }
}

/// Timeouts for a run.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Start → agent ready.
    pub boot: Duration,
    /// Agent ready → VM end.
    pub run: Duration,
}

/// Stops a running VM from another thread (a fuzz campaign's watchdog): the runner kills it
/// the way it does on a timeout, whatever the runner (QEMU's process, the kvm runner's VM
/// thread, the nested runner's L1), and its status is [`GuestStatus::Stopped`] with the reason.
#[derive(Clone, Debug, Default)]
pub struct StopSignal(Arc<Mutex<Option<String>>>);

impl StopSignal {
    /// Asks the VM to stop; the first reason given is kept.
    pub fn stop(&self, why: &str) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(why.to_string());
        }
    }

    /// Why it was asked to stop, once it was.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How often [`watch`] looks at its [`StopSignal`].
const STOP_POLL: Duration = Duration::from_millis(100);

/// Events from a running VM.
pub enum VmEvent {
    Line(String),
    /// A line of the nested runner's L1 (its kernel or init), not of the guest.
    L1Line(String),
    /// The VM ended (how, in words).
    Ended(String),
}

/// Watches a VM's console until it ends, a timeout hits or `stop` is set. `kill` stops the
/// VM; it is called on timeout or stop and must make the VM end soon after.
pub fn watch(
    runner: RunnerKind,
    events: &Receiver<VmEvent>,
    serial_log: &Path,
    echo: bool,
    timeouts: Timeouts,
    stop: Option<&StopSignal>,
    mut kill: impl FnMut(),
) -> Result<BootOutcome> {
    let start = Instant::now();
    let mut log = fs::File::create(serial_log)?;
    let mut console = Console::default();
    let mut ready_after = None;
    let mut timeout_status = None;
    let mut killed = false;
    let mut deadline = start + timeouts.boot;
    let stdout = std::io::stdout();
    // Nested runner: L1's console (created with its first line).
    let mut l1: Option<(Console, fs::File, PathBuf)> = None;
    let mut l1_ready_after = None;
    let end = loop {
        if !killed {
            if let Some(why) = stop.and_then(StopSignal::reason) {
                timeout_status = Some(GuestStatus::Stopped(why));
                kill();
                killed = true;
                deadline = Instant::now() + Duration::from_secs(5);
            }
        }
        let now = Instant::now();
        let mut wait = deadline.saturating_duration_since(now);
        if stop.is_some() && !killed {
            wait = wait.min(STOP_POLL);
        }
        match events.recv_timeout(wait) {
            Ok(VmEvent::Line(line)) => {
                writeln!(log, "{line}")?;
                // kcov-wire stream lines stay in the log (boot.rs reassembles coverage.kcw
                // from it) but are neither echoed nor kept in the tail.
                if kcov_wire::console::is_stream_line(&line) {
                    continue;
                }
                if echo {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                }
                let was_ready = console.release.is_some();
                console.feed(&line);
                if !was_ready && console.release.is_some() {
                    ready_after = Some(start.elapsed());
                    deadline = Instant::now() + timeouts.run;
                }
                if console.exit.is_some() || console.panic.is_some() {
                    // The VM ends by itself right after; don't wait long.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(20));
                }
            }
            Ok(VmEvent::L1Line(line)) => {
                if l1.is_none() {
                    let path = serial_log.with_file_name(L1_LOG);
                    l1 = Some((Console::l1(), fs::File::create(&path)?, path));
                }
                let Some((c, f, _)) = l1.as_mut() else {
                    continue;
                };
                writeln!(f, "{line}")?;
                if echo {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "L1| {line}");
                }
                c.feed(&line);
                if l1_ready_after.is_none() && c.release.is_some() {
                    l1_ready_after = Some(start.elapsed());
                }
                if c.panic.is_some() || c.exit.is_some() {
                    // L1 resets right after.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(20));
                }
            }
            Ok(VmEvent::Ended(how)) => break how,
            Err(RecvTimeoutError::Timeout) => {
                if Instant::now() < deadline {
                    // Woken to look at the stop signal only.
                    continue;
                }
                if killed {
                    break "did not end after being killed".to_string();
                }
                timeout_status = Some(if console.exit.is_some() || console.panic.is_some() {
                    // The agent finished but the VM did not end by itself.
                    console.final_status("stopped after its exit marker")
                } else if console.release.is_some() {
                    GuestStatus::RunTimeout(timeouts.run)
                } else {
                    GuestStatus::BootTimeout(timeouts.boot)
                });
                kill();
                killed = true;
                // Give the VM a moment to go away, then stop waiting.
                deadline = Instant::now() + Duration::from_secs(5);
            }
            Err(RecvTimeoutError::Disconnected) => break "console closed".to_string(),
        }
    };
    log.flush()?;
    let mut status = match timeout_status {
        Some(t) => t,
        None => console.final_status(&end),
    };
    if let (Some((c, _, _)), GuestStatus::NoStatus(_)) = (&l1, &status) {
        if let Some(why) = l1_failure(c) {
            status = GuestStatus::HostFailed(why);
        }
    }
    let (l1_log, l1_tail) = match &l1 {
        Some((c, _, path)) => (Some(path.clone()), c.tail()),
        None => (None, Vec::new()),
    };
    Ok(BootOutcome {
        runner,
        status,
        serial_log: serial_log.to_path_buf(),
        release: console.release.clone(),
        ready_after,
        total: start.elapsed(),
        tail: console.tail(),
        vsock_uds: None,
        host_coverage: None,
        host_vmlinux: None,
        l1_ready_after,
        l1_log,
        l1_tail,
    })
}

/// The nested runner's L1 console log, beside the (L2) serial log.
pub const L1_LOG: &str = "l1-console.log";

/// What L1's console says went wrong at its level, if anything (the L2 gave no status).
fn l1_failure(l1: &Console) -> Option<String> {
    if let Some(p) = &l1.panic {
        return Some(format!("the L1 kernel panicked: {p}"));
    }
    if l1.release.is_none() {
        return Some("L1 never reached its init (see the L1 console)".into());
    }
    if let Some(e) = &l1.error {
        return Some(e.clone());
    }
    let vmm_said = l1
        .tail
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("testbed-l1: vmm: "))
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    match l1.exit {
        Some(0) => None,
        Some(1) => Some(format!("the vmm in L1 could not start the L2{vmm_said}")),
        Some(2) => Some(format!("the L2 triple-faulted in the vmm{vmm_said}")),
        Some(4) => Some(format!("KVM in L1 could not run the L2{vmm_said}")),
        Some(c) => Some(format!("the vmm in L1 exited with status {c}{vmm_said}")),
        None => Some("L1 ended without the vmm's exit status".into()),
    }
}

/// Host end of a guest's vsock stream (`testbed.transport=vsock`): listens on `<uds>_<port>`
/// (the vsock device's hybrid convention) and copies the one connection's bytes to a file.
pub struct VsockReceiver {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<()>>,
    path: PathBuf,
}

impl VsockReceiver {
    pub fn start(uds: &Path, port: u32, out: &Path) -> Result<VsockReceiver> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let path = PathBuf::from(format!("{}_{port}", uds.display()));
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .with_context(|| format!("listening on {} for the guest's stream", path.display()))?;
        listener.set_nonblocking(true)?;
        let out = out.to_path_buf();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || -> Result<()> {
            loop {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false)?;
                        let mut file = std::fs::File::create(&out)?;
                        std::io::copy(&mut conn, &mut file).with_context(|| {
                            format!("receiving the stream into {}", out.display())
                        })?;
                        return Ok(());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stop2.load(Ordering::Acquire) {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        });
        Ok(VsockReceiver { stop, thread, path })
    }

    /// After the VM ended: stop waiting for a connection; a connection in progress ends
    /// when the VM's end closes it.
    pub fn finish(self) -> Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let r = self
            .thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the stream receiver panicked")));
        let _ = std::fs::remove_file(&self.path);
        r
    }
}

/// Everything a runner needs for one boot.
#[derive(Clone, Debug)]
pub struct BootSpec {
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub mem_mib: u64,
    /// Guest vCPUs.
    pub vcpus: u8,
    pub serial_log: PathBuf,
    pub echo: bool,
    pub timeouts: Timeouts,
    /// A virtio-vsock device for the guest (None: no vsock device).
    pub vsock: Option<VsockSpec>,
    /// A virtio-net device on a host tap (kvm runner only).
    pub net: Option<vmm::devices::virtio::net::NetSpec>,
    /// Collect host kcov of the vhost-net worker serving `net` (kvm and nested runners).
    pub host_kcov: bool,
    /// The nested runner's L1 (None for the other runners).
    pub nested: Option<nested::NestedSpec>,
    /// Stops the VM from another thread (None: only its timeouts do).
    pub stop: Option<StopSignal>,
}

/// The guest CID runs get unless told otherwise.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// A virtio-vsock device with host-side Unix sockets (Firecracker hybrid
/// vsock): a guest connect to CID 2 port P reaches a listener on
/// `<uds>_P`; a host process connects to `<uds>` and writes
/// `CONNECT <port>\n`, answered by `OK <host_port>\n`.
#[derive(Clone, Debug)]
pub struct VsockSpec {
    pub guest_cid: u64,
    pub uds: PathBuf,
    /// The vhost-user socket between QEMU and our backend (qemu runner).
    pub vhost_socket: PathBuf,
}

impl VsockSpec {
    /// Sockets in `dir` (the run directory): `vsock.sock` and `vhost-vsock.sock`.
    pub fn in_dir(dir: &Path) -> VsockSpec {
        VsockSpec {
            guest_cid: DEFAULT_GUEST_CID,
            uds: dir.join("vsock.sock"),
            vhost_socket: dir.join("vhost-vsock.sock"),
        }
    }
}

/// Boots with the given concrete runner.
pub fn boot(kind: RunnerKind, spec: &BootSpec) -> Result<BootOutcome> {
    match kind {
        RunnerKind::Qemu => qemu::boot(spec),
        RunnerKind::Kvm => kvm::boot(spec),
        RunnerKind::Nested => nested::boot(spec),
        RunnerKind::Auto => bail!("choose a runner first (runner::choose)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_reads_markers() {
        let mut c = Console::default();
        c.feed("[    0.1] booting");
        assert_eq!(
            c.final_status("reset"),
            GuestStatus::NoStatus("reset".into())
        );
        c.feed("@@TESTBED-READY@@ 6.12.57");
        assert_eq!(c.release.as_deref(), Some("6.12.57"));
        c.feed("noise @@TESTBED-EXIT@@ 3");
        assert_eq!(c.final_status("reset"), GuestStatus::Exited(3));
        assert_eq!(c.final_status("reset").exit_code(), 3);
    }

    #[test]
    fn panic_wins_and_garbled_exit_fails() {
        let mut c = Console::default();
        c.feed("@@TESTBED-EXIT@@ x");
        assert_eq!(c.exit, Some(255));
        c.feed("Kernel panic - not syncing: Attempted to kill init!");
        match c.final_status("reset") {
            GuestStatus::Panicked(l) => assert!(l.contains("kill init")),
            s => panic!("{s:?}"),
        }
        assert_eq!(c.final_status("x").exit_code(), 70);
    }

    #[test]
    fn tail_is_bounded() {
        let mut c = Console::default();
        for i in 0..100 {
            c.feed(&format!("line {i}"));
        }
        let t = c.tail();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t.last().unwrap(), "line 99");
    }

    #[test]
    fn watch_times_out_and_kills() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        tx.send(VmEvent::Line("booting".into())).unwrap();
        let mut killed = false;
        let timeouts = Timeouts {
            boot: Duration::from_millis(200),
            run: Duration::from_secs(1),
        };
        let out = watch(RunnerKind::Qemu, &rx, &log, false, timeouts, None, || {
            killed = true;
            let _ = tx.send(VmEvent::Ended("killed".into()));
        })
        .unwrap();
        assert!(killed);
        assert_eq!(
            out.status,
            GuestStatus::BootTimeout(Duration::from_millis(200))
        );
        assert_eq!(std::fs::read_to_string(log).unwrap(), "booting\n");
    }

    /// A stop signal set while the console keeps talking (never a quiet moment to time out
    /// in) kills the VM at once, long before its timeouts, and the status says why.
    #[test]
    fn watch_stops_on_signal_while_lines_flow() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let dir = tempfile::tempdir().unwrap();
        tx.send(VmEvent::Line("@@TESTBED-READY@@ 6.12".into()))
            .unwrap();
        let stop = StopSignal::default();
        let (talker_stop, talker_tx) = (stop.clone(), tx.clone());
        let talker = std::thread::spawn(move || {
            for i in 0..200 {
                if i == 20 {
                    talker_stop.stop("stream silent for 30 s");
                }
                let _ = talker_tx.send(VmEvent::Line(format!("line {i}")));
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let timeouts = Timeouts {
            boot: Duration::from_secs(60),
            run: Duration::from_secs(60),
        };
        let start = Instant::now();
        let mut kills = 0;
        let out = watch(
            RunnerKind::Kvm,
            &rx,
            &dir.path().join("s.log"),
            false,
            timeouts,
            Some(&stop),
            || {
                kills += 1;
                let _ = tx.send(VmEvent::Ended("stopped".into()));
            },
        )
        .unwrap();
        talker.join().unwrap();
        assert_eq!(kills, 1);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            out.status,
            GuestStatus::Stopped("stream silent for 30 s".into())
        );
        assert_eq!(out.status.exit_code(), 124);
        // Unset, it changes nothing: the timeout still rules.
        let (tx, rx) = crossbeam_channel::unbounded::<VmEvent>();
        let idle = StopSignal::default();
        let out = watch(
            RunnerKind::Qemu,
            &rx,
            &dir.path().join("t.log"),
            false,
            Timeouts {
                boot: Duration::from_millis(300),
                run: Duration::from_secs(1),
            },
            Some(&idle),
            || {
                let _ = tx.send(VmEvent::Ended("killed".into()));
            },
        )
        .unwrap();
        assert_eq!(
            out.status,
            GuestStatus::BootTimeout(Duration::from_millis(300))
        );
    }

    #[test]
    fn watch_reports_exit_status() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let dir = tempfile::tempdir().unwrap();
        for l in [
            "x",
            "@@TESTBED-READY@@ 6.12",
            "testbed-agent: hi",
            "@@TESTBED-EXIT@@ 0",
        ] {
            tx.send(VmEvent::Line(l.into())).unwrap();
        }
        tx.send(VmEvent::Ended("reset".into())).unwrap();
        let timeouts = Timeouts {
            boot: Duration::from_secs(5),
            run: Duration::from_secs(5),
        };
        let out = watch(
            RunnerKind::Qemu,
            &rx,
            &dir.path().join("s.log"),
            false,
            timeouts,
            None,
            || {},
        )
        .unwrap();
        assert_eq!(out.status, GuestStatus::Exited(0));
        assert_eq!(out.release.as_deref(), Some("6.12"));
        assert!(out.ready_after.is_some());
    }
}
