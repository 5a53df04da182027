//! Network interfaces by name: the `ifreq` every interface ioctl takes, bringing a link up
//! and giving it an IPv4 address (the nested runner's L1 end of a guest's tap).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An `ifreq` naming `name` (truncated to IFNAMSIZ - 1 bytes; check names first with
/// [`crate::tap::check_name`]).
pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let max = ifr.ifr_name.len() - 1;
    for (d, s) in ifr.ifr_name.iter_mut().take(max).zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr
}

/// An AF_INET datagram socket for interface ioctls.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; sockaddr is plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The netmask of a prefix length (0..=32).
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0))
}

/// Gives `name` the address `addr/prefix` (`SIOCSIFADDR`, `SIOCSIFNETMASK`) and brings it up.
/// The error names the failing call.
pub fn set_ipv4_up(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let named = |op: &str, e: io::Error| io::Error::new(e.kind(), format!("{name}: {op}: {e}"));
    let ctl = control_socket().map_err(|e| named("socket(AF_INET)", e))?;
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: each ioctl reads or writes one ifreq that outlives the call.
    unsafe {
        if libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFADDR, &ifr) < 0 {
            return Err(named("SIOCSIFADDR", io::Error::last_os_error()));
        }
        ifr.ifr_ifru.ifru_netmask = sockaddr_in(netmask(prefix));
        if libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFNETMASK, &ifr) < 0 {
            return Err(named("SIOCSIFNETMASK", io::Error::last_os_error()));
        }
        if libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(named("SIOCGIFFLAGS", io::Error::last_os_error()));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(named("SIOCSIFFLAGS (up)", io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(99), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn long_names_are_truncated_not_overrun() {
        let ifr = ifreq("a-very-long-interface-name");
        assert_eq!(ifr.ifr_name[ifr.ifr_name.len() - 1], 0);
    }

    #[test]
    fn missing_interface_is_named() {
        let e = set_ipv4_up("nosuchif0", Ipv4Addr::new(10, 9, 9, 1), 24).unwrap_err();
        assert!(e.to_string().contains("nosuchif0"), "{e}");
    }
}
