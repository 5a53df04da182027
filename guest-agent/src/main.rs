//! The testbed guest agent: runs as /init in the guest's initramfs.
//!
//! It mounts the pseudo file systems, reports what the kernel offers
//! (kernel release, kcov, vhost devices), runs the plan the host gave it and
//! powers the VM off with an exit status the host reads from the console.
//!
//! Console protocol (read by the host runners): [`kcov_wire::console`].

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guest_agent::kcov::{self, Kcov};
use guest_agent::ship::{ship_while_running, trace_mode, AreaNote, FrameSink, Shipper};
use guest_agent::sys::{self, kernel_release, mount_all};
use guest_agent::{
    net, net_control, net_errors, net_gaps, net_matrix, scsi_control, scsi_dev, scsi_workers,
    vsock, vsock_conns, vsock_control, vsock_credit,
};
use kcov_wire::console::{LineWriter, CMD_FILE, EXIT_MARKER, READY_MARKER};
use kcov_wire::plan::{Cover, Plan, Transport, Workload};
use kcov_wire::{
    CoverageSource, Done, ErrorReport, Frame, Hello, KcovMode, WorkloadResult, WorkloadStart,
};
const KCOV_PATH: &str = "/sys/kernel/debug/kcov";
const VHOST_NET_PATH: &str = "/dev/vhost-net";
const VHOST_VSOCK_PATH: &str = "/dev/vhost-vsock";

fn main() {
    let status = match std::panic::catch_unwind(run) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            println!("testbed-agent: error: {e}");
            1
        }
        Err(_) => {
            println!("testbed-agent: error: the agent panicked");
            101
        }
    };
    finish(status)
}

fn run() -> Result<i32, String> {
    mount_all()?;
    let release = kernel_release();
    println!("{READY_MARKER} {release}");
    println!(
        "testbed-agent {}: kernel {release}",
        env!("CARGO_PKG_VERSION")
    );
    for (what, path) in [
        ("kcov", KCOV_PATH),
        ("vhost-net", VHOST_NET_PATH),
        ("vhost-vsock", VHOST_VSOCK_PATH),
        ("vhost-scsi", scsi_dev::VHOST_SCSI_PATH),
    ] {
        let state = if Path::new(path).exists() {
            "present"
        } else {
            "missing"
        };
        println!("testbed-agent: {what} {path}: {state}");
    }
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    println!("testbed-agent: cpus online: {}", online.trim());
    let argv = read_command()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let plan = Plan::parse(&cmdline, argv.is_some());
    let transport = plan
        .as_ref()
        .map(|p| p.transport)
        .unwrap_or(Transport::Console);
    let port = plan.as_ref().map(|p| p.port).unwrap_or(0);
    let mut sink = open_sink(transport, port)?;
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            let msg = format!("bad plan on the kernel command line: {e}");
            println!("testbed-agent: error: {msg}");
            return fail_stream(&mut sink, &release, &msg, 2);
        }
    };
    let mode = match plan.cover {
        Cover::On(mode) => mode,
        Cover::Off => KcovMode::Pc,
    };
    let handle = kcov::common_handle(kcov::fresh_instance()).map_err(|e| e.to_string())?;
    let hello = Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: release.clone(),
        kcov_mode: mode,
        area_words: u32::try_from(plan.area_words).unwrap_or(u32::MAX),
        common_handle: if plan.cover == Cover::Off { 0 } else { handle },
    };
    if plan.workloads.is_empty() && plan.fuzz.is_none() {
        // Nothing to measure: no stream, the report above is all.
        return Ok(0);
    }
    send_now(&mut sink, Frame::Hello(hello))?;
    if plan.cover != Cover::Off && !Path::new(KCOV_PATH).exists() {
        let msg = format!("kcov missing: {KCOV_PATH} does not exist (CONFIG_KCOV=y and debugfs needed; use testbed.cover=off to run without coverage)");
        println!("testbed-agent: error: {msg}");
        send(&mut sink, Frame::Error(ErrorReport { message: msg }))?;
        send(&mut sink, Frame::Done(Done { status: 3 }))?;
        sink.flush()
            .map_err(|e| format!("flushing the stream: {e}"))?;
        return Ok(3);
    }
    if let Some(fuzz) = plan.fuzz {
        // A fuzz campaign instead of the workloads (guest-agent/src/fuzz.rs).
        let s =
            guest_agent::fuzz::campaign(fuzz, handle, plan.area_words, &mut StreamSink(&mut sink))?;
        send(&mut sink, Frame::Done(Done { status: s.status }))?;
        sink.flush()
            .map_err(|e| format!("flushing the stream: {e}"))?;
        return Ok(s.status);
    }
    let mut status = 0;
    for &w in &plan.workloads {
        send_now(
            &mut sink,
            Frame::WorkloadStart(WorkloadStart {
                name: w.name().into(),
            }),
        )?;
        println!("testbed-agent: workload {w}: running");
        let _ = std::io::stdout().flush();
        let (out, shipped) = run_workload(
            w,
            &plan,
            handle,
            argv.clone().unwrap_or_default(),
            &mut sink,
        )?;
        let of = |source| shipped.iter().filter(move |s| s.source() == source);
        let pcs: u64 = of(CoverageSource::Remote).map(Shipper::entries).sum();
        let local_pcs: u64 = of(CoverageSource::Local).map(Shipper::entries).sum();
        let overflow = shipped.iter().any(Shipper::overflow);
        let mut counters = out.counters;
        counters.push(("remote_pcs".into(), pcs));
        if local_pcs > 0 {
            counters.push(("local_pcs".into(), local_pcs));
        }
        counters.push(("overflow".into(), u64::from(overflow)));
        counters.push((
            "ship_us".into(),
            shipped.iter().map(|s| s.busy().as_micros() as u64).sum(),
        ));
        counters.push((
            "snapshots".into(),
            shipped.iter().map(Shipper::snapshots).max().unwrap_or(0),
        ));
        match &out.error {
            Some(e) => println!(
                "testbed-agent: workload {w}: failed (status {}): {e}",
                out.status
            ),
            None => println!(
                "testbed-agent: workload {w}: ok ({pcs} remote PCs, {local_pcs} local{}, {} ms)",
                if overflow { ", area overflowed" } else { "" },
                out.duration.as_millis()
            ),
        }
        send_now(
            &mut sink,
            Frame::WorkloadResult(WorkloadResult {
                name: w.name().into(),
                status: out.status,
                duration_us: out.duration.as_micros() as u64,
                counters,
                error: out.error,
            }),
        )?;
        if status == 0 {
            status = out.status;
        }
    }
    send(&mut sink, Frame::Done(Done { status }))?;
    sink.flush()
        .map_err(|e| format!("flushing the stream: {e}"))?;
    Ok(status)
}

/// The local area is this many times `testbed.area`: the driver thread's syscalls (tap
/// creation, AF_PACKET, polls) run far more kernel code than the vhost workers.
const LOCAL_AREA_FACTOR: usize = 4;

/// Most words per CoverageChunk: small chunks keep each frame a few console lines long.
const CHUNK_WORDS: usize = 4096;

type Sink = Box<dyn Write>;

/// How long a vsock stream write may block before the run fails.
const STREAM_SEND_TIMEOUT: Duration = Duration::from_secs(30);

fn send(sink: &mut Sink, frame: Frame) -> Result<(), String> {
    kcov_wire::write_frame(sink, &frame).map_err(|e| format!("sending the stream: {e}"))
}

/// Sends a frame that marks a boundary (Hello, WorkloadStart, WorkloadResult) and flushes:
/// whatever happens next (a workload that hangs or panics the kernel, a host timeout), the
/// host has everything up to here.
fn send_now(sink: &mut Sink, frame: Frame) -> Result<(), String> {
    send(sink, frame)?;
    sink.flush()
        .map_err(|e| format!("flushing the stream: {e}"))
}

/// Hello, Error, Done: a run that cannot start.
fn fail_stream(sink: &mut Sink, release: &str, msg: &str, status: i32) -> Result<i32, String> {
    send(
        sink,
        Frame::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: release.to_string(),
            kcov_mode: KcovMode::Pc,
            area_words: 0,
            common_handle: 0,
        }),
    )?;
    send(
        sink,
        Frame::Error(ErrorReport {
            message: msg.to_string(),
        }),
    )?;
    send(sink, Frame::Done(Done { status }))?;
    sink.flush()
        .map_err(|e| format!("flushing the stream: {e}"))?;
    Ok(status)
}

/// The stream sink: stream lines on the console, or an AF_VSOCK stream to the host (CID 2).
fn open_sink(transport: Transport, port: u32) -> Result<Sink, String> {
    match transport {
        Transport::Console => {
            // SAFETY: dup of our stdout (the console); the new fd is owned by the File.
            let fd = unsafe { libc::dup(1) };
            if fd < 0 {
                return Err(format!("dup(stdout): {}", std::io::Error::last_os_error()));
            }
            // SAFETY: fd is a fresh descriptor nothing else owns.
            let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            Ok(Box::new(LineWriter::new(file)))
        }
        Transport::Vsock => {
            let fd = vsock::stream_socket()?;
            vsock::connect(&fd, libc::VMADDR_CID_HOST, port).map_err(|e| {
                format!(
                    "connecting AF_VSOCK to the host (CID 2) port {port}: {e} (is the host collector listening? else use testbed.transport=console)"
                )
            })?;
            // A host that stops reading must fail the run, not hang it.
            vsock::set_socket_timeout(&fd, libc::SO_SNDTIMEO, STREAM_SEND_TIMEOUT);
            Ok(Box::new(VsockSink(std::io::BufWriter::with_capacity(
                1 << 16,
                std::fs::File::from(fd),
            ))))
        }
    }
}

/// How long the end of the stream waits for the host to confirm it has read everything.
const STREAM_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The vsock stream. Dropping it ends the stream so that nothing is lost when the VM ends
/// right after: flush, `shutdown(SHUT_WR)` (the host reads EOF after the last byte), then wait
/// until the host closes its end (up to [`STREAM_CLOSE_TIMEOUT`]). Without the wait, bytes
/// still queued in the guest's vsock transport are lost to the reboot that follows.
struct VsockSink(std::io::BufWriter<std::fs::File>);

impl Write for VsockSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for VsockSink {
    fn drop(&mut self) {
        if self.0.flush().is_err() {
            return;
        }
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: shutdown of our own, open socket.
        if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
            return;
        }
        let deadline = Instant::now() + STREAM_CLOSE_TIMEOUT;
        let mut buf = [0u8; 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                println!(
                    "testbed-agent: warning: the host did not close the stream within {STREAM_CLOSE_TIMEOUT:?}"
                );
                return;
            }
            match frontends::vring::poll_readable(&[fd], left) {
                Ok(r) if r.first() == Some(&true) => {}
                Ok(_) => continue,
                // EINTR: poll again; anything else will not get better by spinning.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            // SAFETY: reading into a local buffer from our own socket.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                // EOF or reset: the host has everything.
                return;
            }
        }
    }
}

struct Outcome {
    status: i32,
    duration: Duration,
    counters: Vec<(String, u64)>,
    error: Option<String>,
}

impl Outcome {
    fn failed(error: String) -> Outcome {
        Outcome {
            status: 1,
            duration: Duration::ZERO,
            counters: Vec::new(),
            error: Some(error),
        }
    }
}

/// The agent's stream as a [`FrameSink`].
struct StreamSink<'a>(&'a mut Sink);

impl FrameSink for StreamSink<'_> {
    fn send(&mut self, frame: Frame) -> Result<(), String> {
        send(self.0, frame)
    }
    fn flush(&mut self) -> Result<(), String> {
        self.0
            .flush()
            .map_err(|e| format!("flushing the stream: {e}"))
    }
}

/// Runs one workload on a fresh thread that owns the kcov fd: KCOV_REMOTE_ENABLE with the
/// common handle there, then the workload on a driver thread spawned after it (which
/// inherits the handle, so its VHOST_SET_OWNER gives it to the vhost worker, and traces its
/// own syscalls with a second, local kcov fd; `testbed.local=off` or `cmd`: on the enabling
/// thread itself, or a child forked after the enable), a settle pause, disable. Meanwhile this (the
/// main) thread ships the coverage the area gains every `snapshot_ms`, flushed, so a run
/// that ends while the workload runs keeps it; once the thread ended it ships the rest
/// ([`ship_while_running`]). Returns the outcome and what was shipped (one [`Shipper`] per
/// area: none with coverage off, the remote one, the local one of the driver thread).
fn run_workload(
    w: Workload,
    plan: &Plan,
    handle: u64,
    argv: Vec<String>,
    sink: &mut Sink,
) -> Result<(Outcome, Vec<Shipper>), String> {
    let thread_plan = plan.clone();
    let (area_tx, area_rx) = mpsc::channel::<AreaNote>();
    let t = std::thread::Builder::new()
        .name(format!("wl-{w}"))
        .spawn(move || workload_thread(w, &thread_plan, handle, &argv, area_tx));
    let t = match t {
        Ok(t) => t,
        Err(e) => {
            let out = Outcome::failed(format!("spawning the workload thread: {e}"));
            return Ok((out, Vec::new()));
        }
    };
    let period = (plan.snapshot_ms > 0).then(|| Duration::from_millis(plan.snapshot_ms.into()));
    let (result, shipped) = ship_while_running(
        w.name(),
        period,
        CHUNK_WORDS,
        t,
        &area_rx,
        &mut StreamSink(sink),
    )?;
    let out = result.unwrap_or_else(|_| Outcome::failed("the workload thread panicked".into()));
    Ok((out, shipped))
}

fn workload_thread(
    w: Workload,
    plan: &Plan,
    handle: u64,
    argv: &[String],
    area_tx: mpsc::Sender<AreaNote>,
) -> Outcome {
    let mut kcov = None;
    if let Cover::On(mode) = plan.cover {
        let enabled = Kcov::open_default().and_then(|mut k| {
            k.init_trace(plan.area_words)?;
            k.remote_enable(trace_mode(mode), handle, &[])?;
            Ok(k)
        });
        match enabled {
            Ok(k) => {
                if let Some(area) = k.shared_area() {
                    // The main thread is waiting on the receiver; it only goes at our end.
                    let _ = area_tx.send((area, mode, CoverageSource::Remote));
                }
                kcov = Some(k);
            }
            Err(e) => return Outcome::failed(format!("kcov remote enable: {e}")),
        }
    }
    // `area_tx` lives until we return: its drop tells the main thread we ended.
    let start = Instant::now();
    let local = match plan.cover {
        Cover::On(mode) if plan.local && w != Workload::Cmd => Some(mode),
        _ => None,
    };
    let result = match local {
        // A thread created after the remote enable inherits the common handle (kcov_task_init
        // copies it), so its VHOST_SET_OWNER hands the handle to the vhost worker; and with a
        // kcov fd of its own it traces its own syscalls, which a remote-enabled thread cannot.
        Some(mode) => std::thread::scope(|s| {
            let tx = area_tx.clone();
            std::thread::Builder::new()
                .name(format!("drv-{w}"))
                .spawn_scoped(s, move || {
                    let words = plan.area_words.saturating_mul(LOCAL_AREA_FACTOR);
                    traced_locally(mode, words, tx, || run_agent_workload(w, plan))
                })
                .map_err(|e| format!("spawning the driver thread: {e}"))?
                .join()
                .unwrap_or_else(|_| Err("the driver thread panicked".into()))
        }),
        None if w == Workload::Cmd => {
            run_command(argv).map(|code| (code, vec![("exit_code".into(), code as u64)]))
        }
        None => run_agent_workload(w, plan),
    };
    let duration = start.elapsed();
    // Remote sections land at kcov_remote_stop(): let the last work items finish before
    // the disable; the main thread then ships what the area holds.
    std::thread::sleep(Duration::from_millis(u64::from(plan.settle_ms)));
    if let Some(mut k) = kcov {
        let _ = k.disable();
    }
    let (status, counters, error) = match result {
        Ok((0, c)) => (0, c, None),
        Ok((code, c)) => (code, c, Some(format!("command exited with status {code}"))),
        Err(e) => (1, Vec::new(), Some(e)),
    };
    Outcome {
        status,
        duration,
        counters,
        error,
    }
}

type Ran = Result<(i32, Vec<(String, u64)>), String>;

/// Runs `f` with this thread's own syscalls traced by a fresh kcov fd in `mode` (an area of
/// `words`, handed to the shipping thread on `area_tx` as local coverage), then disables.
fn traced_locally(
    mode: KcovMode,
    words: usize,
    area_tx: mpsc::Sender<AreaNote>,
    f: impl FnOnce() -> Ran,
) -> Ran {
    let mut k = Kcov::open_default()
        .and_then(|mut k| {
            k.init_trace(words)?;
            k.enable_local(trace_mode(mode))?;
            Ok(k)
        })
        .map_err(|e| format!("kcov local enable: {e}"))?;
    if let Some(area) = k.shared_area() {
        let _ = area_tx.send((area, mode, CoverageSource::Local));
    }
    let result = f();
    let _ = k.disable();
    result
}

/// A workload the agent drives itself (every one but `cmd`).
fn run_agent_workload(w: Workload, plan: &Plan) -> Ran {
    match w {
        Workload::VhostNetTx => plan
            .net_frame_size()
            .map_err(|e| e.to_string())
            .and_then(|size| net::run_tx(&plan.params, size).map_err(|e| e.to_string()))
            .map(|c| (0, c)),
        Workload::VhostNetRx => plan
            .net_frame_size()
            .map_err(|e| e.to_string())
            .and_then(|size| net::run_rx(&plan.params, size).map_err(|e| e.to_string()))
            .map(|c| (0, c)),
        Workload::VhostVsock => vsock::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostNetMatrix => net_matrix::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostNetControl => net_control::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostVsockControl => vsock_control::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostNetZcopy => net_matrix::run_zcopy(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostNetErrors => net_errors::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostNetGaps => net_gaps::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        // The kcov proof needs kcov (its own remote handle), not the run's coverage.
        Workload::VhostScsiWorkers => {
            scsi_workers::run(&plan.params, Path::new(KCOV_PATH).exists())
                .map(|c| (0, c))
                .map_err(|e| e.to_string())
        }
        Workload::VhostScsiControl => scsi_control::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostVsockCredit => vsock_credit::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::VhostVsockConns => vsock_conns::run(&plan.params)
            .map(|c| (0, c))
            .map_err(|e| e.to_string()),
        Workload::Cmd => Err("cmd is run by the agent's command runner".into()),
    }
}

fn read_command() -> Result<Option<Vec<String>>, String> {
    let raw = match std::fs::read(CMD_FILE) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("read {CMD_FILE}: {e}")),
    };
    let argv = kcov_wire::console::parse_argv(&raw);
    Ok(if argv.is_empty() { None } else { Some(argv) })
}

/// Runs the user command with the console as its stdio; returns its status
/// (128 + signal number when it was killed, like a shell).
fn run_command(argv: &[String]) -> Result<i32, String> {
    if argv.is_empty() {
        return Err("no command given".into());
    }
    println!("testbed-agent: running {}", argv.join(" "));
    let _ = std::io::stdout().flush();
    let status = match Command::new(&argv[0])
        .args(&argv[1..])
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .status()
    {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("testbed-agent: error: command not found: {}", argv[0]);
            return Ok(127);
        }
        Err(e) => {
            println!("testbed-agent: error: cannot run {}: {e}", argv[0]);
            return Ok(126);
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    println!("testbed-agent: command exited with status {code}");
    Ok(code)
}

/// Prints the exit marker and ends the VM (see [`sys::end_init`]).
fn finish(status: i32) -> ! {
    println!("{EXIT_MARKER} {status}");
    let _ = std::io::stdout().flush();
    sys::end_init(status)
}
