//! The vCPU thread: KVM_RUN loop dispatching exits to the buses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Instant;

use crossbeam_channel::Sender;
use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::Bus;
use crate::log::debug;

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine: i8042 command 0xfe on port 0x64, port 0xcf9,
    /// or KVM_SYSTEM_EVENT_RESET. Linux `reboot` (with `reboot=k`) and a panic with
    /// `panic=-1` end here: the caller tells them apart from the serial output.
    Reset,
    /// The guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN).
    Poweroff,
    /// KVM_EXIT_SHUTDOWN: a triple fault (or Linux `reboot=t`).
    Shutdown,
    /// The configured timeout passed.
    Timeout,
    /// The owner asked the VM to stop (`VmConfig::stop`).
    Stopped,
    /// KVM could not run the guest further (entry failure, internal error,
    /// unexpected exit); `vcpu` is the vCPU that saw it.
    Crash {
        /// vCPU index.
        vcpu: u8,
        /// What happened.
        reason: String,
    },
}

impl VmExit {
    /// A guest-initiated reset or power-off.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::Reset | VmExit::Poweroff)
    }
}

/// Instants the VM records while it runs.
#[derive(Debug)]
pub(crate) struct Timings {
    /// `run()` was called.
    pub start: Instant,
    /// All vCPU threads passed the start barrier.
    pub running: OnceLock<Instant>,
    /// The first guest port write (any port).
    pub first_pio_write: OnceLock<Instant>,
}

pub(crate) struct VcpuCtx {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Bus,
    pub mmio: Bus,
    pub stop: Arc<AtomicBool>,
    pub exits: Sender<VmExit>,
    pub timings: Arc<Timings>,
    pub barrier: Arc<Barrier>,
}

/// Access data as a little-endian number (1, 2, 4, 8 bytes) or as bytes.
fn hex(data: &[u8]) -> String {
    if data.len() <= 8 {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        format!("{:#x}", u64::from_le_bytes(b))
    } else {
        data.iter().map(|b| format!("{b:02x}")).collect()
    }
}

pub(crate) fn run_vcpu(mut ctx: VcpuCtx) {
    ctx.barrier.wait();
    ctx.timings.running.get_or_init(Instant::now);
    let index = ctx.index;
    let exit = loop {
        if ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        match ctx.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.timings.first_pio_write.get_or_init(Instant::now);
                if !ctx.pio.write(u64::from(port), data) && ctx.pio.note_unclaimed() {
                    debug(format_args!(
                        "vcpu{index}: unclaimed port write {port:#x} <- {} (ignored)",
                        hex(data)
                    ));
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                    if ctx.pio.note_unclaimed() {
                        debug(format_args!(
                            "vcpu{index}: unclaimed port read {port:#x} ({} bytes, returning 0xff..)",
                            data.len()
                        ));
                    }
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    data.fill(0xff);
                    if ctx.mmio.note_unclaimed() {
                        debug(format_args!(
                            "vcpu{index}: unclaimed MMIO read {addr:#x} ({} bytes, returning 0xff..)",
                            data.len()
                        ));
                    }
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio.write(addr, data) && ctx.mmio.note_unclaimed() {
                    debug(format_args!(
                        "vcpu{index}: unclaimed MMIO write {addr:#x} <- {} (ignored)",
                        hex(data)
                    ));
                }
            }
            Ok(VcpuExit::Shutdown) => break VmExit::Shutdown,
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                break match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Poweroff,
                    KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                    KVM_SYSTEM_EVENT_CRASH => VmExit::Crash {
                        vcpu: index,
                        reason: "guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into(),
                    },
                    k => VmExit::Crash {
                        vcpu: index,
                        reason: format!("unknown KVM system event {k}"),
                    },
                }
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                break VmExit::Crash {
                    vcpu: index,
                    reason: format!(
                        "KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host cpu {cpu}"
                    ),
                }
            }
            Ok(VcpuExit::InternalError) => {
                break VmExit::Crash {
                    vcpu: index,
                    reason: "KVM_EXIT_INTERNAL_ERROR (KVM could not emulate an instruction)".into(),
                }
            }
            Ok(VcpuExit::Hlt) => {
                break VmExit::Crash {
                    vcpu: index,
                    reason: "unexpected HLT exit".into(),
                }
            }
            Ok(other) => {
                break VmExit::Crash {
                    vcpu: index,
                    reason: format!("unexpected KVM exit {other:?}"),
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => {
                break VmExit::Crash {
                    vcpu: index,
                    reason: format!("KVM_RUN failed: {e}"),
                }
            }
        }
    };
    debug(format_args!("vcpu{index}: VM ends: {exit:?}"));
    let _ = ctx.exits.send(exit);
}
