//! The host side of the userspace data path: what the worker moves frames to
//! and from (a tap, [`super::tap`], or a memory backend in tests).

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

/// The host side of a virtio-net device. Every `recv`/`send` carries one frame
/// preceded by a [`VNET_HDR_LEN`](super::VNET_HDR_LEN)-byte vnet header.
pub trait NetBackend: Send {
    /// A file descriptor that becomes readable when frames are waiting; the
    /// worker waits on it edge-triggered and calls [`NetBackend::recv`] until
    /// it returns `Ok(None)`.
    fn ready_fd(&self) -> RawFd;
    /// Reads one header+frame into `buf` (which holds [`VNET_HDR_LEN`](super::VNET_HDR_LEN) +
    /// [`MAX_FRAME_LEN`](super::MAX_FRAME_LEN) bytes; longer frames may be cut); `Ok(None)` when
    /// nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Sends one header+frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Whether it takes and gives vnet headers as they are (checksum and GSO
    /// offloads); if so the device offers
    /// [`OFFLOAD_FEATURES`](super::OFFLOAD_FEATURES).
    fn offloads(&self) -> bool {
        false
    }
    /// Which offloads it may hand the guest (`TUNSETOFFLOAD` flags, 0 = none);
    /// called on every activation when [`NetBackend::offloads`].
    fn set_offloads(&mut self, _tun_flags: libc::c_uint) -> io::Result<()> {
        Ok(())
    }
}

/// A backend shared by the device and its worker.
pub type SharedBackend = Arc<Mutex<Box<dyn NetBackend>>>;
