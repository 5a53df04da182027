//! The kvm runner: our VMM (the `vmm` crate), in process, on /dev/kvm.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use vmm::devices::serial::SerialSink;
use vmm::devices::virtio::vsock::{VsockConfig, VsockDevice};
use vmm::devices::virtio::VirtioMmioDevice;
use vmm::VmConfig;

use super::{watch, BootOutcome, BootSpec, RunnerKind, VmEvent};

/// Turns the UART byte stream into console lines for the watcher.
struct LineSink {
    buf: Vec<u8>,
    tx: Sender<VmEvent>,
}

/// Longest console line kept whole; longer ones are split (a guest printing
/// without newlines must not grow host memory).
const MAX_LINE: usize = 64 * 1024;

impl LineSink {
    fn emit(&mut self, end: usize, skip: usize) {
        let line = String::from_utf8_lossy(&self.buf[..end]);
        let _ = self
            .tx
            .send(VmEvent::Line(line.trim_end_matches('\r').to_string()));
        self.buf.drain(..end + skip);
    }
}

impl Write for LineSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        for &b in data {
            self.buf.push(b);
            if b == b'\n' {
                let end = self.buf.len() - 1;
                self.emit(end, 1);
            } else if self.buf.len() >= MAX_LINE {
                let end = self.buf.len();
                self.emit(end, 0);
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Boots `spec` with our VMM. Fails before starting when KVM cannot boot the
/// kernel here (e.g. a PVM host), with the reason and the fallback.
pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    vmm::host_check(&spec.bzimage)?;
    boot_checked(spec, false)
}

/// Boots without the host check when `skip_host_check` (test guests, which
/// run under PVM although they are not PVM-aware Linux kernels).
fn boot_checked(spec: &BootSpec, skip_host_check: bool) -> Result<BootOutcome> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let sink = LineSink {
        buf: Vec::new(),
        tx: tx.clone(),
    };
    // The vsock device binds `<uds>` now, before the guest boots, so a host
    // peer may connect at once; it goes away with the VM.
    let mut virtio_devices = Vec::new();
    if let Some(v) = &spec.vsock {
        let dev = VsockDevice::new(&VsockConfig::new(&v.uds, v.guest_cid)).with_context(|| {
            format!(
                "starting the vsock device (guest CID {}, host sockets {})",
                v.guest_cid,
                v.uds.display()
            )
        })?;
        virtio_devices.push(VirtioMmioDevice::new(Arc::new(Mutex::new(dev))));
    }
    let mut host_kcov = None;
    if let Some(n) = &spec.net {
        let built = n
            .build(spec.host_kcov)
            .with_context(|| format!("--net tap={}", n.tap))?;
        for note in &built.notes {
            eprintln!("net: {note}");
        }
        host_kcov = built.host_kcov;
        virtio_devices.push(VirtioMmioDevice::new(Arc::new(Mutex::new(built.device))));
    }
    let cfg = VmConfig {
        kernel: spec.bzimage.clone(),
        initrd: Some(spec.initramfs.clone()),
        cmdline: spec.cmdline.clone(),
        mem_mib: spec.mem_mib,
        vcpus: spec.vcpus.max(1),
        serial_log: None,
        serial_stdout: false,
        timeout: None,
        serial_sink: Some(SerialSink(Arc::new(Mutex::new(sink)))),
        stop: Some(stop_rx),
        skip_host_check,
        virtio_devices,
        ..VmConfig::default()
    };
    let vm_thread = std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || {
            let end = match vmm::run(&cfg) {
                Ok(outcome) => format!("VM ended: {:?}", outcome.exit),
                Err(e) => format!("VMM error: {e}"),
            };
            let _ = tx.send(VmEvent::Ended(end));
        })?;
    let outcome = watch(
        RunnerKind::Kvm,
        &rx,
        &spec.serial_log,
        spec.echo,
        spec.timeouts,
        spec.stop.as_ref(),
        || {
            let _ = stop_tx.try_send(());
        },
    );
    let _ = stop_tx.try_send(());
    let _ = vm_thread.join();
    let mut outcome = outcome?;
    outcome.vsock_uds = spec.vsock.as_ref().map(|v| v.uds.clone());
    // The VM thread dropped the devices: the host area is complete.
    if let Some(h) = host_kcov {
        match h.finish() {
            Ok(c) => outcome.host_coverage = Some(c),
            Err(e) => eprintln!("host-kcov: {e}; no host coverage for this run"),
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{GuestStatus, Timeouts};
    use std::time::Duration;

    /// A BootSpec for one of the VMM's test guests, or None (with the reason
    /// printed) where /dev/kvm cannot be used at all.
    fn guest_spec(
        dir: &std::path::Path,
        guest: &[u8],
        cmdline: &str,
        boot: Duration,
    ) -> Option<BootSpec> {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            test_skip::skip(
                std::thread::current().name().unwrap_or("kvm runner test"),
                test_skip::KVM,
                format!("/dev/kvm not usable ({e}); the kvm runner cannot run test guests here"),
            );
            return None;
        }
        let kernel = vmm::guests::write_guest(dir, "guest.elf", guest).unwrap();
        let initramfs = dir.join("initrd");
        std::fs::write(&initramfs, b"initrd").unwrap();
        Some(BootSpec {
            bzimage: kernel,
            initramfs,
            cmdline: cmdline.into(),
            mem_mib: 64,
            serial_log: dir.join("serial.log"),
            echo: false,
            timeouts: Timeouts {
                boot,
                run: Duration::from_secs(10),
            },
            vsock: None,
            net: None,
            host_kcov: false,
            nested: None,
            vcpus: 1,
            stop: None,
        })
    }

    #[test]
    fn kvm_runner_reads_the_console_protocol_through_the_vmm() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = "noise|@@TESTBED-READY@@ kvm-guest|testbed-agent: hello|@@TESTBED-EXIT@@ 7";
        let Some(spec) = guest_spec(
            dir.path(),
            vmm::guests::CONSOLE,
            cmdline,
            Duration::from_secs(10),
        ) else {
            return;
        };
        let out = boot_checked(&spec, true).unwrap();
        assert_eq!(out.status, GuestStatus::Exited(7), "{:?}", out.tail);
        assert_eq!(out.release.as_deref(), Some("kvm-guest"));
        assert!(out.ready_after.is_some());
        let log = std::fs::read_to_string(&spec.serial_log).unwrap();
        assert!(log.contains("testbed-agent: hello\n"), "{log}");
    }

    #[test]
    fn kvm_runner_stops_a_guest_that_never_becomes_ready() {
        let dir = tempfile::tempdir().unwrap();
        let Some(spec) = guest_spec(
            dir.path(),
            vmm::guests::SPIN,
            "x",
            Duration::from_millis(300),
        ) else {
            return;
        };
        let out = boot_checked(&spec, true).unwrap();
        assert_eq!(
            out.status,
            GuestStatus::BootTimeout(Duration::from_millis(300))
        );
        assert!(
            out.total < Duration::from_secs(8),
            "the VM was not stopped: {:?}",
            out.total
        );
    }

    /// With `spec.vsock`, the VM gets our virtio-vsock device on `uds`: the
    /// VMM's vsock test guest reaches a host listener on `<uds>_5000`.
    #[test]
    fn kvm_runner_gives_the_guest_a_vsock_device() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let bytes = 100_000usize;
        let Some(mut spec) = guest_spec(
            dir.path(),
            vmm::guests::VSOCK_STREAM,
            &format!("vsock.out=5000 vsock.bytes={bytes}"),
            Duration::from_secs(20),
        ) else {
            return;
        };
        let uds = dir.path().join("vsock.sock");
        spec.vsock = Some(crate::runner::VsockSpec {
            guest_cid: 2,
            uds: uds.clone(),
            vhost_socket: dir.path().join("unused"),
        });
        let e = boot_checked(&spec, true).unwrap_err();
        assert!(format!("{e:#}").contains("guest CID 2"), "{e:#}");
        spec.vsock.as_mut().unwrap().guest_cid = 3;
        let l = std::os::unix::net::UnixListener::bind(vsock::muxer::listener_path(&uds, 5000))
            .unwrap();
        let sink = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            v
        });
        let out = boot_checked(&spec, true).unwrap();
        // The test guest prints no console markers; it resets when done.
        assert!(
            matches!(out.status, GuestStatus::NoStatus(_)),
            "{:?}",
            out.status
        );
        assert_eq!(out.vsock_uds.as_deref(), Some(uds.as_path()));
        let got = sink.join().unwrap();
        assert_eq!(got.len(), bytes);
        assert_eq!(vmm::guests::first_stream_mismatch(&got), None);
    }

    #[test]
    fn line_sink_splits_lines_and_bounds_them() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut s = LineSink {
            buf: Vec::new(),
            tx,
        };
        s.write_all(b"hello\r\nwor").unwrap();
        s.write_all(b"ld\n").unwrap();
        s.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        let lines: Vec<String> = rx
            .try_iter()
            .map(|e| match e {
                VmEvent::Line(l) => l,
                VmEvent::Ended(_) | VmEvent::L1Line(_) => unreachable!(),
            })
            .collect();
        assert_eq!(lines[0], "hello");
        assert_eq!(lines[1], "world");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(s.buf.len(), 10);
    }
}
