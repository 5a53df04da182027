//! Test guests under the real /dev/kvm, through the library API.
//! Every test skips (with "SKIP: reason") where /dev/kvm cannot be opened.

mod common;

use std::time::Duration;

use common::*;
use vmm::arch::x86_64::bootparams::{e820_entries, E820_RAM};
use vmm::arch::x86_64::layout::{CMDLINE_START, ZERO_PAGE_START};
use vmm::guests::*;
use vmm::{run, run_with_devices, ApStart, BootProtocol, VmConfig, VmExit};

fn cfg(kernel: std::path::PathBuf) -> VmConfig {
    VmConfig {
        kernel,
        mem_mib: 64,
        serial_stdout: false,
        timeout: Some(Duration::from_secs(20)),
        skip_host_check: true,
        ..Default::default()
    }
}

/// Check the boot-contract guest's reports against what the VMM should have built.
fn check_boot_contract(p: &Probes, mem_mib: u64, cmdline: &str, initrd: Option<&[u8]>) {
    let r = p.reports();
    let mut it = r.iter().copied();
    let mut next = |what: &str| {
        it.next()
            .unwrap_or_else(|| panic!("missing report: {what}; got {r:#x?}"))
    };
    assert_eq!(next("magic"), BOOT_MAGIC);
    assert_eq!(u64::from(next("rsi")), ZERO_PAGE_START, "RSI = zero page");
    assert_eq!(next("boot_flag"), 0xaa55);
    assert_eq!(next("header"), u32::from_le_bytes(*b"HdrS"));
    assert_eq!(next("type_of_loader"), 0xff);
    let want = e820_entries(mem_mib << 20).unwrap();
    assert_eq!(next("e820_entries") as usize, want.len());
    for (i, e) in want.iter().enumerate() {
        let addr = u64::from(next("addr lo")) | (u64::from(next("addr hi")) << 32);
        let size = u64::from(next("size lo")) | (u64::from(next("size hi")) << 32);
        let ty = next("type");
        assert_eq!(
            (addr, size, ty),
            ({ e.addr }, { e.size }, E820_RAM),
            "e820[{i}]"
        );
    }
    assert_eq!(u64::from(next("cmd_line_ptr")), CMDLINE_START);
    assert_eq!(next("cmdline len") as usize, cmdline.len());
    assert_eq!(next("cmdline fnv"), fnv1a(cmdline.as_bytes()));
    assert_eq!(
        p.text(),
        cmdline.as_bytes(),
        "cmdline text read by the guest"
    );
    let image = u64::from(next("ramdisk_image"));
    let size = u64::from(next("ramdisk_size"));
    let fnv = next("initrd fnv");
    match initrd {
        Some(data) => {
            assert_eq!(size, data.len() as u64);
            // Top of low memory, page aligned.
            let low_end = (mem_mib << 20).min(0xd000_0000);
            assert_eq!(
                image,
                (low_end - size) & !0xfff,
                "initrd at the top of low memory"
            );
            assert_eq!(fnv, fnv1a(data), "initrd bytes as the guest sees them");
        }
        None => {
            assert_eq!((image, size), (0, 0));
            assert_eq!(fnv, fnv1a(&[]));
        }
    }
    // MMIO: the guest wrote the initrd FNV at +0 and read +8.
    let m = p.mmio.lock().unwrap();
    assert_eq!(m.writes, vec![(0, fnv.to_le_bytes().to_vec())]);
    assert_eq!(m.reads, vec![(8, 4)]);
    assert_eq!(next("mmio read"), TESTDEV_READ_VALUE);
    assert_eq!(next("end"), END_MAGIC);
    assert!(it.next().is_none(), "no extra reports: {r:#x?}");
}

#[test]
fn boot_contract_with_initrd() {
    if !kvm_or_skip("boot_contract_with_initrd") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let initrd: Vec<u8> = (0..10_007u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let initrd_path = d.path().join("initrd");
    std::fs::write(&initrd_path, &initrd).unwrap();
    let cmdline = "console=ttyS0 reboot=k panic=-1 vmm.test=\"boot contract\" x=1";
    let mut c = cfg(guest(&d, "bc.elf", BOOT_CONTRACT));
    c.initrd = Some(initrd_path);
    c.cmdline = cmdline.into();
    let p = Probes::new();
    let o = run_with_devices(&c, p.devices()).unwrap();
    assert_eq!(o.exit, VmExit::Reset, "{o:?}");
    assert_eq!(o.boot_protocol, BootProtocol::Linux64);
    assert!(o.start_to_first_pio.is_some());
    assert_eq!(o.unclaimed_pio + o.unclaimed_mmio, 0);
    check_boot_contract(&p, 64, cmdline, Some(&initrd));
}

#[test]
fn boot_contract_large_memory_splits_e820_around_gap() {
    if !kvm_or_skip("boot_contract_large_memory_splits_e820_around_gap") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(guest(&d, "bc.elf", BOOT_CONTRACT));
    c.mem_mib = 3584; // 0.25 GiB above the gap start at 3.25 GiB
    c.cmdline = String::new();
    let p = Probes::new();
    let o = run_with_devices(&c, p.devices()).unwrap();
    assert_eq!(o.exit, VmExit::Reset, "{o:?}");
    assert_eq!(e820_entries(3584 << 20).unwrap().len(), 3);
    check_boot_contract(&p, 3584, "", None);
}

#[test]
fn triple_fault_ends_with_shutdown() {
    if !kvm_or_skip("triple_fault_ends_with_shutdown") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = Probes::new();
    let o = run_with_devices(&cfg(guest(&d, "tf.elf", TRIPLE_FAULT)), p.devices()).unwrap();
    assert_eq!(o.exit, VmExit::Shutdown, "{o:?}");
    assert_eq!(p.reports(), vec![BOOT_MAGIC]);
}

#[test]
fn endless_loop_times_out() {
    if !kvm_or_skip("endless_loop_times_out") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(guest(&d, "spin.elf", SPIN));
    c.timeout = Some(Duration::from_millis(300));
    let p = Probes::new();
    let o = run_with_devices(&c, p.devices()).unwrap();
    assert_eq!(o.exit, VmExit::Timeout);
    assert_eq!(p.reports(), vec![BOOT_MAGIC]);
    assert!(o.wall >= Duration::from_millis(300));
    assert!(
        o.wall < Duration::from_secs(10),
        "vCPU was stopped promptly: {:?}",
        o.wall
    );
}

#[test]
fn unclaimed_io_is_logged_and_ignored() {
    if !kvm_or_skip("unclaimed_io_is_logged_and_ignored") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = Probes::new();
    let o = run_with_devices(&cfg(guest(&d, "g.elf", GARBAGE)), p.devices()).unwrap();
    assert_eq!(o.exit, VmExit::Reset, "{o:?}");
    assert_eq!(
        p.reports(),
        vec![
            BOOT_MAGIC,
            0xff,
            0xffff_ffff,
            0xffff_ffff,
            0xffff_ffff,
            0xffff_ffff,
            END_MAGIC
        ]
    );
    // 3 port writes + 2 port reads; 2 MMIO writes + 2 MMIO reads.
    assert_eq!(o.unclaimed_pio, 5);
    assert_eq!(o.unclaimed_mmio, 4);
}

#[test]
fn serial_output_reaches_log_and_outcome() {
    if !kvm_or_skip("serial_output_reaches_log_and_outcome") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(guest(&d, "hello.elf", HELLO));
    let log = d.path().join("serial.log");
    c.serial_log = Some(log.clone());
    let o = run(&c).unwrap();
    assert_eq!(o.exit, VmExit::Reset);
    assert_eq!(std::fs::read(&log).unwrap(), b"!\n");
    assert_eq!(o.serial_tail, b"!\n");
    assert_eq!(o.serial_bytes, 2);
    assert!(o.boot_to_first_serial.is_some());
    assert!(o.start_to_first_pio.unwrap() <= o.wall);
    assert!(o.rss_kib.is_some());
}

#[test]
fn smp_all_vcpus_start_and_report_apic_ids() {
    if !kvm_or_skip("smp_all_vcpus_start_and_report_apic_ids") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for n in [1u8, 2, 4] {
        let mut c = cfg(guest(&d, "smp.elf", SMP));
        c.vcpus = n;
        c.ap_start = ApStart::AtEntry;
        c.timeout = Some(Duration::from_secs(10));
        let p = Probes::new();
        let o = run_with_devices(&c, p.devices()).unwrap();
        assert_eq!(
            o.exit,
            VmExit::Reset,
            "{n} vCPUs: {o:?} reports {:#x?}",
            p.reports()
        );
        let r = p.reports();
        assert_eq!(r.last(), Some(&END_MAGIC));
        let mut ids: Vec<u32> = r
            .iter()
            .filter(|v| **v & 0xf000_0000 == SMP_TAG)
            .map(|v| v & 0xff)
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            (0..u32::from(n)).collect::<Vec<_>>(),
            "each vCPU once with its APIC id"
        );
    }
}

#[test]
fn pvh_entry_gets_start_info() {
    if !kvm_or_skip("pvh_entry_gets_start_info") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = Probes::new();
    let o = run_with_devices(&cfg(guest(&d, "pvh.elf", PVH)), p.devices()).unwrap();
    assert_eq!(o.boot_protocol, BootProtocol::Pvh);
    if o.exit != VmExit::Reset && is_pvm() {
        test_skip::skip(
            "pvh_entry_gets_start_info",
            test_skip::HW_KVM,
            format!("32-bit PVH entry does not run under PVM: {o:?}"),
        );
        return;
    }
    assert_eq!(o.exit, VmExit::Reset, "{o:?}");
    assert_eq!(
        p.reports(),
        vec![
            BOOT_MAGIC,
            0x6000,
            0x336e_c578,
            CMDLINE_START as u32,
            2,
            END_MAGIC
        ]
    );
}

#[test]
fn host_check_refuses_non_pvm_kernel_on_pvm_fast() {
    if !kvm_or_skip("host_check_refuses_non_pvm_kernel_on_pvm_fast") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(guest(&d, "hello.elf", HELLO));
    c.skip_host_check = false;
    let t = std::time::Instant::now();
    let r = run(&c);
    if is_pvm() {
        let e = r.unwrap_err();
        assert!(
            matches!(
                e,
                vmm::Error::Host(vmm::HostCheckError::PvmKernelNotAware { .. })
            ),
            "{e}"
        );
        let m = e.to_string();
        assert!(m.contains("--runner qemu") && !m.contains('\n'), "{m}");
        assert!(t.elapsed() < Duration::from_secs(2));
    } else {
        assert_eq!(r.unwrap().exit, VmExit::Reset);
        let h = vmm::host_check(&c.kernel).unwrap();
        assert!(!h.pvm && h.max_vcpus >= 1 && h.api_version == 12);
    }
}

/// Boots a real Linux kernel given in VMM_TEST_KERNEL (bzImage or vmlinux);
/// needs hardware KVM.
#[test]
fn linux_boots_to_console_output() {
    if !hw_kvm_or_skip("linux_boots_to_console_output") {
        return;
    }
    let Some(k) = std::env::var_os("VMM_TEST_KERNEL") else {
        test_skip::skip(
            "linux_boots_to_console_output",
            test_skip::ARTIFACTS,
            "set VMM_TEST_KERNEL to a bzImage or vmlinux (cargo xtask test does)",
        );
        return;
    };
    let c = VmConfig {
        kernel: k.into(),
        cmdline: "console=ttyS0 reboot=k panic=-1 rdinit=/nonexistent".into(),
        mem_mib: 256,
        vcpus: 2,
        serial_stdout: false,
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let o = run(&c).unwrap();
    let text = String::from_utf8_lossy(&o.serial_tail).into_owned();
    assert!(text.contains("Linux version"), "{text}");
    // No init: the kernel panics and, with panic=-1, resets.
    assert_eq!(o.exit, VmExit::Reset, "{text}");
}
