//! The vhost-net frontend: hands a virtio-net device's two split rings and a tap to the
//! kernel's vhost-net (`drivers/vhost/net.c`) through the rust-vmm `vhost` crate.
//!
//! One sequence serves both users:
//! * the guest agent, whose "guest memory" is one anonymous mapping of its own (identity
//!   memory table) and whose rings it writes itself, to make the guest kernel's vhost
//!   workers run under a kcov common handle;
//! * the VMM's virtio-net device with `--net ...,vhost=on`, whose memory is the VM's guest
//!   memory and whose rings the guest driver writes; the host kernel's vhost workers then
//!   move the frames, and with `--host-kcov` they report host coverage.
//!
//! Order matters for coverage: [`VhostNet::open_owned`] opens `/dev/vhost-net` and calls
//! `VHOST_SET_OWNER`, which creates the vhost worker and stores the calling task's kcov
//! common handle in it (`vhost_worker_create`, Linux 6.12). Call it on the thread that did
//! `KCOV_REMOTE_ENABLE` (or a child forked after it). Everything after that may run on any
//! thread.

use std::fs::File;
use std::io;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net;
use vhost::VhostBackend;
use vhost::VhostUserMemoryRegionInfo;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::vhost::{configure_rings, vhost_err};
pub use crate::vhost::{regions_of, Ring, VhostError};

/// The vhost-net control device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";
/// vhost-net queue index of receiveq1.
pub const RX_QUEUE: usize = 0;
/// vhost-net queue index of transmitq1.
pub const TX_QUEUE: usize = 1;
const DEV: &str = "vhost-net";
const LACKS: &str = "vhost-net: CONFIG_VHOST_NET, or `modprobe vhost_net`";

/// Feature bits a virtio-net frontend passes on to vhost-net: those that change how the
/// rings or the header are handled (vhost-net implements all of them). Device-config bits
/// (MAC, STATUS, ...) stay with the device model.
pub const RING_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_NET_F_MRG_RXBUF);

fn open_err(e: io::Error) -> VhostError {
    match e.kind() {
        io::ErrorKind::NotFound => VhostError::Missing {
            path: VHOST_NET_PATH,
            what: LACKS,
        },
        _ => VhostError::Open {
            path: VHOST_NET_PATH,
            source: e,
        },
    }
}

fn vh(op: &'static str) -> impl FnOnce(vhost::Error) -> VhostError {
    move |source| match source {
        vhost::Error::VhostOpen(e) => open_err(e),
        source => vhost_err(DEV, op)(source),
    }
}

/// Whether this kernel has vhost-net: `Ok` when `/dev/vhost-net` opens read-write.
pub fn probe() -> Result<(), VhostError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(VHOST_NET_PATH)
        .map(drop)
        .map_err(open_err)
}

/// An owned vhost-net instance ([module docs](self)).
pub struct VhostNet<AS: vhost::vhost_kern::PhysicalGuestAddressSpace> {
    net: Net<AS>,
    features: u64,
}

impl<AS: vhost::vhost_kern::PhysicalGuestAddressSpace> std::fmt::Debug for VhostNet<AS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostNet")
            .field("features", &format_args!("{:#x}", self.features))
            .finish()
    }
}

impl<AS: vhost::vhost_kern::PhysicalGuestAddressSpace> VhostNet<AS> {
    /// Opens `/dev/vhost-net` over guest memory `mem` and becomes its owner
    /// (`VHOST_SET_OWNER`): call it on the thread whose kcov common handle the vhost worker
    /// should carry.
    pub fn open_owned(mem: AS) -> Result<Self, VhostError> {
        Self::open_owned_with(mem, None)
    }

    /// [`VhostNet::open_owned`], first asking for a worker of kind `fork_owner`
    /// (`VHOST_SET_FORK_FROM_OWNER`: [`crate::vhost_raw::FORK_OWNER_KTHREAD`] or 1, a task
    /// forked from the owner, the default) where the kernel has the ioctl.
    pub fn open_owned_with(mem: AS, fork_owner: Option<u8>) -> Result<Self, VhostError> {
        let net = Net::new(mem).map_err(vh("open"))?;
        if let Some(v) = fork_owner {
            // SAFETY: VHOST_SET_FORK_FROM_OWNER reads one byte, which lives across the call.
            let r = unsafe {
                libc::ioctl(
                    std::os::fd::AsRawFd::as_raw_fd(&net),
                    crate::vhost_raw::nr::SET_FORK_FROM_OWNER as libc::c_ulong,
                    &v,
                )
            };
            if r < 0 {
                return Err(VhostError::Vhost {
                    dev: DEV,
                    op: "VHOST_SET_FORK_FROM_OWNER",
                    source: vhost::Error::IoctlError(io::Error::last_os_error()),
                });
            }
        }
        net.set_owner().map_err(vh("VHOST_SET_OWNER"))?;
        Ok(VhostNet { net, features: 0 })
    }

    /// The device fd, for ioctls the `vhost` crate does not make ([`crate::vhost_raw`]).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.net)
    }

    /// The features vhost-net offers (`VHOST_GET_FEATURES`).
    pub fn offered(&self) -> Result<u64, VhostError> {
        self.net.get_features().map_err(vh("VHOST_GET_FEATURES"))
    }

    /// Negotiates `features` (which vhost-net must offer), sets the memory table and hands
    /// over `rings` (size, addresses, base, kick and call eventfds). No backend yet: see
    /// [`VhostNet::attach`].
    pub fn configure(
        &mut self,
        features: u64,
        regions: &[VhostUserMemoryRegionInfo],
        rings: &[Ring<'_>],
    ) -> Result<(), VhostError> {
        configure_rings(&self.net, DEV, features, regions, rings)?;
        self.features = features;
        Ok(())
    }

    /// The negotiated features (0 before [`VhostNet::configure`]).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Attaches `backend` (a tap queue file) to both queues: from now on vhost moves frames.
    pub fn attach(&self, backend: &File) -> Result<(), VhostError> {
        for i in [RX_QUEUE, TX_QUEUE] {
            self.net
                .set_backend(i, Some(backend))
                .map_err(vh("VHOST_NET_SET_BACKEND"))?;
        }
        Ok(())
    }

    /// Detaches the backend from both queues (each call flushes the worker); errors are
    /// ignored, this runs on teardown paths. Closing the instance stops the worker.
    pub fn detach(&self) {
        for i in [RX_QUEUE, TX_QUEUE] {
            let _ = self.net.set_backend(i, None);
        }
    }
}

/// A feature set's bits that [`RING_FEATURES`] passes on, for a device that negotiated
/// `negotiated` with its driver.
pub fn ring_features(negotiated: u64) -> u64 {
    negotiated & RING_FEATURES
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

    #[test]
    fn memory_table_covers_every_region_with_its_mapping() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x2_0000),
        ])
        .unwrap();
        let t = regions_of(&mem);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].guest_phys_addr, t[0].memory_size), (0, 0x10_0000));
        assert_eq!(
            (t[1].guest_phys_addr, t[1].memory_size),
            (0x1_0000_0000, 0x2_0000)
        );
        for (r, e) in mem.iter().zip(&t) {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap();
            assert_eq!(e.userspace_addr, host as u64);
            assert_ne!(e.userspace_addr, 0);
        }
    }

    #[test]
    fn only_ring_bits_pass_through() {
        let mac = 1u64 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
        let status = 1u64 << virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;
        let all = RING_FEATURES | mac | status;
        assert_eq!(ring_features(all), RING_FEATURES);
        assert_eq!(ring_features(mac | (1 << VIRTIO_F_VERSION_1)), 1 << 32);
    }

    #[test]
    fn missing_vhost_net_is_named() {
        match probe() {
            Ok(()) => test_skip::skip(
                "missing_vhost_net_is_named",
                test_skip::NO_HOST_VHOST_NET,
                "this kernel has vhost-net",
            ),
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains(VHOST_NET_PATH), "{m}");
                assert!(!m.contains('\n'));
                let mem = std::sync::Arc::new(
                    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap(),
                );
                let e = VhostNet::open_owned(mem).unwrap_err();
                assert!(
                    matches!(e, VhostError::Missing { .. } | VhostError::Open { .. }),
                    "{e}"
                );
            }
        }
    }
}
