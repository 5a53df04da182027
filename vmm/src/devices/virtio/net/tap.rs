//! Userspace tap backend of the virtio-net device ([`frontends::tap`], shared with
//! the guest agent): a `/dev/net/tun` file descriptor in
//! tap mode (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) with a 12-byte vnet header
//! (`TUNSETVNETHDRSZ`), non-blocking, so every read and write carries one
//! Ethernet frame after a `virtio_net_hdr_v1`.
//!
//! Opening a name that does not exist creates a (non-persistent) tap that goes
//! away with the fd; a persistent tap made beforehand (`ip tuntap add dev NAME
//! mode tap`) is attached to. Either way the interface must be up (`ip link set
//! NAME up`) for frames to flow.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

pub use frontends::tap::{check_name, Tap, TapError, TUN_PATH};

use super::backend::NetBackend;

impl NetBackend for Tap {
    fn ready_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.file().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.file().write(frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short tap write: {n} of {} bytes",
                        frame.len()
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn offloads(&self) -> bool {
        true
    }

    fn set_offloads(&mut self, tun_flags: libc::c_uint) -> io::Result<()> {
        Tap::set_offloads(self, tun_flags).map_err(io::Error::other)
    }
}
