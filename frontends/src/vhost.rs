//! What every kernel vhost frontend does the same way (vhost-net, vhost-vsock): the error
//! type, the memory table of a guest memory, and handing over features, memory and rings
//! after `VHOST_SET_OWNER`.

use std::io;

use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// What a vhost frontend fails with. Every message is one line and names the device and step.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// The device node does not exist.
    #[error("{path} is missing (the kernel has no {what})")]
    Missing {
        /// The device node.
        path: &'static str,
        /// What the kernel lacks (config option, module).
        what: &'static str,
    },
    /// The device node exists but could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The device node.
        path: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A vhost ioctl failed.
    #[error("{dev} {op}: {source}")]
    Vhost {
        /// The device ("vhost-net", "vhost-vsock").
        dev: &'static str,
        /// The operation.
        op: &'static str,
        /// The error.
        source: vhost::Error,
    },
    /// The device lacks features the frontend needs.
    #[error("{dev} lacks features {missing:#x} (offers {offered:#x})")]
    Features {
        /// The device.
        dev: &'static str,
        /// Missing bits.
        missing: u64,
        /// Offered bits.
        offered: u64,
    },
    /// A frontend argument is unusable (no rings, no memory regions).
    #[error("{dev} frontend: {why}")]
    Config {
        /// The device.
        dev: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// Maps a `vhost` crate error of step `op` on device `dev`.
pub fn vhost_err(dev: &'static str, op: &'static str) -> impl FnOnce(vhost::Error) -> VhostError {
    move |source| VhostError::Vhost { dev, op, source }
}

/// One ring handed to a vhost device.
pub struct Ring<'a> {
    /// vhost queue index.
    pub index: usize,
    /// Size and guest addresses of the descriptor table, avail and used rings.
    pub config: VringConfigData,
    /// The avail index vhost starts from (0 on a fresh ring; `next_avail` after a restore).
    pub base: u16,
    /// The eventfd the driver's notifications arrive on (an ioeventfd in a VMM).
    pub kick: &'a EventFd,
    /// The eventfd vhost signals when it used buffers.
    pub call: &'a EventFd,
}

/// The `VHOST_SET_MEM_TABLE` entries for guest memory `mem`: one per region, guest address
/// to this process's mapping (the kernel's vhost only uses those three fields).
pub fn regions_of<M: GuestMemoryBackend>(mem: &M) -> Vec<VhostUserMemoryRegionInfo>
where
    M::R: GuestMemoryRegion,
{
    mem.iter()
        .filter_map(|r| {
            let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
            Some(VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: host as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
        })
        .collect()
}

/// After `VHOST_SET_OWNER` on `dev` (named `name` in errors): negotiates `features` (which
/// the device must offer), sets the memory table and hands over `rings` (size, addresses,
/// base, kick and call eventfds).
pub fn configure_rings<B: VhostBackend>(
    dev: &B,
    name: &'static str,
    features: u64,
    regions: &[VhostUserMemoryRegionInfo],
    rings: &[Ring<'_>],
) -> Result<(), VhostError> {
    let vh = |op| vhost_err(name, op);
    if rings.is_empty() {
        return Err(VhostError::Config {
            dev: name,
            why: "no rings",
        });
    }
    if regions.is_empty() {
        return Err(VhostError::Config {
            dev: name,
            why: "no guest memory regions",
        });
    }
    let offered = dev.get_features().map_err(vh("VHOST_GET_FEATURES"))?;
    if offered & features != features {
        return Err(VhostError::Features {
            dev: name,
            missing: features & !offered,
            offered,
        });
    }
    dev.set_features(features)
        .map_err(vh("VHOST_SET_FEATURES"))?;
    dev.set_mem_table(regions)
        .map_err(vh("VHOST_SET_MEM_TABLE"))?;
    for r in rings {
        dev.set_vring_num(r.index, r.config.queue_size)
            .map_err(vh("VHOST_SET_VRING_NUM"))?;
        dev.set_vring_addr(r.index, &r.config)
            .map_err(vh("VHOST_SET_VRING_ADDR"))?;
        dev.set_vring_base(r.index, r.base)
            .map_err(vh("VHOST_SET_VRING_BASE"))?;
        dev.set_vring_call(r.index, r.call)
            .map_err(vh("VHOST_SET_VRING_CALL"))?;
        dev.set_vring_kick(r.index, r.kick)
            .map_err(vh("VHOST_SET_VRING_KICK"))?;
    }
    Ok(())
}
