//! `/init` of the nested runner's L1 guest: checks that this kernel can host KVM guests,
//! runs our static `vmm` on the L2 kernel and initramfs the host packed, relays the L2's
//! vsock streams to the host over L1's own AF_VSOCK, prints the L2 console with a prefix,
//! and ends L1 with the vmm's status. The contract is `kcov_wire::nested`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guest_agent::sys::{end_init, kernel_release, mount_all};
use guest_agent::vsock;
use kcov_wire::nested::{self, L1_ERROR_PREFIX, L1_EXIT_MARKER, L1_READY_MARKER, L2_PREFIX};

/// The host's CID as seen from L1.
const HOST_CID: u32 = 2;
/// How long the relays may take to drain after the vmm ended.
const RELAY_DRAIN: Duration = Duration::from_secs(60);

/// The console, shared by the L2 line printer and our own messages so lines never mix.
#[derive(Clone)]
struct Console(Arc<Mutex<std::io::Stdout>>);

impl Console {
    fn line(&self, text: &str) {
        if let Ok(out) = self.0.lock() {
            let mut out = out.lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }

    fn say(&self, text: &str) {
        self.line(&format!("testbed-l1: {text}"));
    }
}

fn main() {
    let console = Console(Arc::new(Mutex::new(std::io::stdout())));
    let status = match std::panic::catch_unwind(|| run(&console)) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            console.line(&format!("{L1_ERROR_PREFIX}{e}"));
            nested::L1_SETUP_FAILED
        }
        Err(_) => {
            console.line(&format!("{L1_ERROR_PREFIX}the L1 init panicked"));
            nested::L1_SETUP_FAILED
        }
    };
    console.line(&format!("{L1_EXIT_MARKER} {status}"));
    end_init(status)
}

/// Why this L1 cannot run KVM guests, if it cannot (checked before starting the vmm, so a
/// misconfigured L1 fails in a second with a reason instead of hanging).
fn kvm_problem() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let svm = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "svm"));
    if !svm {
        return Some(
            "the L1 CPU has no SVM: QEMU must emulate it (-cpu max with TCG); \
             is this QEMU too old?"
                .into(),
        );
    }
    if !Path::new("/dev/kvm").exists() {
        return Some(
            "the L1 kernel has no /dev/kvm: build it with CONFIG_KVM=y and CONFIG_KVM_AMD=y \
             (kernel-config/nested-l1.config)"
                .into(),
        );
    }
    match std::fs::read_to_string("/sys/module/kvm_amd/parameters/npt") {
        Ok(v) if matches!(v.trim(), "N" | "0") => None,
        Ok(v) => Some(format!(
            "kvm_amd.npt is {} in L1: with nested paging the L2 never exits under QEMU TCG; \
             boot L1 with kvm_amd.npt=0",
            v.trim()
        )),
        Err(e) => Some(format!(
            "cannot read /sys/module/kvm_amd/parameters/npt ({e}): is KVM_AMD built in?"
        )),
    }
}

fn run(console: &Console) -> Result<i32, String> {
    mount_all()?;
    console.line(&format!("{L1_READY_MARKER} {}", kernel_release()));
    if let Some(why) = kvm_problem() {
        return Err(why);
    }
    let argv = kcov_wire::console::parse_argv(
        &std::fs::read(nested::VMM_ARGV_FILE)
            .map_err(|e| format!("reading {}: {e}", nested::VMM_ARGV_FILE))?,
    );
    let ports = match std::fs::read_to_string(nested::RELAY_FILE) {
        Ok(text) => nested::parse_ports(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("reading {}: {e}", nested::RELAY_FILE)),
    };
    let relays = ports
        .iter()
        .map(|&p| Relay::start(p, console.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    // The L2's vsock echo peer (its CID 2), on the vmm's hybrid socket for that port.
    let echo_path = format!("{}_{}", nested::L1_VSOCK_UDS, nested::L1_VSOCK_ECHO_PORT);
    let _ = std::fs::remove_file(&echo_path);
    let echo =
        UnixListener::bind(&echo_path).map_err(|e| format!("listening on {echo_path}: {e}"))?;
    serve_echo(echo, console.clone(), "vsock echo");
    let tap = match std::fs::read_to_string(nested::NET_FILE) {
        Ok(name) => Some(name.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {}: {e}", nested::NET_FILE)),
    };

    let start = Instant::now();
    let mut child = Command::new(nested::VMM_FILE)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", nested::VMM_FILE))?;
    let out = child.stdout.take().ok_or("no vmm stdout")?;
    let err = child.stderr.take().ok_or("no vmm stderr")?;
    let c2 = console.clone();
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen2 = Arc::clone(&seen);
    let out_thread = std::thread::spawn(move || print_lines(out, &c2, L2_PREFIX, Some(&seen2)));
    if let Some(tap) = tap {
        let c5 = console.clone();
        std::thread::spawn(move || {
            if let Err(e) = set_up_tap(&tap, &c5) {
                c5.say(&format!("tap {tap}: {e}"));
            }
        });
    }
    // A vmm whose L2 says nothing for a long time: say what its threads are doing, so a
    // hang can be told from slowness (L1's console reaches the host; L2's is silent). Ends at
    // the first L2 line or when the vmm ends (`seen` is set then too).
    let c4 = console.clone();
    let pid = child.id();
    let seen3 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for after in [30u64, 60, 120] {
            while start.elapsed() < Duration::from_secs(after) {
                if seen3.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            c4.say(&format!(
                "no L2 output after {after}s: {}",
                stall_report(pid)
            ));
        }
    });
    let c3 = console.clone();
    let err_thread = std::thread::spawn(move || print_lines(err, &c3, "testbed-l1: vmm: ", None));
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the vmm: {e}"))?;
    seen.store(true, std::sync::atomic::Ordering::Release);
    let _ = out_thread.join();
    let _ = err_thread.join();
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    let meaning = match code {
        0 => " (the L2 reset or powered off)",
        1 => " (the vmm could not start the L2)",
        2 => " (the L2 triple-faulted: how a Linux booted with reboot=t resets)",
        3 => " (the vmm's --timeout)",
        4 => " (KVM could not run the L2)",
        _ => "",
    };
    console.say(&format!(
        "vmm exited with status {code}{meaning} after {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    // The vmm closed its end of every relayed connection: let them drain to the host.
    let deadline = Instant::now() + RELAY_DRAIN;
    for r in relays {
        r.finish(deadline);
    }
    if Path::new(nested::HOST_KCOV_FILE).exists() {
        match send_file(nested::HOST_KCOV_FILE, nested::HOST_KCOV_PORT) {
            Ok(n) => console.say(&format!("host kcov: sent {n} bytes to the host")),
            Err(e) => console.say(&format!("host kcov: not sent: {e}")),
        }
    }
    Ok(code)
}

/// Copies `from` line by line onto the console with `prefix`; a last line without a newline
/// is printed too. Bytes that are not UTF-8 are replaced. `seen` is set at the first line.
fn print_lines(
    from: impl Read,
    console: &Console,
    prefix: &str,
    seen: Option<&std::sync::atomic::AtomicBool>,
) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    while let Ok(n) = reader.read_until(b'\n', &mut buf) {
        if n == 0 {
            break;
        }
        if let Some(seen) = seen {
            seen.store(true, std::sync::atomic::Ordering::Release);
        }
        let line = String::from_utf8_lossy(&buf);
        console.line(&format!("{prefix}{}", line.trim_end_matches(['\n', '\r'])));
        buf.clear();
    }
}

/// Waits for the vmm to create the tap, gives it L1's address and serves TCP echo there.
fn set_up_tap(tap: &str, console: &Console) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !Path::new(&format!("/sys/class/net/{tap}")).exists() {
        if Instant::now() > deadline {
            return Err("the vmm did not create it within 120s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = std::net::Ipv4Addr::from(nested::L1_TAP_ADDR);
    frontends::netif::set_ipv4_up(tap, addr, nested::L1_TAP_PREFIX).map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind((addr, nested::L1_TCP_ECHO_PORT))
        .map_err(|e| format!("TCP echo on {addr}:{}: {e}", nested::L1_TCP_ECHO_PORT))?;
    console.say(&format!(
        "tap {tap} up as {addr}/{}, TCP echo on port {}",
        nested::L1_TAP_PREFIX,
        nested::L1_TCP_ECHO_PORT
    ));
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let c = console.clone();
                std::thread::spawn(move || {
                    let n = echo_stream(&conn, &conn);
                    c.say(&format!("TCP echo: {n} bytes"));
                });
            }
            Err(e) => return Err(format!("TCP echo: accept: {e}")),
        }
    }
}

/// Serves echo on a Unix listener (each connection on its own thread), in the background.
fn serve_echo(listener: UnixListener, console: Console, what: &'static str) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    let c = console.clone();
                    std::thread::spawn(move || {
                        let n = echo_stream(&conn, &conn);
                        c.say(&format!("{what}: {n} bytes"));
                    });
                }
                Err(e) => {
                    console.say(&format!("{what}: accept: {e}"));
                    return;
                }
            }
        }
    });
}

/// Writes back everything read until the peer ends; returns the byte count.
fn echo_stream(mut r: impl Read, mut w: impl Write) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).is_err() {
            return total;
        }
        total += n as u64;
    }
}

/// One line on the vmm's threads (name, state, CPU ticks, wait channel) and L1's clocksource.
fn stall_report(pid: u32) -> String {
    let mut parts = Vec::new();
    let clock =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default();
    parts.push(format!("L1 clocksource {}", clock.trim()));
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return parts.join("; ");
    };
    for t in tasks.flatten() {
        let p = t.path();
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        // comm is in parentheses; fields after it: state ... utime(14) stime(15).
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = rest.first().copied().unwrap_or("?");
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| rest.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
        parts.push(format!(
            "{comm} {state} {ticks} ticks wchan {}",
            wchan.trim()
        ));
    }
    parts.join("; ")
}

/// Sends a file's bytes to the host on `port` and closes the connection.
fn send_file(path: &str, port: u32) -> Result<usize, String> {
    let data = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
    let fd = vsock::stream_socket()?;
    vsock::connect(&fd, HOST_CID, port)
        .map_err(|e| format!("connecting to the host's vsock port {port}: {e}"))?;
    let mut s = std::fs::File::from(fd);
    s.write_all(&data)
        .map_err(|e| format!("sending to the host: {e}"))?;
    Ok(data.len())
}

/// Relays connections the vmm makes for its L2 on one port (`<uds>_<port>`) to the host's
/// AF_VSOCK port of the same number.
struct Relay {
    port: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: JoinHandle<Vec<JoinHandle<()>>>,
}

impl Relay {
    fn start(port: u32, console: Console) -> Result<Relay, String> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let path = format!("{}_{port}", nested::L1_VSOCK_UDS);
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).map_err(|e| format!("listening on {path}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{path}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            loop {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let c = console.clone();
                        conns.push(std::thread::spawn(move || {
                            if let Err(e) = relay_one(conn, port) {
                                c.say(&format!("relay port {port}: {e}"));
                            }
                        }));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stop2.load(Ordering::Acquire) {
                            return conns;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        console.say(&format!("relay port {port}: accept: {e}"));
                        return conns;
                    }
                }
            }
        });
        Ok(Relay { port, stop, thread })
    }

    /// Stops accepting and waits (until `deadline`) for open connections to drain.
    fn finish(self, deadline: Instant) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let Ok(conns) = self.thread.join() else {
            return;
        };
        for c in conns {
            while !c.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if c.is_finished() {
                let _ = c.join();
            }
        }
        let _ = std::fs::remove_file(format!("{}_{}", nested::L1_VSOCK_UDS, self.port));
    }
}

/// One relayed connection: L2 → host until the L2 side ends (then the host side is shut for
/// writing), host → L2 alongside.
fn relay_one(l2: UnixStream, port: u32) -> Result<(), String> {
    let fd: OwnedFd = vsock::stream_socket()?;
    vsock::connect(&fd, HOST_CID, port)
        .map_err(|e| format!("connecting to the host's vsock port {port}: {e}"))?;
    let host = std::fs::File::from(fd);
    let mut host_w = host.try_clone().map_err(|e| e.to_string())?;
    let mut host_r = host;
    let mut l2_r = l2.try_clone().map_err(|e| e.to_string())?;
    let mut l2_w = l2;
    // Host → L2: ends when the host closes or the L2 side goes away.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut host_r, &mut l2_w);
        let _ = l2_w.shutdown(std::net::Shutdown::Write);
    });
    let n = std::io::copy(&mut l2_r, &mut host_w);
    // SAFETY: shutdown(2) on a socket we own; ends the host's read side cleanly.
    unsafe { libc::shutdown(host_w.as_raw_fd(), libc::SHUT_WR) };
    n.map(|_| ())
        .map_err(|e| format!("copying to the host: {e}"))
}
