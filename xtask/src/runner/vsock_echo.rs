//! A vsock check and benchmark under the qemu runner: a static guest program
//! connects AF_VSOCK to CID 2 and echoes a stream the host sends through the
//! listener on `<uds>_<port>`, while a host process connects the other way
//! (`CONNECT <port>\n` on `<uds>`) to the same program listening in the
//! guest. Both streams are checked byte-exact against a deterministic
//! pattern; the guest-initiated echo gives the throughput.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::{BootOutcome, BootSpec, RunnerKind, Timeouts, VsockSpec};

/// Guest port the host listens on (guest → host direction).
pub const HOST_PORT: u32 = 5000;
/// Guest port the guest listens on (host → guest direction).
pub const GUEST_PORT: u32 = 6000;
/// Where the program lives in the initramfs.
pub const GUEST_PATH: &str = "/bin/vsock-echo";

/// `vsock-echo CONNECT_PORT LISTEN_PORT`: listens on LISTEN_PORT and echoes
/// one host-initiated connection (child process), connects to CID 2
/// CONNECT_PORT and echoes it; exits non-zero on any error.
pub const GUEST_SRC: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static char buf[65536];

static int echo(int fd, const char *what) {
    long long total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "vsock-echo: %s read: %s\n", what, strerror(errno));
            return 1;
        }
        if (n == 0) break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w < 0) {
                if (errno == EINTR) continue;
                fprintf(stderr, "vsock-echo: %s write: %s\n", what, strerror(errno));
                return 1;
            }
            off += w;
        }
        total += n;
    }
    shutdown(fd, SHUT_WR);
    printf("vsock-echo: %s echoed %lld bytes\n", what, total);
    fflush(stdout);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: vsock-echo CONNECT_PORT LISTEN_PORT\n");
        return 2;
    }
    unsigned cport = (unsigned)strtoul(argv[1], 0, 10);
    unsigned lport = (unsigned)strtoul(argv[2], 0, 10);
    int ls = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm la = {0};
    la.svm_family = AF_VSOCK;
    la.svm_cid = VMADDR_CID_ANY;
    la.svm_port = lport;
    if (ls < 0 || bind(ls, (struct sockaddr *)&la, sizeof la) || listen(ls, 1)) {
        fprintf(stderr, "vsock-echo: listen on port %u: %s\n", lport, strerror(errno));
        return 1;
    }
    printf("vsock-echo: listening on port %u\n", lport);
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        int c = accept(ls, 0, 0);
        if (c < 0) {
            fprintf(stderr, "vsock-echo: accept: %s\n", strerror(errno));
            _exit(1);
        }
        _exit(echo(c, "host-initiated"));
    }
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm ca = {0};
    ca.svm_family = AF_VSOCK;
    ca.svm_cid = VMADDR_CID_HOST;
    ca.svm_port = cport;
    if (s < 0 || connect(s, (struct sockaddr *)&ca, sizeof ca)) {
        fprintf(stderr, "vsock-echo: connect to CID 2 port %u: %s\n", cport, strerror(errno));
        return 1;
    }
    int rc = echo(s, "guest-initiated");
    int st = 0;
    if (waitpid(child, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
    return rc;
}
"#;

/// Compiles [`GUEST_SRC`] statically into `dir`.
pub fn compile_guest(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("vsock-echo.c");
    std::fs::write(&src, GUEST_SRC)?;
    let bin = dir.join("vsock-echo");
    crate::agent::gcc_static(&src, &bin)?;
    Ok(bin)
}

/// Byte `i` of the deterministic test stream.
pub fn pattern_byte(i: u64) -> u8 {
    let x = (i / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> (8 * (i % 8))) as u8
}

fn fill_pattern(buf: &mut [u8], start: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(start + k as u64);
    }
}

/// Sends `bytes` of the pattern on `stream` while reading the echo back and
/// checking it. Returns the time from start to the echo's EOF.
fn echo_through(stream: UnixStream, bytes: u64) -> Result<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let w: JoinHandle<std::io::Result<()>> = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(buf.len() as u64) as usize;
            fill_pattern(&mut buf[..n], sent);
            writer.write_all(&buf[..n])?;
            sent += n as u64;
        }
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).context("reading the echo")?;
        if n == 0 {
            break;
        }
        ensure!(
            got + n as u64 <= bytes,
            "echo longer than sent ({} > {bytes})",
            got + n as u64
        );
        fill_pattern(&mut want[..n], got);
        if buf[..n] != want[..n] {
            let off = buf[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            bail!("echo differs at byte {}", got + off as u64);
        }
        got += n as u64;
    }
    let elapsed = start.elapsed();
    match w.join() {
        Ok(r) => r.context("sending the stream")?,
        Err(_) => bail!("the writer thread panicked"),
    }
    ensure!(got == bytes, "echo ended after {got} of {bytes} bytes");
    Ok(elapsed)
}

/// Guest → host: accept the guest's connection on `<uds>_HOST_PORT`, echo.
fn guest_initiated(listener: UnixListener, bytes: u64, stop: Arc<AtomicBool>) -> Result<Duration> {
    listener.set_nonblocking(true)?;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    bail!("the guest never connected to CID 2 port {HOST_PORT}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    stream.set_nonblocking(false)?;
    echo_through(stream, bytes)
}

/// Host → guest: `CONNECT GUEST_PORT` on `<uds>` until the guest listens.
fn host_initiated(uds: PathBuf, bytes: u64, stop: Arc<AtomicBool>) -> Result<(u32, Duration)> {
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("no OK for CONNECT {GUEST_PORT} on {}", uds.display());
        }
        let attempt = || -> Result<Option<(UnixStream, u32)>> {
            let mut s = UnixStream::connect(&uds)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())?;
            // Read the reply line byte by byte: the echo follows right after.
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while line.len() < 32 {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) if b[0] == b'\n' => break,
                    Ok(_) => line.push(b[0]),
                }
            }
            let text = String::from_utf8_lossy(&line).to_string();
            let port = text
                .strip_prefix("OK ")
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("bad reply {text:?} to CONNECT"))?;
            Ok(Some((s, port)))
        };
        match attempt() {
            Ok(Some((s, port))) => return Ok((port, echo_through(s, bytes)?)),
            // Refused (the guest does not listen yet): try again.
            Ok(None) | Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What an echo run measured.
#[derive(Debug)]
pub struct EchoReport {
    pub outcome: BootOutcome,
    /// Guest-initiated stream: bytes each way and time to the echo's EOF.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Host-initiated stream: the host port the backend gave and bytes echoed.
    pub host_port: u32,
    pub host_bytes: u64,
}

impl EchoReport {
    /// Guest → host payload throughput (each byte also went host → guest).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Boots `bzimage` with the agent and the echo program under the qemu
/// runner in `work_dir`, echoes `bytes` guest-initiated and `host_bytes`
/// host-initiated, and checks both byte-exact.
pub fn run(
    bzimage: &Path,
    agent: &Path,
    work_dir: &Path,
    bytes: u64,
    host_bytes: u64,
) -> Result<EchoReport> {
    if std::env::var_os("VSOCK_DEBUG").is_some() {
        vsock::log_to_stderr(vsock::LevelFilter::Debug);
    }
    let prog = compile_guest(work_dir)?;
    let initramfs = work_dir.join("initramfs.cpio");
    let include = images::Include::parse(&format!("{}:{GUEST_PATH}", prog.display()))?;
    let cmd = vec![
        GUEST_PATH.to_string(),
        HOST_PORT.to_string(),
        GUEST_PORT.to_string(),
    ];
    crate::image::build(agent, &[include], &cmd, &initramfs)?;
    let vsock = VsockSpec::in_dir(work_dir);
    let spec = BootSpec {
        net: None,
        host_kcov: false,
        nested: None,
        vcpus: 1,
        bzimage: bzimage.to_path_buf(),
        initramfs,
        cmdline: format!("{} quiet", crate::boot::BASE_CMDLINE),
        mem_mib: 512,
        serial_log: work_dir.join("serial.log"),
        echo: false,
        timeouts: Timeouts {
            boot: Duration::from_secs(120),
            run: Duration::from_secs(300),
        },
        vsock: Some(vsock.clone()),
        stop: None,
    };
    // Listen before the guest starts.
    let listener = UnixListener::bind(vsock::muxer::listener_path(&vsock.uds, HOST_PORT))
        .context("binding the host listener")?;
    let stop = Arc::new(AtomicBool::new(false));
    let (s1, s2) = (Arc::clone(&stop), Arc::clone(&stop));
    let g = std::thread::spawn(move || guest_initiated(listener, bytes, s1));
    let uds = vsock.uds.clone();
    let h = std::thread::spawn(move || host_initiated(uds, host_bytes, s2));
    let outcome = super::boot(RunnerKind::Qemu, &spec);
    stop.store(true, Ordering::Relaxed);
    let g = g
        .join()
        .map_err(|_| anyhow::anyhow!("host thread panicked"))?;
    let h = h
        .join()
        .map_err(|_| anyhow::anyhow!("host thread panicked"))?;
    let outcome = outcome?;
    let console = || {
        format!(
            "guest {}; console tail:\n{}",
            outcome.status.describe(),
            outcome.tail.join("\n")
        )
    };
    let elapsed = g.with_context(console)?;
    let (host_port, _) = h.with_context(console)?;
    ensure!(outcome.status.exit_code() == 0, "{}", console());
    Ok(EchoReport {
        outcome,
        bytes,
        elapsed,
        host_port,
        host_bytes,
    })
}

/// Reads `vsock-echo:` lines of a console log (for reports).
pub fn guest_lines(serial_log: &Path) -> Vec<String> {
    std::fs::File::open(serial_log)
        .map(|f| {
            BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.contains("vsock-echo:"))
                .collect()
        })
        .unwrap_or_default()
}
