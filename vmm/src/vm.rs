//! Building and running a VM: guest memory, kernel, boot structures, devices,
//! vCPU threads, and how the VM ended.

use std::fs::File;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_mp_state, kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::loader::{load_cmdline, Cmdline};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{apic, bootparams, cpuid, gdt, layout, mptable, msrs, paging, pvh, regs};
use crate::devices::bus::SharedDevice;
use crate::devices::legacy::{self, ResetFn};
use crate::devices::serial::{self, SerialCapture, SerialDevice, SerialOut, SerialSink};
use crate::devices::virtio::{
    mmio as virtio_mmio, MmioSlot, MmioTransport, VirtioMmioDevice, VirtioMmioInfo,
    VIRTIO_MAX_DEVICES,
};
use crate::devices::Bus;
use crate::error::Error;
use crate::kernel::{self, BootProtocol, LoadedKernel};
use crate::log::debug;
use crate::vcpu::{run_vcpu, Timings, VcpuCtx, VmExit};

/// Default kernel command line: serial console, keyboard-controller reboot (ends
/// the VM with [`VmExit::Reset`]), reboot at once on panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// Upper limit of `mem_mib` (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Smallest `mem_mib` accepted before looking at the kernel: the low 1 MiB plus one.
pub const MIN_MEM_MIB: u64 = 2;

/// How application processors (vCPUs 1..N) start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApStart {
    /// Like hardware: wait for INIT/SIPI from the boot CPU (what Linux expects).
    #[default]
    WaitForSipi,
    /// Runnable at once, at the kernel entry with the boot CPU's registers (test guests:
    /// each vCPU finds its index in CPUID leaf 1 EBX[31:24]; they share the boot stack).
    AtEntry,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Also write serial output to this file.
    pub serial_log: Option<PathBuf>,
    /// Copy serial output to stdout.
    pub serial_stdout: bool,
    /// End the VM with [`VmExit::Timeout`] after this long.
    pub timeout: Option<Duration>,
    /// Entry protocol.
    pub boot_protocol: BootProtocol,
    /// How vCPUs other than 0 start.
    pub ap_start: ApStart,
    /// Also send serial output here (e.g. a pipe a console watcher reads).
    pub serial_sink: Option<SerialSink>,
    /// Ends the VM with [`VmExit::Stopped`] when a message arrives or every
    /// sender is dropped (the owner's way to stop a VM from another thread).
    pub stop: Option<crossbeam_channel::Receiver<()>>,
    /// Do not run [`crate::host_check`] first (for test guests, which are not
    /// PVM-aware Linux kernels but run under PVM anyway).
    pub skip_host_check: bool,
    /// virtio-mmio devices: device `i` gets [`MmioSlot::nth`]`(i)` and a
    /// `virtio_mmio.device=` word appended to the kernel command line.
    pub virtio_devices: Vec<VirtioMmioDevice>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            mem_mib: 512,
            vcpus: 1,
            serial_log: None,
            serial_stdout: true,
            timeout: None,
            boot_protocol: BootProtocol::Auto,
            ap_start: ApStart::WaitForSipi,
            serial_sink: None,
            stop: None,
            skip_host_check: false,
            virtio_devices: Vec::new(),
        }
    }
}

/// Result of [`run`].
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How the VM ended.
    pub exit: VmExit,
    /// Protocol used to enter the kernel.
    pub boot_protocol: BootProtocol,
    /// From the call of `run` until the VM ended.
    pub wall: Duration,
    /// From the call of `run` until the vCPUs started.
    pub start_to_vcpus_running: Option<Duration>,
    /// From the call of `run` until the guest's first port write.
    pub start_to_first_pio: Option<Duration>,
    /// From vCPU start until the first serial byte.
    pub boot_to_first_serial: Option<Duration>,
    /// Serial bytes written by the guest.
    pub serial_bytes: u64,
    /// The last 64 KiB of serial output.
    pub serial_tail: Vec<u8>,
    /// Port accesses no device claimed.
    pub unclaimed_pio: u64,
    /// MMIO accesses no device claimed.
    pub unclaimed_mmio: u64,
    /// Resident set size of this process while the VM was still alive (KiB).
    pub rss_kib: Option<u64>,
    /// The virtio-mmio devices, in [`VmConfig::virtio_devices`] order.
    pub virtio: Vec<VirtioMmioInfo>,
}

/// Which bus an extra device sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// Port I/O.
    Pio,
    /// Memory-mapped I/O (normally in the gap below 4 GiB).
    Mmio,
}

/// A device added by the caller (later: virtio-mmio devices; tests: probe devices).
#[derive(Clone)]
pub struct ExtraDevice {
    /// Bus.
    pub bus: BusKind,
    /// Base address / port.
    pub base: u64,
    /// Length of the range.
    pub len: u64,
    /// The device.
    pub device: SharedDevice,
}

/// Boot the kernel in `cfg` and run until the guest resets, powers off, crashes
/// or the timeout passes.
pub fn run(cfg: &VmConfig) -> Result<RunOutcome, Error> {
    run_with_devices(cfg, Vec::new())
}

/// [`run`] with extra devices on the buses.
pub fn run_with_devices(cfg: &VmConfig, extra: Vec<ExtraDevice>) -> Result<RunOutcome, Error> {
    let timings = Arc::new(Timings {
        start: Instant::now(),
        running: OnceLock::new(),
        first_pio_write: OnceLock::new(),
    });
    validate(cfg)?;
    if !cfg.skip_host_check {
        crate::host::host_check(&cfg.kernel)?;
    }
    let mem_size = cfg.mem_mib << 20;
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_size)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem =
        GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory(e.to_string()))?;

    let kernel = kernel::load_kernel(&mem, &cfg.kernel, mem_size, cfg.boot_protocol)?;
    let initrd = load_initrd(cfg, &mem, mem_size, &kernel)?;
    let cmdline = full_cmdline(cfg);
    write_cmdline(&cmdline, &mem, &kernel)?;
    write_boot_structures(cfg, &cmdline, &mem, mem_size, &kernel, initrd)?;

    let kvm = Kvm::new().map_err(|e| {
        Error::Host(crate::host::HostCheckError::KvmNotOpenable {
            path: "/dev/kvm".into(),
            reason: e.to_string(),
        })
    })?;
    if usize::from(cfg.vcpus) > kvm.get_max_vcpus() {
        return Err(Error::TooManyVcpus {
            requested: cfg.vcpus,
            max: kvm.get_max_vcpus(),
            limit: "KVM_CAP_MAX_VCPUS",
        });
    }

    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    vm.create_pit2(kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })
    .map_err(Error::kvm("KVM_CREATE_PIT2"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::GuestMemory(e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM:
        // every vCPU thread is joined (or the process ends) before `mem` is dropped.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }

    // Devices.
    let stop = Arc::new(AtomicBool::new(false));
    let (exit_tx, exit_rx) = crossbeam_channel::unbounded::<VmExit>();
    let reset: ResetFn = {
        let stop = stop.clone();
        let tx = exit_tx.clone();
        Arc::new(move || {
            let _ = tx.send(VmExit::Reset);
            stop.store(true, Ordering::SeqCst);
        })
    };
    let pio = Bus::new();
    let mmio = Bus::new();
    let capture = Arc::new(SerialCapture::default());
    let log_file = match &cfg.serial_log {
        Some(p) => Some(File::create(p).map_err(|source| Error::SerialLog {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Thread)?;
    vm.register_irqfd(&serial_irq, serial::COM1_IRQ)
        .map_err(Error::kvm("KVM_IRQFD"))?;
    let serial_dev = SerialDevice::new(
        serial_irq,
        SerialOut::new(cfg.serial_stdout, log_file, capture.clone())
            .with_sink(cfg.serial_sink.clone()),
    );
    let bus_err = |e: crate::devices::BusError| Error::Device(e.to_string());
    pio.insert(
        Arc::new(Mutex::new(serial_dev)),
        serial::COM1_PORT,
        serial::COM1_LEN,
    )
    .map_err(bus_err)?;
    pio.insert(
        Arc::new(Mutex::new(legacy::I8042::new(reset.clone()))),
        legacy::I8042_BASE,
        legacy::I8042_LEN,
    )
    .map_err(bus_err)?;
    pio.insert(
        Arc::new(Mutex::new(legacy::ResetControl::new(reset))),
        legacy::RESET_CF9_PORT,
        1,
    )
    .map_err(bus_err)?;
    let mut virtio = Vec::new();
    for (i, d) in cfg.virtio_devices.iter().enumerate() {
        let slot = MmioSlot::nth(i).ok_or(Error::Device(format!(
            "more than {VIRTIO_MAX_DEVICES} virtio devices"
        )))?;
        let t = MmioTransport::new(d.device.clone(), mem.clone())
            .map_err(|e| Error::Device(e.to_string()))?;
        let ioeventfd = virtio_mmio::register_with_kvm(&vm, &t, slot, d.ioeventfd)
            .map_err(Error::kvm("KVM_IRQFD"))?;
        let t = Arc::new(Mutex::new(t));
        mmio.insert(t.clone(), slot.base, slot.len)
            .map_err(bus_err)?;
        virtio.push((slot, ioeventfd, t));
    }
    for d in extra {
        let bus = match d.bus {
            BusKind::Pio => &pio,
            BusKind::Mmio => &mmio,
        };
        bus.insert(d.device, d.base, d.len).map_err(bus_err)?;
    }

    let vcpus = create_vcpus(cfg, &kvm, &vm, &kernel)?;
    let barrier = Arc::new(Barrier::new(vcpus.len()));
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    kick::install()?;
    for (i, fd) in vcpus.into_iter().enumerate() {
        let ctx = VcpuCtx {
            index: i as u8,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            stop: stop.clone(),
            exits: exit_tx.clone(),
            timings: timings.clone(),
            barrier: barrier.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || run_vcpu(ctx));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barrier can never be passed now: stop the threads started so far.
                stop.store(true, Ordering::SeqCst);
                drop(exit_tx);
                stop_threads(handles);
                return Err(Error::Thread(e));
            }
        }
    }
    drop(exit_tx);

    let exit = wait_exit(&exit_rx, cfg.timeout, cfg.stop.as_ref());
    let end = Instant::now();
    let rss_kib = proc_status_kib("VmRSS:");
    stop.store(true, Ordering::SeqCst);
    stop_threads(handles);
    let virtio = virtio
        .into_iter()
        .map(|(slot, ioeventfd, t)| {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            let info = VirtioMmioInfo {
                slot,
                device_type: t.device_type(),
                ioeventfd,
                notify_exits: t.notify_exits(),
                status: t.status(),
                activations: t.activations(),
            };
            t.shutdown();
            info
        })
        .collect();
    drop(vm);

    let running = timings.running.get().copied();
    let tail = capture
        .tail
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(RunOutcome {
        exit,
        boot_protocol: kernel.protocol,
        wall: end - timings.start,
        start_to_vcpus_running: running.map(|r| r - timings.start),
        start_to_first_pio: timings.first_pio_write.get().map(|t| *t - timings.start),
        boot_to_first_serial: match (running, capture.first_byte.get()) {
            (Some(r), Some(f)) => Some(f.saturating_duration_since(r)),
            _ => None,
        },
        serial_bytes: capture.bytes.load(Ordering::Relaxed),
        serial_tail: tail,
        unclaimed_pio: pio.unclaimed_count(),
        unclaimed_mmio: mmio.unclaimed_count(),
        rss_kib,
        virtio,
    })
}

/// `cfg.cmdline` plus one `virtio_mmio.device=` word per virtio device.
fn full_cmdline(cfg: &VmConfig) -> String {
    let mut c = cfg.cmdline.clone();
    for slot in (0..cfg.virtio_devices.len()).filter_map(MmioSlot::nth) {
        if !c.is_empty() {
            c.push(' ');
        }
        c.push_str(&slot.cmdline_entry());
    }
    c
}

/// Waits for the first vCPU exit, the timeout, or the owner's stop signal.
fn wait_exit(
    exits: &crossbeam_channel::Receiver<VmExit>,
    timeout: Option<Duration>,
    stop: Option<&crossbeam_channel::Receiver<()>>,
) -> VmExit {
    let deadline = timeout.map(|t| Instant::now() + t);
    let never = crossbeam_channel::never();
    let stop = stop.unwrap_or(&never);
    let timer = match deadline {
        Some(d) => crossbeam_channel::at(d),
        None => crossbeam_channel::never(),
    };
    let ended = || VmExit::Crash {
        vcpu: 0,
        reason: "all vCPU threads ended without a reason".into(),
    };
    crossbeam_channel::select! {
        recv(exits) -> e => e.unwrap_or_else(|_| ended()),
        recv(stop) -> _ => VmExit::Stopped,
        recv(timer) -> _ => VmExit::Timeout,
    }
}

fn validate(cfg: &VmConfig) -> Result<(), Error> {
    if cfg.vcpus == 0 {
        return Err(Error::NoVcpus);
    }
    if cfg.vcpus > mptable::max_cpus() {
        return Err(Error::TooManyVcpus {
            requested: cfg.vcpus,
            max: usize::from(mptable::max_cpus()),
            limit: "MP table in the EBDA",
        });
    }
    if cfg.mem_mib > MAX_MEM_MIB {
        return Err(Error::MemTooLarge {
            mem_mib: cfg.mem_mib,
            max_mib: MAX_MEM_MIB,
        });
    }
    if cfg.mem_mib < MIN_MEM_MIB {
        return Err(Error::MemTooSmall {
            mem_mib: cfg.mem_mib,
            need_mib: MIN_MEM_MIB,
            what: "the boot structures below 1 MiB".into(),
        });
    }
    if cfg.virtio_devices.len() > VIRTIO_MAX_DEVICES {
        return Err(Error::Device(format!(
            "{} virtio devices; at most {VIRTIO_MAX_DEVICES} fit the MMIO windows and IRQs",
            cfg.virtio_devices.len()
        )));
    }
    Ok(())
}

/// A `Name:  N kB` line of this process's /proc/self/status, in KiB (`key` with
/// its colon, e.g. `"VmRSS:"` as in [`RunOutcome::rss_kib`], or `"VmHWM:"`).
pub fn proc_status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn load_initrd(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
) -> Result<Option<(u64, u64)>, Error> {
    let Some(path) = &cfg.initrd else {
        return Ok(None);
    };
    let io = |source| Error::InitrdIo {
        path: path.clone(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    if size > u64::from(u32::MAX) {
        return Err(Error::InitrdTooLarge {
            path: path.clone(),
            size,
        });
    }
    let addr_max = bootparams::initrd_addr_max(kernel.setup_header.as_ref());
    let addr = bootparams::initrd_placement(size, mem_size, addr_max, kernel.reserved_end)
        .map_err(|_| Error::MemTooSmall {
            mem_mib: cfg.mem_mib,
            need_mib: (kernel.reserved_end + size + layout::PAGE_SIZE).div_ceil(1 << 20),
            what: format!(
                "kernel (up to {:#x}) + initrd {} ({size} bytes)",
                kernel.reserved_end,
                path.display()
            ),
        })?;
    use vm_memory::Bytes;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| Error::InitrdIo {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(Some((addr, size)))
}

fn write_cmdline(cmdline: &str, mem: &GuestMemoryMmap, kernel: &LoadedKernel) -> Result<(), Error> {
    let cap = bootparams::cmdline_capacity(kernel.setup_header.as_ref());
    if cmdline.len() + 1 > cap {
        return Err(Error::Cmdline(format!(
            "{} bytes, this kernel accepts at most {}",
            cmdline.len(),
            cap - 1
        )));
    }
    let cl = Cmdline::try_from(cmdline, cap).map_err(|e| Error::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cl)
        .map_err(|e| Error::Cmdline(e.to_string()))
}

fn write_boot_structures(
    cfg: &VmConfig,
    cmdline: &str,
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    initrd: Option<(u64, u64)>,
) -> Result<(), Error> {
    let e820 = bootparams::e820_entries(mem_size)?;
    match kernel.protocol {
        BootProtocol::Pvh => {
            let bp = pvh::build_pvh(layout::CMDLINE_START, &e820, initrd);
            pvh::write_pvh(mem, &bp)?;
            gdt::write_gdt(mem, &gdt::protected_mode_gdt())?;
        }
        _ => {
            let params = bootparams::build_boot_params(&bootparams::ZeroPageSpec {
                setup_header: kernel.setup_header,
                cmdline_addr: layout::CMDLINE_START,
                cmdline_len: cmdline.len(),
                initrd,
                e820: &e820,
            })?;
            bootparams::write_boot_params(mem, &params)?;
            paging::write_identity_page_tables(mem)?;
            gdt::write_gdt(mem, &gdt::long_mode_gdt())?;
        }
    }
    mptable::setup_mptable(mem, cfg.vcpus)?;
    Ok(())
}

fn create_vcpus(
    cfg: &VmConfig,
    kvm: &Kvm,
    vm: &VmFd,
    kernel: &LoadedKernel,
) -> Result<Vec<VcpuFd>, Error> {
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let boot_msrs = msrs::boot_msrs()?;
    let mut out = Vec::new();
    for i in 0..cfg.vcpus {
        let fd = vm
            .create_vcpu(u64::from(i))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        let mut c = base_cpuid.clone();
        cpuid::normalize_cpuid(&mut c, i, cfg.vcpus)?;
        fd.set_cpuid2(&c).map_err(Error::kvm("KVM_SET_CPUID2"))?;
        let n = fd
            .set_msrs(&boot_msrs)
            .map_err(Error::kvm("KVM_SET_MSRS"))?;
        if n != boot_msrs.as_slice().len() {
            debug(format_args!(
                "vcpu{i}: KVM accepted {n} of {} boot MSRs",
                boot_msrs.as_slice().len()
            ));
        }
        if i == 0 || cfg.ap_start == ApStart::AtEntry {
            let mut sregs = fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
            let r = match kernel.protocol {
                BootProtocol::Pvh => {
                    regs::protected_mode_sregs(&mut sregs);
                    regs::pvh_regs(kernel.entry)
                }
                _ => {
                    regs::long_mode_sregs(&mut sregs, layout::PML4_START);
                    regs::linux64_regs(kernel.entry)
                }
            };
            fd.set_sregs(&sregs).map_err(Error::kvm("KVM_SET_SREGS"))?;
            fd.set_regs(&r).map_err(Error::kvm("KVM_SET_REGS"))?;
            fd.set_fpu(&regs::boot_fpu())
                .map_err(Error::kvm("KVM_SET_FPU"))?;
        }
        let mut lapic = fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
        apic::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))?;
        if i > 0 && cfg.ap_start == ApStart::AtEntry {
            fd.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        }
        out.push(fd);
    }
    Ok(out)
}

/// Signal all vCPU threads out of KVM_RUN until they have ended, then join them.
fn stop_threads(handles: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        for h in handles.iter().filter(|h| !h.is_finished()) {
            kick::kick(h.as_pthread_t());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for h in handles {
        if h.is_finished() {
            let _ = h.join();
        } else {
            debug(format_args!("a vCPU thread did not stop; leaving it"));
        }
    }
}

/// Kicking a vCPU thread out of KVM_RUN with a real-time signal whose handler
/// does nothing: KVM_RUN returns EINTR and the loop sees the stop flag.
mod kick {
    use std::sync::OnceLock;

    use libc::{c_int, c_void, siginfo_t};
    use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

    use crate::error::Error;

    static INSTALLED: OnceLock<Result<c_int, i32>> = OnceLock::new();

    extern "C" fn noop(_: c_int, _: *mut siginfo_t, _: *mut c_void) {}

    pub(super) fn install() -> Result<(), Error> {
        let r = INSTALLED.get_or_init(|| {
            let sig = SIGRTMIN();
            register_signal_handler(sig, noop)
                .map(|_| sig)
                .map_err(|e| e.errno())
        });
        r.map(|_| ())
            .map_err(|e| Error::Thread(std::io::Error::from_raw_os_error(e)))
    }

    pub(super) fn kick(thread: libc::pthread_t) {
        if let Some(Ok(sig)) = INSTALLED.get() {
            // SAFETY: `thread` is a live, not yet joined thread of this process
            // (the caller holds its JoinHandle), and the handler is installed.
            unsafe {
                libc::pthread_kill(thread, *sig);
            }
        }
    }
}
