//! The in-process virtio-vsock device under the real /dev/kvm: the
//! `vsock_stream` test guest drives it through virtio-mmio (handshake, three
//! queues, credit flow control) against the hybrid-vsock Unix sockets, both
//! directions checked byte-exact. Tests skip ("SKIP: reason") where /dev/kvm
//! cannot be opened. The `vmm` binary's vsock flags are checked everywhere.

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use vmm::devices::virtio::vsock::{VsockConfig, VsockDevice, VsockHandle};
use vmm::devices::virtio::{device_type, VirtioMmioDevice};
use vmm::guests::*;
use vmm::{run_with_devices, RunOutcome, VmConfig, VmExit};

const CID: u64 = 52;
const OUT_PORT: u32 = 5000;
const LISTEN_PORT: u32 = 6000;
const OP_RESPONSE: u32 = 2;
const OP_RST: u32 = 3;
const E_OK: u32 = 0;
const E_REFUSED: u32 = 2;
const E_NOTRUN: u32 = 0xffff;
/// The host's advertised receive buffer (vsock `Limits::default().conn_buf_size`).
const HOST_BUF_ALLOC: u32 = 256 * 1024;

/// The pattern as guests/vsock_stream.c builds it (independent of the
/// library's copy): 8-byte little-endian words, period 8191 words.
fn pattern(i: u64) -> u8 {
    let word = ((i / 8) % 8191 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    word.to_le_bytes()[(i % 8) as usize]
}

fn pattern_bytes(n: usize) -> Vec<u8> {
    (0..n as u64).map(pattern).collect()
}

/// Index of the first byte of `got` that differs from the pattern, or of the
/// missing/extra tail.
fn first_mismatch(got: &[u8], want_len: usize) -> Option<usize> {
    got.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern(*i as u64))
        .map(|(i, _)| i)
        .or((got.len() != want_len).then_some(got.len().min(want_len)))
}

struct Vm {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    dev: Option<VsockDevice>,
    handle: VsockHandle,
    kernel: PathBuf,
}

impl Vm {
    fn new() -> Vm {
        let d = tempfile::tempdir().unwrap();
        let uds = d.path().join("vsock.sock");
        let dev = VsockDevice::new(&VsockConfig::new(&uds, CID)).unwrap();
        let handle = dev.handle();
        let kernel = guest(&d, "vsock_stream.elf", VSOCK_STREAM);
        Vm {
            _dir: d,
            uds,
            dev: Some(dev),
            handle,
            kernel,
        }
    }

    /// A listener on `<uds>_port` that reads one connection to EOF, after
    /// `delay` (a slow host reader).
    fn listen(&self, port: u32, delay: Duration) -> JoinHandle<Vec<u8>> {
        let l = UnixListener::bind(vsock::muxer::listener_path(&self.uds, port)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            std::thread::sleep(delay);
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v
        })
    }

    /// Runs the guest with `cmdline`; returns the outcome and its reports.
    fn run(&mut self, cmdline: &str, ioeventfd: bool) -> (RunOutcome, Vec<u32>) {
        let dev = self.dev.take().expect("one run per Vm");
        let cfg = VmConfig {
            kernel: self.kernel.clone(),
            cmdline: cmdline.into(),
            mem_mib: 64,
            serial_stdout: false,
            timeout: Some(Duration::from_secs(60)),
            skip_host_check: true,
            virtio_devices: vec![VirtioMmioDevice {
                device: Arc::new(Mutex::new(dev)),
                ioeventfd,
            }],
            ..Default::default()
        };
        let p = Probes::new();
        let o = run_with_devices(&cfg, p.devices()).unwrap();
        let text = String::from_utf8_lossy(&p.text()).into_owned();
        eprintln!("guest said:\n{text}");
        (o, p.reports())
    }
}

/// The host side of a host-initiated connection: CONNECT, check the OK line,
/// send `n` pattern bytes, shut down writing, read the echo to EOF.
/// Returns (host port from the OK line, echoed bytes).
fn host_connect_and_echo(uds: &Path, port: u32, n: usize) -> JoinHandle<(u32, Vec<u8>)> {
    let uds = uds.to_path_buf();
    std::thread::spawn(move || {
        let mut s = UnixStream::connect(&uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        // Read the OK line byte by byte: echo data may follow at once.
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.last() != Some(&b'\n') {
            assert_eq!(s.read(&mut b).unwrap(), 1, "EOF before the OK line");
            line.push(b[0]);
            assert!(line.len() < 32, "no OK line: {line:?}");
        }
        let line = String::from_utf8(line).unwrap();
        let host_port: u32 = line
            .strip_prefix("OK ")
            .and_then(|r| r.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("bad OK line {line:?}"));
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let data = pattern_bytes(n);
            for c in data.chunks(10_000) {
                w.write_all(c).unwrap();
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut echo = Vec::new();
        let mut r = BufReader::new(s);
        r.read_to_end(&mut echo).unwrap();
        writer.join().unwrap();
        (host_port, echo)
    })
}

struct OutReport {
    err: u32,
    first_op: u32,
    buf_alloc: u32,
    sent: u64,
    packets: u32,
    credit_requests: u32,
    stalls: u32,
    last_op: u32,
}

struct InReport {
    err: u32,
    host_port: u32,
    received: u64,
    echoed: u64,
    shut_flags: u32,
    last_op: u32,
}

struct Summary {
    out: OutReport,
    inn: InReport,
    unexpected: u32,
}

fn parse(reports: Vec<u32>, event_idx: bool) -> Summary {
    let mut r = Reports::new(reports);
    r.expect("boot", BOOT_MAGIC);
    r.expect("DeviceID", device_type::VSOCK);
    r.expect("DeviceFeatures[0] (RING_EVENT_IDX)", 1 << 29);
    r.expect("DeviceFeatures[1] (VERSION_1)", 1);
    r.expect("status after FEATURES_OK", 0xb);
    r.expect("config guest_cid lo", CID as u32);
    r.expect("config guest_cid hi", 0);
    for q in 0..3 {
        r.expect(&format!("QueueNumMax {q}"), 1024);
    }
    r.expect("QueueNumMax 3 (no such queue)", 0);
    r.expect("status after DRIVER_OK", 0xf);
    let out = OutReport {
        err: r.next("out error"),
        first_op: r.next("out first op"),
        buf_alloc: r.next("out host buf_alloc"),
        sent: r.u64("out bytes"),
        packets: r.next("out packets"),
        credit_requests: r.next("out credit requests"),
        stalls: r.next("out stalls"),
        last_op: r.next("out last op"),
    };
    let inn = InReport {
        err: r.next("in error"),
        host_port: r.next("in host port"),
        received: r.u64("in bytes received"),
        echoed: r.u64("in bytes echoed"),
        shut_flags: r.next("in shutdown flags"),
        last_op: r.next("in last op"),
    };
    let rx = r.next("RX packets");
    let tx = r.next("TX packets");
    let unexpected = r.next("unexpected packets");
    assert!(rx > 0 && tx > 0, "rx {rx} tx {tx}");
    r.expect("status after reset", 0);
    r.end();
    let _ = event_idx;
    Summary {
        out,
        inn,
        unexpected,
    }
}

fn check_out_ok(o: &OutReport, bytes: u64) {
    assert_eq!(o.err, E_OK, "out error");
    assert_eq!(o.first_op, OP_RESPONSE, "first reply");
    assert_eq!(o.buf_alloc, HOST_BUF_ALLOC);
    assert_eq!(o.sent, bytes);
    assert!(o.packets as u64 >= bytes.div_ceil(65536), "{}", o.packets);
    assert_eq!(o.last_op, OP_RST, "the host answers SHUTDOWN with RST");
}

fn check_vm(o: &RunOutcome, h: &VsockHandle) {
    assert_eq!(o.exit, VmExit::Reset, "{o:?}");
    assert_eq!(o.unclaimed_mmio, 0);
    let s = h.stats();
    assert_eq!(
        (s.activations, s.worker_panics, s.backend_errors),
        (1, 0, 0),
        "{s:?}"
    );
    assert!(s.tx_packets > 0 && s.rx_packets > 0, "{s:?}");
    assert_eq!(o.virtio.len(), 1);
    assert_eq!(o.virtio[0].device_type, device_type::VSOCK);
    assert_eq!((o.virtio[0].status, o.virtio[0].activations), (0, 1));
}

/// The guest streams `bytes` to a host listener on OUT_PORT that waits `delay`
/// before reading (`more`: command-line words after `vsock.bytes`): the host
/// gets the pattern byte-exact and the guest reports a clean stream.
fn run_guest_to_host(
    vm: &mut Vm,
    bytes: u64,
    delay: Duration,
    more: &str,
) -> (RunOutcome, Summary) {
    let sink = vm.listen(OUT_PORT, delay);
    let (o, r) = vm.run(
        &format!("vsock.out={OUT_PORT} vsock.bytes={bytes}{more}"),
        true,
    );
    let got = sink.join().unwrap();
    assert_eq!(
        first_mismatch(&got, bytes as usize),
        None,
        "got {} bytes",
        got.len()
    );
    let s = parse(r, false);
    check_out_ok(&s.out, bytes);
    (o, s)
}

#[test]
fn guest_to_host_stream_is_byte_exact() {
    if !kvm_or_skip("guest_to_host_stream_is_byte_exact") {
        return;
    }
    let bytes = 393_216u64;
    let mut vm = Vm::new();
    let (o, s) = run_guest_to_host(&mut vm, bytes, Duration::ZERO, "");
    assert_eq!(s.inn.err, E_NOTRUN);
    assert_eq!(s.unexpected, 0);
    check_vm(&o, &vm.handle);
    if o.virtio[0].ioeventfd {
        assert_eq!(
            o.virtio[0].notify_exits, 0,
            "notifications went through ioeventfds"
        );
    }
    assert!(
        !vm.uds.exists(),
        "the guest's reset dropped the muxer and its socket"
    );
    eprintln!("guest_to_host: {:?}, {:?}", vm.handle.stats(), o.wall);
}

#[test]
fn host_initiated_connection_is_echoed_byte_exact() {
    if !kvm_or_skip("host_initiated_connection_is_echoed_byte_exact") {
        return;
    }
    let n = 300_000usize;
    let mut vm = Vm::new();
    // Connect before the VM starts: the socket exists as soon as the device does.
    let host = host_connect_and_echo(&vm.uds, LISTEN_PORT, n);
    let (o, r) = vm.run(&format!("vsock.listen={LISTEN_PORT}"), true);
    let (host_port, echo) = host.join().unwrap();
    assert_eq!(
        first_mismatch(&echo, n),
        None,
        "echo of {} bytes",
        echo.len()
    );
    let s = parse(r, false);
    assert_eq!(s.out.err, E_NOTRUN);
    let i = &s.inn;
    assert_eq!(i.err, E_OK);
    assert_eq!(
        i.host_port, host_port,
        "the OK line names the connection's host port"
    );
    assert!(host_port >= 1 << 30, "{host_port}");
    assert_eq!((i.received, i.echoed), (n as u64, n as u64));
    assert_eq!(
        i.shut_flags & 2,
        2,
        "the host's EOF reached the guest as SHUTDOWN SEND"
    );
    assert_eq!(i.last_op, OP_RST);
    assert_eq!(s.unexpected, 0);
    check_vm(&o, &vm.handle);
}

/// Both directions at once, with VIRTIO_RING_F_EVENT_IDX and with QueueNotify
/// as MMIO exits.
#[test]
fn both_directions_at_once_with_event_idx_and_mmio_exits() {
    if !kvm_or_skip("both_directions_at_once_with_event_idx_and_mmio_exits") {
        return;
    }
    for (extra, ioeventfd) in [
        ("vsock.eventidx", true),
        ("vsock.eventidx", false),
        ("", false),
    ] {
        let (bytes, n) = (500_000u64, 200_000usize);
        let mut vm = Vm::new();
        let sink = vm.listen(OUT_PORT, Duration::ZERO);
        let host = host_connect_and_echo(&vm.uds, LISTEN_PORT, n);
        let (o, r) = vm.run(
            &format!(
                "vsock.out={OUT_PORT} vsock.bytes={bytes} vsock.pkt=65536 vsock.listen={LISTEN_PORT} {extra}"
            ),
            ioeventfd,
        );
        let got = sink.join().unwrap();
        let (_, echo) = host.join().unwrap();
        assert_eq!(
            first_mismatch(&got, bytes as usize),
            None,
            "{extra} {ioeventfd}"
        );
        assert_eq!(first_mismatch(&echo, n), None, "{extra} {ioeventfd}");
        let s = parse(r, !extra.is_empty());
        check_out_ok(&s.out, bytes);
        assert_eq!(
            (s.inn.err, s.inn.received, s.inn.echoed),
            (E_OK, n as u64, n as u64)
        );
        assert_eq!(s.unexpected, 0);
        check_vm(&o, &vm.handle);
        if !ioeventfd {
            assert!(o.virtio[0].notify_exits > 0);
        }
        eprintln!(
            "{extra:?} ioeventfd={ioeventfd}: {:?} notify exits {}",
            vm.handle.stats(),
            o.virtio[0].notify_exits
        );
    }
}

/// A host reader that does not read for a while: the guest runs out of
/// credit, asks for more with CREDIT_REQUEST, and resumes when the host
/// drains; nothing is lost and the host buffers at most its buf_alloc.
#[test]
fn slow_host_reader_stalls_the_guest_on_credit() {
    if !kvm_or_skip("slow_host_reader_stalls_the_guest_on_credit") {
        return;
    }
    let bytes = 2u64 << 20;
    let mut vm = Vm::new();
    let (o, s) = run_guest_to_host(
        &mut vm,
        bytes,
        Duration::from_millis(700),
        " vsock.stall=2000",
    );
    assert!(s.out.stalls >= 1, "the guest never ran out of credit");
    assert!(s.out.credit_requests >= 1, "no CREDIT_REQUEST sent");
    assert_eq!(s.unexpected, 0);
    check_vm(&o, &vm.handle);
}

/// No listener on `<uds>_P`: the guest's REQUEST is answered with RST.
#[test]
fn connect_without_host_listener_is_refused() {
    if !kvm_or_skip("connect_without_host_listener_is_refused") {
        return;
    }
    let mut vm = Vm::new();
    let (o, r) = vm.run(&format!("vsock.out={OUT_PORT}"), true);
    let s = parse(r, false);
    assert_eq!(s.out.err, E_REFUSED);
    assert_eq!(
        (s.out.first_op, s.out.last_op, s.out.sent),
        (OP_RST, OP_RST, 0)
    );
    check_vm(&o, &vm.handle);
}

#[test]
fn library_pattern_matches_the_guest() {
    for i in [0u64, 1, 255, 256, 65_535, 65_536, 1 << 24, (1 << 32) + 17] {
        assert_eq!(stream_pattern(i), pattern(i), "{i}");
    }
}

fn vmm_bin(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bad vsock flags of the `vmm` binary: one error line each, exit status 1,
/// before anything runs.
#[test]
fn vmm_binary_rejects_bad_vsock_flags() {
    let d = tempfile::tempdir().unwrap();
    let kernel = guest(&d, "hello.elf", HELLO);
    let kernel = kernel.to_str().unwrap();
    let uds = d.path().join("v.sock");
    let uds = uds.to_str().unwrap();
    let file = d.path().join("regular");
    std::fs::write(&file, b"keep").unwrap();
    let file = file.to_str().unwrap();
    let nodir = d.path().join("no/such/dir/v.sock");
    let nodir = nodir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--vsock-uds", uds, "--guest-cid", "2"], "guest CID 2"),
        (&["--vsock-uds", uds, "--guest-cid", "0"], "guest CID 0"),
        (
            &["--vsock-uds", uds, "--guest-cid", "4294967295"],
            "reserved",
        ),
        (&["--vsock-uds", uds, "--guest-cid", "x"], "--guest-cid"),
        (&["--vsock-uds", file], "not a Unix socket"),
        (&["--vsock-uds", nodir], "no/such/dir"),
        (&["--guest-cid", "5"], "--vsock-uds"),
    ];
    for (args, want) in cases {
        let mut a = vec!["--kernel", kernel, "--mem", "64", "--timeout", "5"];
        a.extend_from_slice(args);
        let (code, err) = vmm_bin(&a);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.starts_with("vmm: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(std::fs::read(file).unwrap(), b"keep");
    assert!(!Path::new(uds).exists());
}

/// Under /dev/kvm the binary serves the device: the guest (through its
/// command line) reaches a host listener on `<uds>_P`.
#[test]
fn vmm_binary_serves_vsock() {
    if !kvm_or_skip("vmm_binary_serves_vsock") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let kernel = guest(&d, "vsock_stream.elf", VSOCK_STREAM);
    let uds = d.path().join("v.sock");
    let l = UnixListener::bind(vsock::muxer::listener_path(&uds, OUT_PORT)).unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    });
    let t = Instant::now();
    let (code, err) = vmm_bin(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "64",
        "--timeout",
        "30",
        "--no-host-check",
        "--cmdline",
        &format!("vsock.out={OUT_PORT} vsock.bytes=100000"),
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--guest-cid",
        "7",
    ]);
    assert_eq!(code, 0, "{err}");
    let got = sink.join().unwrap();
    assert_eq!(first_mismatch(&got, 100_000), None, "{} bytes", got.len());
    assert!(t.elapsed() < Duration::from_secs(30));
}
