//! Shared helpers of the integration tests: probe devices and skip rules.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmm::devices::BusDevice;
use vmm::guests::{END_MAGIC, REPORT_PORT, TESTDEV_MMIO, TEXT_PORT};
use vmm::{BusKind, ExtraDevice};

/// Value the test MMIO device returns for a read at +8.
pub const TESTDEV_READ_VALUE: u32 = 0xc0ff_ee42;

/// Records REPORT_PORT dwords and TEXT_PORT bytes.
#[derive(Default)]
pub struct Recorder {
    pub reports: Vec<u32>,
    pub text: Vec<u8>,
}

impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => self
                .reports
                .push(u32::from_le_bytes([data[0], data[1], data[2], data[3]])),
            (4, 1) => self.text.push(data[0]),
            _ => panic!("unexpected probe access at +{offset} len {}", data.len()),
        }
    }
}

/// MMIO test device: records writes, returns TESTDEV_READ_VALUE at +8.
#[derive(Default)]
pub struct MmioProbe {
    pub writes: Vec<(u64, Vec<u8>)>,
    pub reads: Vec<(u64, usize)>,
}

impl BusDevice for MmioProbe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push((offset, data.len()));
        let v = if offset == 8 { TESTDEV_READ_VALUE } else { 0 };
        let b = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

pub struct Probes {
    pub recorder: Arc<Mutex<Recorder>>,
    pub mmio: Arc<Mutex<MmioProbe>>,
}

impl Probes {
    pub fn new() -> Self {
        Probes {
            recorder: Arc::new(Mutex::new(Recorder::default())),
            mmio: Arc::new(Mutex::new(MmioProbe::default())),
        }
    }
    pub fn devices(&self) -> Vec<ExtraDevice> {
        vec![
            ExtraDevice {
                bus: BusKind::Pio,
                base: u64::from(REPORT_PORT),
                len: u64::from(TEXT_PORT - REPORT_PORT) + 4,
                device: self.recorder.clone(),
            },
            ExtraDevice {
                bus: BusKind::Mmio,
                base: TESTDEV_MMIO,
                len: 0x1000,
                device: self.mmio.clone(),
            },
        ]
    }
    pub fn reports(&self) -> Vec<u32> {
        self.recorder.lock().unwrap().reports.clone()
    }
    pub fn text(&self) -> Vec<u8> {
        self.recorder.lock().unwrap().text.clone()
    }
}

/// A cursor over a guest's reports with named expectations.
pub struct Reports {
    r: Vec<u32>,
    i: usize,
}

impl Reports {
    pub fn new(reports: Vec<u32>) -> Self {
        Reports { r: reports, i: 0 }
    }
    pub fn next(&mut self, what: &str) -> u32 {
        let v = *self
            .r
            .get(self.i)
            .unwrap_or_else(|| panic!("missing report #{}: {what}; got {:#x?}", self.i, self.r));
        self.i += 1;
        v
    }
    pub fn expect(&mut self, what: &str, want: u32) {
        let v = self.next(what);
        assert_eq!(
            v,
            want,
            "{what} (report #{}); all: {:#x?}",
            self.i - 1,
            self.r
        );
    }
    /// A 64-bit value reported as two words, low first.
    pub fn u64(&mut self, what: &str) -> u64 {
        let lo = self.next(what);
        u64::from(lo) | u64::from(self.next(what)) << 32
    }
    /// END_MAGIC, and nothing after it.
    pub fn end(&mut self) {
        self.expect("end", END_MAGIC);
        assert_eq!(self.i, self.r.len(), "extra reports: {:#x?}", self.r);
    }
}

/// `true` if /dev/kvm can be opened; otherwise prints the SKIP reason.
pub fn kvm_or_skip(test: &str) -> bool {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => true,
        Err(e) => {
            test_skip::skip(test, test_skip::KVM, format!("cannot open /dev/kvm: {e}"));
            false
        }
    }
}

/// `true` if this host's KVM is PVM.
pub fn is_pvm() -> bool {
    vmm::host::is_pvm_host(&vmm::host::HostPaths::default())
}

/// `true` if the host has hardware KVM (not PVM); otherwise prints the SKIP reason.
pub fn hw_kvm_or_skip(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    if is_pvm() {
        test_skip::skip(
            test,
            test_skip::HW_KVM,
            "/dev/kvm is PVM (no vmx/svm); this test needs hardware KVM",
        );
        return false;
    }
    true
}

/// Write a guest into a fresh temp dir.
pub fn guest(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    vmm::guests::write_guest(dir.path(), name, bytes).unwrap()
}

/// FNV-1a 32 as the guests compute it.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}
