//! virtio-vsock under the qemu runner with the real guest kernel: QEMU's
//! vhost-user-vsock-device served by our backend (vsock crate). A static
//! guest program echoes a 64 MiB stream it opened to CID 2 (host listener on
//! `<uds>_5000`) and a stream the host opened with `CONNECT 6000` on `<uds>`.

use xtask::runner::vsock_echo;

const MIB: u64 = 1024 * 1024;

#[test]
fn vsock_echo_64mib_both_directions() {
    let Some(bzimage) = tests::artifact("TESTBED_BZIMAGE") else {
        return;
    };
    let Some(agent) = tests::artifact("TESTBED_AGENT") else {
        return;
    };
    // A short directory: Unix socket paths are limited to 107 bytes.
    let dir = tempfile::Builder::new()
        .prefix("vsock")
        .tempdir_in("/tmp")
        .unwrap();
    // TESTBED_VSOCK_ECHO_MIB shortens the stream for quick manual runs.
    let mib: u64 = std::env::var("TESTBED_VSOCK_ECHO_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let report = match vsock_echo::run(&bzimage, &agent, dir.path(), mib * MIB, MIB) {
        Ok(r) => r,
        Err(e) => panic!("{e:#}"),
    };
    let lines = vsock_echo::guest_lines(&report.outcome.serial_log);
    eprintln!(
        "vsock: {mib} MiB guest-initiated echo in {:.2} s = {:.1} MB/s guest->host (qemu TCG); host-initiated 1 MiB via host port {}",
        report.elapsed.as_secs_f64(),
        report.mb_per_s(),
        report.host_port
    );
    for l in &lines {
        eprintln!("  {l}");
    }
    assert!(report.host_port >= 1 << 30, "{}", report.host_port);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("guest-initiated echoed {} bytes", mib * MIB))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("host-initiated echoed 1048576 bytes")),
        "{lines:?}"
    );
    assert_eq!(
        report.outcome.vsock_uds.as_deref(),
        Some(dir.path().join("vsock.sock").as_path())
    );
}
