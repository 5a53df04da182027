//! Tap backend of the virtio-net device: a `/dev/net/tun` file descriptor in
//! tap mode (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) with a 12-byte vnet header
//! (`TUNSETVNETHDRSZ`), non-blocking, so every read and write carries one
//! Ethernet frame after a `virtio_net_hdr_v1`.
//!
//! Opening a name that does not exist creates a (non-persistent) tap that goes
//! away with the fd; a persistent tap made beforehand (`ip tuntap add dev NAME
//! mode tap`) is attached to. Either way the interface must be up (`ip link set
//! NAME up`) for frames to flow.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::net::{NetBackend, VNET_HDR_LEN};

/// The tun/tap control device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// Why a tap could not be opened. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long (IFNAMSIZ - 1 = 15 bytes at most) or holds
    /// bytes Linux refuses in interface names.
    #[error("tap name {name:?} is invalid: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `/dev/net/tun` is missing (no tun driver).
    #[error("{TUN_PATH} is missing (no tun/tap support in this kernel)")]
    NoTunDevice,
    /// The caller lacks CAP_NET_ADMIN (EPERM) to create the tap or to attach to
    /// one it does not own.
    #[error("tap {0:?}: permission denied (CAP_NET_ADMIN is needed, or the tap belongs to another user)")]
    PermissionDenied(String),
    /// Another process already has the tap open (EBUSY).
    #[error("tap {0:?} is busy (another process has it open)")]
    Busy(String),
    /// An interface of that name exists but is not a tap (EINVAL).
    #[error("interface {0:?} exists and is not a tap device (or the name is refused)")]
    NotATap(String),
    /// Any other failure of the named step.
    #[error("tap {name:?}: {op}: {source}")]
    Io {
        /// The name given.
        name: String,
        /// What failed.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// An open tap ([module docs](self)).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn check_name(name: &str) -> Result<(), TapError> {
    let bad = |why| {
        Err(TapError::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() >= libc::IFNAMSIZ {
        return bad("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return bad("reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return bad("contains '/', ':', NUL or white space");
    }
    Ok(())
}

impl Tap {
    /// Opens (attaching, or creating when absent) the tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    TapError::NoTunDevice
                }
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    TapError::PermissionDenied(name.to_owned())
                }
                _ => TapError::Io {
                    name: name.to_owned(),
                    op: "opening /dev/net/tun",
                    source: e,
                },
            })?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    TapError::PermissionDenied(name.to_owned())
                }
                Some(libc::EBUSY) => TapError::Busy(name.to_owned()),
                Some(libc::EINVAL) => TapError::NotATap(name.to_owned()),
                _ => TapError::Io {
                    name: name.to_owned(),
                    op: "TUNSETIFF",
                    source: e,
                },
            });
        }
        let hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr) };
        if r < 0 {
            return Err(TapError::Io {
                name: name.to_owned(),
                op: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn ready_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.file.write(frame) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for (n, why) in [
            ("", "empty"),
            ("abcdefghijklmnop", "longer"),
            ("a/b", "contains"),
            ("a b", "contains"),
            ("..", "reserved"),
        ] {
            let e = Tap::open(n).unwrap_err();
            assert!(matches!(e, TapError::InvalidName { .. }), "{n}: {e}");
            assert!(e.to_string().contains(why), "{n}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        // 15 bytes is the longest legal name.
        assert!(check_name("abcdefghijklmno").is_ok());
    }
}
