//! In-VMM virtio-vsock guest → host throughput: the [`vmm::guests::VSOCK_STREAM`]
//! test guest under /dev/kvm drives a [`VsockDevice`] and streams to a host
//! listener on `<uds>_<port>`, every byte checked. For `cargo xtask bench vsock`
//! and `cargo run --release -p testbed-bench --example vsock_device`.

use std::sync::Arc;

use vmm::devices::virtio::vsock::{VsockConfig, VsockDevice, VsockStats};
use vmm::devices::virtio::VirtioMmioDevice;
use vmm::guests::stream_pattern;

use crate::Error;

/// What [`bench_guest_to_host`] measured.
#[derive(Debug, Clone, Copy)]
pub struct VsockBench {
    /// Bytes the host listener received (all checked against
    /// [`stream_pattern`]).
    pub bytes: u64,
    /// RW packet payload the guest used.
    pub packet: u32,
    /// First byte to EOF at the host listener.
    pub elapsed: std::time::Duration,
    /// Whole VM run (boot, handshake, transfer, reset).
    pub vm_wall: std::time::Duration,
    /// Device counters of the run.
    pub stats: VsockStats,
}

impl VsockBench {
    /// Guest → host payload throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for VsockBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest->host {} bytes in {} B packets: {:.3} s, {:.1} MB/s ({} TX / {} RX packets, {} wake-ups, {} interrupts; VM run {:.3} s)",
            self.bytes,
            self.packet,
            self.elapsed.as_secs_f64(),
            self.mb_per_s(),
            self.stats.tx_packets,
            self.stats.rx_packets,
            self.stats.wakeups,
            self.stats.interrupts,
            self.vm_wall.as_secs_f64()
        )
    }
}

/// Records the test guest's REPORT_PORT dwords.
#[derive(Default)]
struct ReportRecorder(Vec<u32>);

impl vmm::devices::BusDevice for ReportRecorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (0, Ok(b)) = (offset, <[u8; 4]>::try_from(data)) {
            if self.0.len() < 4096 {
                self.0.push(u32::from_le_bytes(b));
            }
        }
    }
}

/// In-VMM guest → host throughput: boots the [`vmm::guests::VSOCK_STREAM`]
/// guest under /dev/kvm with a [`VsockDevice`], lets it send `bytes` bytes in
/// RW packets of `packet` bytes (≤ 64 KiB) to a host listener on
/// `<uds>_<port>`, checks every byte and times first byte to EOF at the
/// listener. For `cargo xtask bench vsock`.
pub fn bench_guest_to_host(bytes: u64, packet: u32) -> Result<VsockBench, Error> {
    use std::io::Read;
    use std::time::{Duration, Instant};

    const PORT: u32 = 5000;
    const CID: u64 = 3;
    let bench = Error::Failed;
    let dir = std::env::temp_dir().join(format!("vmm-vsock-bench-{}", std::process::id()));
    let io = Error::io(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let result = (|| {
        let kernel = vmm::guests::write_guest(&dir, "vsock_stream.elf", vmm::guests::VSOCK_STREAM)
            .map_err(io)?;
        let uds = dir.join("v.sock");
        let dev = VsockDevice::new(&VsockConfig::new(&uds, CID))
            .map_err(|e| bench(format!("vsock device: {e}")))?;
        let handle = dev.handle();
        let lpath = vsock::muxer::listener_path(&uds, PORT);
        let _ = std::fs::remove_file(&lpath);
        let listener = std::os::unix::net::UnixListener::bind(&lpath).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let sink = std::thread::spawn(move || -> Result<(u64, Duration), String> {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut s = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err("the guest never connected".into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            let mut start = None;
            loop {
                let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                start.get_or_insert_with(Instant::now);
                if let Some(j) = (0..n).find(|&j| buf[j] != stream_pattern(got + j as u64)) {
                    return Err(format!("byte {} differs from the pattern", got + j as u64));
                }
                got += n as u64;
            }
            Ok((got, start.map(|t| t.elapsed()).unwrap_or_default()))
        });
        let recorder = Arc::new(std::sync::Mutex::new(ReportRecorder::default()));
        let cfg = vmm::VmConfig {
            kernel,
            cmdline: format!("vsock.out={PORT} vsock.bytes={bytes} vsock.pkt={packet}"),
            mem_mib: 64,
            serial_stdout: false,
            timeout: Some(Duration::from_secs(120)),
            skip_host_check: true,
            virtio_devices: vec![VirtioMmioDevice::new(Arc::new(std::sync::Mutex::new(dev)))],
            ..Default::default()
        };
        let extra = vec![vmm::ExtraDevice {
            bus: vmm::BusKind::Pio,
            base: u64::from(vmm::guests::REPORT_PORT),
            len: 4,
            device: recorder.clone(),
        }];
        let o = vmm::run_with_devices(&cfg, extra)?;
        let (got, elapsed) = sink
            .join()
            .map_err(|_| bench("the listener thread panicked".into()))?
            .map_err(bench)?;
        if o.exit != vmm::VmExit::Reset || got != bytes {
            let reports = recorder.lock().map(|r| r.0.clone()).unwrap_or_default();
            return Err(bench(format!(
                "the guest ended with {:?} after sending {got} of {bytes} bytes; reports {reports:#x?}",
                o.exit
            )));
        }
        Ok(VsockBench {
            bytes: got,
            packet,
            elapsed,
            vm_wall: o.wall,
            stats: handle.stats(),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
