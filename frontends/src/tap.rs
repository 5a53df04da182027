//! A tap interface (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) with a 12-byte
//! vnet header (`TUNSETVNETHDRSZ`), non-blocking: every read and write carries one Ethernet
//! frame after a `virtio_net_hdr_v1`. Used by the VMM (userspace tap backend, and the
//! backend it hands to host vhost-net) and by the guest agent (the backend of the guest's
//! vhost-net).
//!
//! Opening a name that does not exist creates a (non-persistent) tap that goes away with the
//! fd; a name with `%d` lets the kernel pick the number (`kcovtap%d`); a persistent tap made
//! beforehand (`ip tuntap add dev NAME mode tap`) is attached to. Either way the interface
//! must be up ([`Tap::set_up`], or `ip link set NAME up`) for frames to flow.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The tun/tap control device.
pub const TUN_PATH: &str = "/dev/net/tun";
/// `sizeof(struct virtio_net_hdr_v1)` (= `virtio_net_hdr_mrg_rxbuf`): the header every frame
/// carries with VERSION_1 or MRG_RXBUF.
pub const VNET_HDR_LEN: usize = 12;

/// Why a tap could not be opened or configured. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long (IFNAMSIZ - 1 = 15 bytes at most) or holds bytes Linux
    /// refuses in interface names.
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
    /// The caller lacks CAP_NET_ADMIN (EPERM) to create the tap or to attach to one it does
    /// not own.
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

/// Checks an interface name (or a `%d` pattern) before any syscall.
pub fn check_name(name: &str) -> Result<(), TapError> {
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

use crate::netif::ifreq;

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tap {
    /// Opens (attaching, or creating when absent) the tap `name`; a `%d` in `name` is
    /// replaced by the kernel with the first free number ([`Tap::name`] tells which).
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Self::open_with(name, Some(VNET_HDR_LEN))
    }

    /// [`Tap::open`] with a vnet header of `vnet_hdr` bytes (`TUNSETVNETHDRSZ`: 10 for a
    /// legacy `virtio_net_hdr`, 12 with `num_buffers`), or none at all (no `IFF_VNET_HDR`:
    /// plain frames both ways, for a reader that handles the header itself).
    pub fn open_with(name: &str, vnet_hdr: Option<usize>) -> Result<Tap, TapError> {
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
        let mut ifr = ifreq(name);
        let hdr_flag = if vnet_hdr.is_some() {
            libc::IFF_VNET_HDR
        } else {
            0
        };
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | hdr_flag) as i16;
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
        let name = ifreq_name(&ifr);
        let Some(hdr) = vnet_hdr else {
            return Ok(Tap { file, name });
        };
        let hdr = hdr as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr) };
        if r < 0 {
            return Err(TapError::Io {
                name,
                op: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap { file, name })
    }

    /// The interface name (what the kernel made of a `%d` pattern).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap queue file: what userspace reads and writes, and what vhost-net takes as its
    /// backend.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn io_err(&self, op: &'static str) -> impl FnOnce(io::Error) -> TapError + '_ {
        move |source| TapError::Io {
            name: self.name.clone(),
            op,
            source,
        }
    }

    fn control_socket(&self) -> Result<OwnedFd, TapError> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(self.io_err("socket(AF_INET) for interface ioctls")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh socket we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Disables IPv6 on the interface (so the stack sends no router solicitations of its own
    /// into the frames under test; best effort) and brings it up (`SIOCSIFFLAGS`, IFF_UP).
    pub fn set_up(&self) -> Result<(), TapError> {
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.name),
            "1",
        );
        let ctl = self.control_socket()?;
        let mut ifr = ifreq(&self.name);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq that outlives the calls.
        unsafe {
            if libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
                return Err(self.io_err("SIOCGIFFLAGS")(io::Error::last_os_error()));
            }
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr) < 0 {
                return Err(self.io_err("SIOCSIFFLAGS (up)")(io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    /// `SIOCSIFMTU`: the interface's MTU (frames longer than 1500 bytes through it need
    /// a larger one).
    pub fn set_mtu(&self, mtu: i32) -> Result<(), TapError> {
        let ctl = self.control_socket()?;
        let mut ifr = ifreq(&self.name);
        ifr.ifr_ifru.ifru_mtu = mtu;
        // SAFETY: SIOCSIFMTU reads one ifreq that outlives the call.
        if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFMTU, &ifr) } < 0 {
            return Err(self.io_err("SIOCSIFMTU")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `TUNSETOFFLOAD`: which offloads the tap may hand to its reader (`libc::TUN_F_CSUM`,
    /// `TUN_F_TSO4`, `TUN_F_TSO6`): partially checksummed frames and TCP segments up to 64 KiB
    /// with the matching vnet header. 0 (the default) gives only whole, checksummed frames.
    /// What the reader writes may carry offloads regardless (the tap always accepts them).
    pub fn set_offloads(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(self.io_err("TUNSETOFFLOAD")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `TUNSETSNDBUF`: a finite send buffer (the default is unlimited, which lets vhost-net
    /// batch its TX frames as XDP buffers; a finite one makes it send them one by one).
    pub fn set_sndbuf(&self, bytes: libc::c_int) -> Result<(), TapError> {
        // SAFETY: TUNSETSNDBUF reads one int, which lives across the call.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETSNDBUF, &bytes) } < 0 {
            return Err(self.io_err("TUNSETSNDBUF")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The interface index (for AF_PACKET sockets bound to the tap).
    pub fn ifindex(&self) -> Result<i32, TapError> {
        let ctl = self.control_socket()?;
        let mut ifr = ifreq(&self.name);
        // SAFETY: SIOCGIFINDEX reads and writes one ifreq that outlives the call.
        if unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr) } < 0 {
            return Err(self.io_err("SIOCGIFINDEX")(io::Error::last_os_error()));
        }
        // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
        Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
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
        // 15 bytes is the longest legal name; patterns are names too.
        assert!(check_name("abcdefghijklmno").is_ok());
        assert!(check_name("kcovtap%d").is_ok());
    }

    #[test]
    fn pattern_names_come_back_resolved() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new(TUN_PATH).exists() {
            test_skip::skip(
                "pattern_names_come_back_resolved",
                test_skip::ROOT_TUN,
                format!("needs root and {TUN_PATH}"),
            );
            return;
        }
        let t = Tap::open("fet%d").unwrap();
        assert!(t.name().starts_with("fet"), "{}", t.name());
        assert!(!t.name().contains('%'), "{}", t.name());
        t.set_up().unwrap();
        assert!(t.ifindex().unwrap() > 0);
        t.set_offloads(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
            .unwrap();
        t.set_offloads(0).unwrap();
        // TSO without checksum offload is refused by the kernel.
        assert!(t.set_offloads(libc::TUN_F_TSO4).is_err());
        // Attaching a second fd to a tap that is held without IFF_MULTI_QUEUE is refused.
        let e = Tap::open(t.name()).unwrap_err();
        assert!(matches!(e, TapError::Busy(_)), "{e}");
    }
}
