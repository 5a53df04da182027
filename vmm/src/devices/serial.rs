//! The 8250/16550 UART at 0x3f8 (COM1), vm-superio's `Serial`, with its output
//! going to stdout and/or a log file, and timestamps of the first byte.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// COM1 base port (PC/AT convention; Linux `console=ttyS0`).
pub const COM1_PORT: u64 = 0x3f8;
/// Eight registers.
pub const COM1_LEN: u64 = 8;
/// COM1 IRQ (ISA IRQ 4).
pub const COM1_IRQ: u32 = 4;
/// How much of the output the VMM keeps in memory for the caller.
pub const TAIL_CAPACITY: usize = 64 * 1024;

/// Interrupt line of the UART: an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What the guest printed, shared with the VM's owner.
#[derive(Debug, Default)]
pub struct SerialCapture {
    /// When the first byte arrived.
    pub first_byte: OnceLock<Instant>,
    /// Bytes written in total.
    pub bytes: std::sync::atomic::AtomicU64,
    /// The last [`TAIL_CAPACITY`] bytes.
    pub tail: Mutex<Vec<u8>>,
}

/// An extra destination for serial output that the VM's owner reads, e.g. a
/// pipe whose other end a console watcher consumes.
#[derive(Clone)]
pub struct SerialSink(pub Arc<Mutex<dyn Write + Send>>);

impl std::fmt::Debug for SerialSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialSink")
    }
}

/// Where serial output goes.
pub struct SerialOut {
    stdout: bool,
    log: Option<File>,
    sink: Option<SerialSink>,
    capture: Arc<SerialCapture>,
}

impl SerialOut {
    /// Output to stdout (if `stdout`) and `log` (if any), recorded in `capture`.
    pub fn new(stdout: bool, log: Option<File>, capture: Arc<SerialCapture>) -> Self {
        SerialOut {
            stdout,
            log,
            sink: None,
            capture,
        }
    }

    /// Also write to `sink`; a failing sink never stops the guest.
    pub fn with_sink(mut self, sink: Option<SerialSink>) -> Self {
        self.sink = sink;
        self
    }
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.capture.first_byte.get_or_init(Instant::now);
        self.capture
            .bytes
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        {
            let mut t = self.capture.tail.lock().unwrap_or_else(|e| e.into_inner());
            t.extend_from_slice(buf);
            if t.len() > TAIL_CAPACITY {
                let cut = t.len() - TAIL_CAPACITY;
                t.drain(..cut);
            }
        }
        if self.stdout {
            // A closed stdout must not stop the guest.
            let _ = io::stdout().write_all(buf);
        }
        if let Some(sink) = &self.sink {
            let mut w = sink.0.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.write_all(buf);
        }
        if let Some(f) = self.log.as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.stdout {
            let _ = io::stdout().flush();
        }
        if let Some(f) = self.log.as_mut() {
            f.flush()?;
        }
        Ok(())
    }
}

/// The UART as a port-I/O bus device.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, NoEvents, SerialOut>,
}

impl SerialDevice {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        SerialDevice {
            serial: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.serial.read(offset as u8);
        }
        for b in data.iter_mut().skip(1) {
            *b = 0;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            if let Err(e) = self.serial.write(offset as u8, *b) {
                crate::log::debug(format_args!("serial write failed: {e:?}"));
            }
            if offset == 0 {
                let _ = self.serial.writer_mut().flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_reach_log_and_capture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let cap = Arc::new(SerialCapture::default());
        let out = SerialOut::new(false, Some(File::create(&path).unwrap()), cap.clone());
        let mut dev = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), out);
        assert!(cap.first_byte.get().is_none());
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hi\n");
        assert_eq!(&*cap.tail.lock().unwrap(), b"hi\n");
        assert!(cap.first_byte.get().is_some());
        // Line status register: THR empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
