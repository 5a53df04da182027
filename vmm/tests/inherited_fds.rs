//! The vmm binary must not care which file descriptors it inherits. Seen in the nested
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

#[test]
fn vmm_ignores_inherited_fds_including_the_streams_own_listener() {
    if !kvm_or_skip("vmm_ignores_inherited_fds_including_the_streams_own_listener") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest(&dir, "vsock_stream.elf", vmm::guests::VSOCK_STREAM);
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(vsock::muxer::listener_path(&uds, 5000)).unwrap();
    let pipes: Vec<(std::io::PipeReader, std::io::PipeWriter)> =
        (0..3).map(|_| std::io::pipe().unwrap()).collect();
    let mut extra: Vec<i32> = vec![listener.as_raw_fd()];
    for (r, w) in &pipes {
        extra.push(r.as_raw_fd());
        extra.push(w.as_raw_fd());
    }
    let bytes = 200_000usize;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("--kernel")
        .arg(&kernel)
        .args([
            "--no-host-check",
            "--mem",
            "64",
            "--timeout",
            "60",
            "--quiet",
        ])
        .args(["--cmdline", &format!("vsock.out=5000 vsock.bytes={bytes}")])
        .arg("--vsock-uds")
        .arg(&uds)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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
    assert_eq!(
        vmm::devices::virtio::vsock::first_stream_mismatch(&got),
        None
    );
    drop(pipes);
}
