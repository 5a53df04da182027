//! virtio-mmio under the real /dev/kvm: the `virtio_echo` test guest drives the
//! echo device through the transport (handshake, feature negotiation, two split
//! virtqueues, echo, interrupt status, reset). Tests skip ("SKIP: reason")
//! where /dev/kvm cannot be opened.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use vmm::devices::virtio::echo::{EchoDevice, EchoHandle, ECHO_MAX_LEN, ECHO_QUEUE_SIZE};
use vmm::devices::virtio::mmio::{MAGIC_VALUE, VENDOR_ID};
use vmm::devices::virtio::{device_type, MmioSlot, VirtioMmioDevice, VIRTIO_MAX_DEVICES};
use vmm::guests::*;
use vmm::{run_with_devices, RunOutcome, VmConfig, VmExit};

/// Mirrors virtio_echo.c.
const NMSG: usize = 6;
const MSG_LEN: [u32; NMSG] = [1, 16, 100, 255, 128, 200];
/// RX heads: buffer 2 takes two descriptors.
const RX_HEADS: [u32; NMSG] = [0, 1, 2, 4, 5, 6];
const KEY: u8 = 0x5a;
const STATUS_ACK_DRIVER: u32 = 0x3;
const STATUS_FEATURES_OK: u32 = 0xb;
const STATUS_DRIVER_OK: u32 = 0xf;
const STATUS_FAILED: u32 = 0x80;

fn msg_byte(i: usize, j: usize) -> u8 {
    (i * 31 + j * 7 + 1) as u8
}

fn cfg(d: &tempfile::TempDir, cmdline: &str, devices: Vec<VirtioMmioDevice>) -> VmConfig {
    VmConfig {
        kernel: guest(d, "virtio_echo.elf", VIRTIO_ECHO),
        cmdline: cmdline.into(),
        mem_mib: 64,
        serial_stdout: false,
        timeout: Some(Duration::from_secs(30)),
        skip_host_check: true,
        virtio_devices: devices,
        ..Default::default()
    }
}

fn run_echo(cmdline: &str, ioeventfd: bool) -> (RunOutcome, Vec<u32>, EchoHandle) {
    let d = tempfile::tempdir().unwrap();
    let dev = EchoDevice::new();
    let h = dev.handle();
    let vdev = VirtioMmioDevice {
        device: Arc::new(Mutex::new(dev)),
        ioeventfd,
    };
    let p = Probes::new();
    let o = run_with_devices(&cfg(&d, cmdline, vec![vdev]), p.devices()).unwrap();
    (o, p.reports(), h)
}

/// The reports every run starts with, up to the status after FEATURES_OK.
fn expect_handshake(r: &mut Reports) {
    let slot = MmioSlot::nth(0).unwrap();
    r.expect("boot", BOOT_MAGIC);
    r.expect("window size from the cmdline", slot.len as u32);
    r.expect("base lo from the cmdline", slot.base as u32);
    r.expect("base hi from the cmdline", (slot.base >> 32) as u32);
    r.expect("irq from the cmdline", slot.irq);
    r.expect("MagicValue", MAGIC_VALUE);
    r.expect("Version", 2);
    r.expect("DeviceID", device_type::ECHO);
    r.expect("VendorID", VENDOR_ID);
    r.expect("status after reset", 0);
    r.expect("status after ACKNOWLEDGE|DRIVER", STATUS_ACK_DRIVER);
    r.expect("DeviceFeatures[0] (RING_EVENT_IDX)", 1 << 29);
    r.expect("DeviceFeatures[1] (VERSION_1)", 1);
}

fn check_full_run(o: &RunOutcome, reports: Vec<u32>, h: &EchoHandle) {
    let mut r = Reports::new(reports);
    expect_handshake(&mut r);
    r.expect("status after FEATURES_OK", STATUS_FEATURES_OK);
    r.expect("ConfigGeneration before", 0);
    r.expect("config max_len", ECHO_MAX_LEN);
    r.expect("config echoed", 0);
    r.expect("config xor_key (32-bit read)", u32::from(KEY));
    r.expect("config xor_key (8-bit read)", u32::from(KEY));
    for q in 0..2 {
        r.expect(&format!("queue {q} ready before"), 0);
        r.expect(
            &format!("queue {q} QueueNumMax"),
            u32::from(ECHO_QUEUE_SIZE),
        );
        r.expect(&format!("queue {q} ready after"), 1);
    }
    r.expect("QueueNumMax of queue 2", 0);
    r.expect("status after DRIVER_OK", STATUS_DRIVER_OK);
    r.expect("RX used idx", NMSG as u32);
    let mut fnv = 0x811c_9dc5u32;
    for i in 0..NMSG {
        r.expect(&format!("used id {i}"), RX_HEADS[i]);
        r.expect(&format!("used len {i}"), MSG_LEN[i]);
        for j in 0..MSG_LEN[i] as usize {
            fnv = (fnv ^ u32::from(msg_byte(i, j) ^ KEY)).wrapping_mul(0x0100_0193);
        }
    }
    r.expect("FNV-1a of the echoed bytes", fnv);
    r.expect("mismatching bytes", 0);
    r.expect("TX used idx", NMSG as u32);
    r.expect("InterruptStatus (used + config)", 3);
    let after_ack = r.next("InterruptStatus after ACK");
    // The config bit cannot come back (every config change precedes the last
    // used-ring update the guest waited for); a late used-ring interrupt can.
    assert_eq!(
        after_ack & !1,
        0,
        "ACK cleared InterruptStatus: {after_ack:#x}"
    );
    r.expect("ConfigGeneration change", NMSG as u32);
    r.expect("config echoed", NMSG as u32);
    r.expect("status after reset", 0);
    r.expect("QueueReady after reset", 0);
    r.end();

    assert_eq!(o.exit, VmExit::Reset, "{o:?}");
    assert_eq!(o.unclaimed_mmio, 0, "every MMIO access was claimed");
    let s = h.stats();
    assert_eq!(s.buffers, NMSG as u64);
    assert_eq!(s.bytes, MSG_LEN.iter().map(|l| u64::from(*l)).sum::<u64>());
    assert_eq!((s.bad_chains, s.activations, s.worker_panics), (0, 1, 0));
    assert_eq!(o.virtio.len(), 1);
    let v = &o.virtio[0];
    assert_eq!(v.slot, MmioSlot::nth(0).unwrap());
    assert_eq!(v.device_type, device_type::ECHO);
    assert_eq!((v.status, v.activations), (0, 1));
}

#[test]
fn echo_guest_with_ioeventfd() {
    if !kvm_or_skip("echo_guest_with_ioeventfd") {
        return;
    }
    let (o, r, h) = run_echo("", true);
    eprintln!("echo_guest_with_ioeventfd: {:?} in {:?}", o.virtio, o.wall);
    check_full_run(&o, r, &h);
    let v = &o.virtio[0];
    if v.ioeventfd {
        assert_eq!(v.notify_exits, 0, "notifications went through ioeventfds");
    } else {
        eprintln!("note: KVM refused ioeventfds here; the MMIO-exit fallback was used");
        assert_eq!(v.notify_exits, 2);
    }
}

#[test]
fn echo_guest_with_mmio_exit_notifications() {
    if !kvm_or_skip("echo_guest_with_mmio_exit_notifications") {
        return;
    }
    let (o, r, h) = run_echo("", false);
    check_full_run(&o, r, &h);
    let v = &o.virtio[0];
    assert!(!v.ioeventfd);
    assert_eq!(v.notify_exits, 2, "QueueNotify 1 and 0 as MMIO exits");
}

/// A driver that does not accept VIRTIO_F_VERSION_1 (a legacy driver), or
/// accepts a feature the device did not offer, gets FEATURES_OK refused.
#[test]
fn features_ok_refused_without_version_1_or_with_unoffered_bits() {
    if !kvm_or_skip("features_ok_refused_without_version_1_or_with_unoffered_bits") {
        return;
    }
    for mode in ["vtest=nover1", "vtest=unoffered"] {
        let (o, reports, h) = run_echo(mode, true);
        let mut r = Reports::new(reports);
        expect_handshake(&mut r);
        r.expect(
            &format!("{mode}: status after FEATURES_OK"),
            STATUS_ACK_DRIVER,
        );
        r.expect(
            &format!("{mode}: status after FAILED"),
            STATUS_ACK_DRIVER | STATUS_FAILED,
        );
        r.end();
        assert_eq!(o.exit, VmExit::Reset, "{o:?}");
        assert_eq!(h.stats().activations, 0);
        assert_eq!(o.virtio[0].status, STATUS_ACK_DRIVER | STATUS_FAILED);
    }
}

/// Each virtio device adds its `virtio_mmio.device=` word to the command line
/// the guest sees (the console guest prints it).
#[test]
fn cmdline_names_every_virtio_device() {
    if !kvm_or_skip("cmdline_names_every_virtio_device") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let devs: Vec<VirtioMmioDevice> = (0..3)
        .map(|_| VirtioMmioDevice::new(Arc::new(Mutex::new(EchoDevice::new()))))
        .collect();
    let mut c = cfg(&d, "console=ttyS0 x=1", devs);
    c.kernel = guest(&d, "console.elf", CONSOLE);
    let o = vmm::run(&c).unwrap();
    assert_eq!(o.exit, VmExit::Reset, "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.serial_tail),
        "console=ttyS0 x=1 virtio_mmio.device=4K@0xd0010000:5 \
         virtio_mmio.device=4K@0xd0011000:6 virtio_mmio.device=4K@0xd0012000:7\n"
    );
    assert_eq!(o.virtio.len(), 3);
    for (i, v) in o.virtio.iter().enumerate() {
        assert_eq!(v.slot, MmioSlot::nth(i).unwrap());
        assert_eq!((v.status, v.activations, v.notify_exits), (0, 0, 0));
    }
}

#[test]
fn too_many_virtio_devices_is_a_config_error() {
    let d = tempfile::tempdir().unwrap();
    let devs = (0..=VIRTIO_MAX_DEVICES)
        .map(|_| VirtioMmioDevice::new(Arc::new(Mutex::new(EchoDevice::new()))))
        .collect();
    let e = vmm::run(&cfg(&d, "", devs)).unwrap_err();
    assert!(matches!(e, vmm::Error::Device(_)), "{e}");
    assert!(e.to_string().contains("virtio devices"), "{e}");
}
