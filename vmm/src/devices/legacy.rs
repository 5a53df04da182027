//! Reset paths of a PC: the i8042 keyboard controller's CPU reset (command 0xfe to
//! port 0x64, vm-superio's `I8042Device`) and the Reset Control Register at 0xcf9
//! (Intel ICH/PCH datasheets). Both end the VM with [`crate::VmExit::Reset`].

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;

/// i8042 data port; the device spans 0x60..=0x64 (command/status at offset 4).
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60..0x65.
pub const I8042_LEN: u64 = 5;
/// Reset Control Register.
pub const RESET_CF9_PORT: u64 = 0xcf9;
/// RCR bit 2: "Reset CPU" (bit 1 selects hard reset).
pub const RESET_CF9_RST_CPU: u8 = 0x4;

/// Something that ends the VM with a reset.
pub type ResetFn = Arc<dyn Fn() + Send + Sync>;

/// vm-superio trigger calling the VM's reset function.
pub struct ResetTrigger(pub ResetFn);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)();
        Ok(())
    }
}

/// The i8042 controller as a port-I/O bus device.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// A controller whose CPU-reset command calls `reset`.
    pub fn new(reset: ResetFn) -> Self {
        I8042 {
            dev: I8042Device::new(ResetTrigger(reset)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.dev.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            let _ = self.dev.write(offset as u8, *b);
        }
    }
}

/// Port 0xcf9.
pub struct ResetControl {
    reset: ResetFn,
    value: u8,
}

impl ResetControl {
    /// A register whose CPU-reset bit calls `reset`.
    pub fn new(reset: ResetFn) -> Self {
        ResetControl { reset, value: 0 }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.value;
        }
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            self.value = *b & !RESET_CF9_RST_CPU;
            if *b & RESET_CF9_RST_CPU != 0 {
                (self.reset)();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn reset_paths() {
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let f: ResetFn = Arc::new(move || {
            n2.fetch_add(1, Ordering::SeqCst);
        });
        let mut kbd = I8042::new(f.clone());
        kbd.write(4, &[0xaa]);
        kbd.write(0, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 0);
        kbd.write(4, &[0xfe]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let mut rcr = ResetControl::new(f);
        rcr.write(0, &[0x02]);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        rcr.write(0, &[0x06]);
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
