//! The vmm binary toward its surroundings: inherited file descriptors, and what it says about
//! vsock connects nobody answers.
//!
//! It must not care which file descriptors it inherits. Seen in the nested
//! setup (shared/NESTED.md): a vmm started by a process that still held the listening
//! socket of the guest's stream (as fd 3) printed nothing for minutes. Here a parent hands
//! the vmm that very listener (the guest's `<uds>_5000`) as fd 3, plus open pipes on fds
//! 4 to 9, while it accepts the guest's connection on the same listener: the vsock test
//! guest's whole stream must arrive, byte-exact, and the vmm must end cleanly.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The vsock test guest written into `dir`, and the vsock socket path beside it.
fn vsock_guest(dir: &tempfile::TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let kernel = guest(dir, "vsock_stream.elf", vmm::guests::VSOCK_STREAM);
    (kernel, dir.path().join("v.sock"))
}

/// The vmm binary on the vsock test guest with `cmdline`, stopped after `timeout` seconds.
fn vmm_cmd(
    kernel: &std::path::Path,
    uds: &std::path::Path,
    cmdline: &str,
    timeout: u32,
) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("--kernel")
        .arg(kernel)
        .args(["--no-host-check", "--mem", "64", "--quiet"])
        .args(["--timeout", &timeout.to_string(), "--cmdline", cmdline])
        .arg("--vsock-uds")
        .arg(uds)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn vmm_ignores_inherited_fds_including_the_streams_own_listener() {
    if !kvm_or_skip("vmm_ignores_inherited_fds_including_the_streams_own_listener") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kernel, uds) = vsock_guest(&dir);
    let listener = UnixListener::bind(vsock::muxer::listener_path(&uds, 5000)).unwrap();
    let pipes: Vec<(std::io::PipeReader, std::io::PipeWriter)> =
        (0..3).map(|_| std::io::pipe().unwrap()).collect();
    let mut extra: Vec<i32> = vec![listener.as_raw_fd()];
    for (r, w) in &pipes {
        extra.push(r.as_raw_fd());
        extra.push(w.as_raw_fd());
    }
    let bytes = 200_000usize;
    let mut cmd = vmm_cmd(
        &kernel,
        &uds,
        &format!("vsock.out=5000 vsock.bytes={bytes}"),
        60,
    );
    // SAFETY: only async-signal-safe dup2 calls between fork and exec; dup2 clears
    // close-on-exec on the copies, so the vmm inherits fds 3..=9.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in extra.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let child = cmd.spawn().unwrap();
    // The parent keeps its listener and accepts the guest's connection on it.
    listener.set_nonblocking(false).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    });
    let out = child.wait_with_output().unwrap();
    let got = reader.join().unwrap();
    assert!(
        out.status.success(),
        "vmm: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(got.len(), bytes);
    assert_eq!(vmm::guests::first_stream_mismatch(&got), None);
    drop(pipes);
}

/// Connects nobody answers leave one warning line each at the default level: a guest connect
/// to a host port without a `<uds>_P` listener (naming the path), and a host CONNECT to a
/// guest port nobody listens on.
#[test]
fn unanswered_connects_are_one_warning_each() {
    use std::io::{BufRead, BufReader, Write};
    if !kvm_or_skip("unanswered_connects_are_one_warning_each") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kernel, uds) = vsock_guest(&dir);
    let vmm = |cmdline: &str| vmm_cmd(&kernel, &uds, cmdline, 8).spawn().unwrap();
    // Guest -> host port 5000, no listener.
    let out = vmm("vsock.out=5000 vsock.bytes=1000")
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("nothing listens on {}_5000", uds.display());
    assert_eq!(err.matches(&want).count(), 1, "{err}");
    assert!(
        err.contains("warning: vsock: the guest connected to host port 5000"),
        "{err}"
    );

    // Host -> guest port 7000; the guest listens on 6000 only.
    let child = vmm("vsock.listen=6000");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(&uds) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    s.write_all(b"CONNECT 7000\n").unwrap();
    let mut line = String::new();
    let _ = BufReader::new(&s).read_line(&mut line);
    assert!(!line.starts_with("OK"), "{line}");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host CONNECT 7000"), "{err}");
    assert_eq!(err.matches("host CONNECT 7000").count(), 1, "{err}");
}
