//! The vhost uapi spelled out (`include/uapi/linux/vhost.h`, `vhost_types.h`): every ioctl
//! a frontend may make, including malformed ones, returning the kernel's errno unchanged.
//!
//! [`crate::vhost_net`] hands a well-formed device over through the rust-vmm `vhost` crate;
//! the breadth workloads need what that crate does not offer or hides: the exact errno of a
//! refused ioctl, rings whose addresses or sizes are wrong on purpose, the dirty log, the
//! worker ioctls (`VHOST_NEW_WORKER`, `VHOST_FREE_WORKER`, `VHOST_ATTACH_VRING_WORKER`,
//! `VHOST_GET_VRING_WORKER`: in 6.12 only vhost-scsi passes them on) and the fork-owner ones,
//! vhost-scsi's own ioctls, and the IOTLB message stream read from and written to the device
//! fd.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

const VHOST_VIRTIO: u32 = 0xaf;

const fn ioc(dir: u32, nr: u32, size: usize) -> u64 {
    ((dir << 30) | ((size as u32) << 16) | (VHOST_VIRTIO << 8) | nr) as u64
}
const fn io_(nr: u32) -> u64 {
    ioc(0, nr, 0)
}
const fn iow(nr: u32, size: usize) -> u64 {
    ioc(1, nr, size)
}
const fn ior(nr: u32, size: usize) -> u64 {
    ioc(2, nr, size)
}
const fn iowr(nr: u32, size: usize) -> u64 {
    ioc(3, nr, size)
}

/// `struct vhost_vring_state` / `vhost_worker_state`-sized pairs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VringState {
    /// Queue index.
    pub index: u32,
    /// The value (size, base, timeout, worker id, endianness).
    pub num: u32,
}

/// `struct vhost_vring_file`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VringFile {
    /// Queue index.
    pub index: u32,
    /// The fd (-1: unbind).
    pub fd: i32,
}

/// `struct vhost_vring_addr`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VringAddr {
    /// Queue index.
    pub index: u32,
    /// `1 << VHOST_VRING_F_LOG`: log writes to the used ring at `log_guest_addr`.
    pub flags: u32,
    /// Descriptor table.
    pub desc: u64,
    /// Used ring.
    pub used: u64,
    /// Available ring.
    pub avail: u64,
    /// Guest address of the used ring, for the dirty log.
    pub log_guest_addr: u64,
}

/// `struct vhost_memory_region`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MemRegion {
    /// Guest physical address.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Where it is mapped in the frontend.
    pub userspace_addr: u64,
    /// Must be 0.
    pub flags_padding: u64,
}

impl From<vhost::VhostUserMemoryRegionInfo> for MemRegion {
    /// The region of an arena (`Arena::region_info`), flags 0.
    fn from(info: vhost::VhostUserMemoryRegionInfo) -> MemRegion {
        MemRegion {
            guest_phys_addr: info.guest_phys_addr,
            memory_size: info.memory_size,
            userspace_addr: info.userspace_addr,
            flags_padding: 0,
        }
    }
}

/// `struct vhost_iotlb_msg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IotlbMsg {
    /// I/O virtual address.
    pub iova: u64,
    /// Size in bytes.
    pub size: u64,
    /// Frontend address it maps to.
    pub uaddr: u64,
    /// [`ACCESS_RO`], [`ACCESS_WO`], [`ACCESS_RW`].
    pub perm: u8,
    /// [`IOTLB_MISS`], [`IOTLB_UPDATE`], ...
    pub kind: u8,
}

/// `struct vhost_msg_v2`: what the device fd reads and writes with
/// `VHOST_BACKEND_F_IOTLB_MSG_V2`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MsgV2 {
    /// [`IOTLB_MSG_V2`].
    pub kind: u32,
    /// Address space id.
    pub asid: u32,
    /// The IOTLB message.
    pub iotlb: IotlbMsg,
    _pad: [u8; 64 - std::mem::size_of::<IotlbMsg>()],
}

impl MsgV2 {
    /// An IOTLB message in address space 0.
    pub fn iotlb(iotlb: IotlbMsg) -> Self {
        MsgV2 {
            kind: IOTLB_MSG_V2,
            asid: 0,
            iotlb,
            _pad: [0; 64 - std::mem::size_of::<IotlbMsg>()],
        }
    }

    /// Its bytes.
    pub fn bytes(&self) -> [u8; std::mem::size_of::<MsgV2>()] {
        let mut out = [0u8; std::mem::size_of::<MsgV2>()];
        out[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        out[4..8].copy_from_slice(&self.asid.to_ne_bytes());
        let m = &self.iotlb;
        out[8..16].copy_from_slice(&m.iova.to_ne_bytes());
        out[16..24].copy_from_slice(&m.size.to_ne_bytes());
        out[24..32].copy_from_slice(&m.uaddr.to_ne_bytes());
        out[32] = m.perm;
        out[33] = m.kind;
        out
    }

    /// Parses the bytes the device fd gave; `None` when too short.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < std::mem::size_of::<MsgV2>() {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let mut m = MsgV2::iotlb(IotlbMsg {
            iova: u64_at(8),
            size: u64_at(16),
            uaddr: u64_at(24),
            perm: b[32],
            kind: b[33],
        });
        m.kind = u32_at(0);
        m.asid = u32_at(4);
        Some(m)
    }
}

/// `VHOST_IOTLB_MSG_V2`: the message type of [`MsgV2`].
pub const IOTLB_MSG_V2: u32 = 2;
/// Read-only access.
pub const ACCESS_RO: u8 = 1;
/// Write-only access.
pub const ACCESS_WO: u8 = 2;
/// Read-write access.
pub const ACCESS_RW: u8 = 3;
/// The device asks for a translation.
pub const IOTLB_MISS: u8 = 1;
/// The frontend adds a translation.
pub const IOTLB_UPDATE: u8 = 2;
/// The frontend removes translations.
pub const IOTLB_INVALIDATE: u8 = 3;
/// `VHOST_BACKEND_F_IOTLB_MSG_V2` (a bit number).
pub const BACKEND_F_IOTLB_MSG_V2: u64 = 1 << 1;
/// `VHOST_F_LOG_ALL` (a bit number).
pub const F_LOG_ALL: u32 = 26;
/// `VHOST_NET_F_VIRTIO_NET_HDR` (a bit number): vhost handles the virtio-net header.
pub const NET_F_VIRTIO_NET_HDR: u32 = 27;
/// `VIRTIO_F_ACCESS_PLATFORM` (a bit number): ring and buffer addresses are IOVAs.
pub const F_ACCESS_PLATFORM: u32 = 33;
/// `VHOST_VRING_F_LOG` as a flag of [`VringAddr::flags`].
pub const VRING_F_LOG: u32 = 1;
/// `VHOST_FORK_OWNER_KTHREAD`: the worker is a kthread (argument of `VHOST_SET_FORK_FROM_OWNER`).
pub const FORK_OWNER_KTHREAD: u8 = 0;
/// `VHOST_SCSI_ABI_VERSION`: what `VHOST_SCSI_GET_ABI_VERSION` answers.
pub const SCSI_ABI_VERSION: i32 = 1;
/// `TRANSPORT_IQN_LEN`: the size of [`ScsiTarget::vhost_wwpn`].
pub const SCSI_WWPN_LEN: usize = 224;

/// `struct vhost_scsi_target`: the argument of `VHOST_SCSI_SET_ENDPOINT` /
/// `VHOST_SCSI_CLEAR_ENDPOINT`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ScsiTarget {
    /// Ignored by the kernel (ABI 1).
    pub abi_version: i32,
    /// The target port's WWPN, NUL-terminated (`naa.…` as named in configfs).
    pub vhost_wwpn: [u8; SCSI_WWPN_LEN],
    /// Target portal group tag (ignored since ABI 1).
    pub vhost_tpgt: u16,
    /// Must be 0.
    pub reserved: u16,
}

impl ScsiTarget {
    /// A target naming `wwpn` (cut to fit, NUL-terminated).
    pub fn new(wwpn: &str) -> Self {
        let mut t = ScsiTarget {
            abi_version: SCSI_ABI_VERSION,
            vhost_wwpn: [0; SCSI_WWPN_LEN],
            vhost_tpgt: 0,
            reserved: 0,
        };
        let n = wwpn.len().min(SCSI_WWPN_LEN - 1);
        t.vhost_wwpn[..n].copy_from_slice(&wwpn.as_bytes()[..n]);
        t
    }
}

/// The ioctl numbers (x86_64).
pub mod nr {
    use super::*;
    /// `VHOST_GET_FEATURES`.
    pub const GET_FEATURES: u64 = ior(0x00, 8);
    /// `VHOST_SET_FEATURES`.
    pub const SET_FEATURES: u64 = iow(0x00, 8);
    /// `VHOST_SET_OWNER`.
    pub const SET_OWNER: u64 = io_(0x01);
    /// `VHOST_RESET_OWNER`.
    pub const RESET_OWNER: u64 = io_(0x02);
    /// `VHOST_SET_MEM_TABLE` (`struct vhost_memory`, 8 bytes before the regions).
    pub const SET_MEM_TABLE: u64 = iow(0x03, 8);
    /// `VHOST_SET_LOG_BASE`.
    pub const SET_LOG_BASE: u64 = iow(0x04, 8);
    /// `VHOST_SET_LOG_FD`.
    pub const SET_LOG_FD: u64 = iow(0x07, 4);
    /// `VHOST_SET_VRING_NUM`.
    pub const SET_VRING_NUM: u64 = iow(0x10, 8);
    /// `VHOST_SET_VRING_ADDR`.
    pub const SET_VRING_ADDR: u64 = iow(0x11, 40);
    /// `VHOST_SET_VRING_BASE`.
    pub const SET_VRING_BASE: u64 = iow(0x12, 8);
    /// `VHOST_GET_VRING_BASE`.
    pub const GET_VRING_BASE: u64 = iowr(0x12, 8);
    /// `VHOST_SET_VRING_ENDIAN`.
    pub const SET_VRING_ENDIAN: u64 = iow(0x13, 8);
    /// `VHOST_GET_VRING_ENDIAN` (an `_IOW` in the uapi, though it writes back).
    pub const GET_VRING_ENDIAN: u64 = iow(0x14, 8);
    /// `VHOST_SET_VRING_KICK`.
    pub const SET_VRING_KICK: u64 = iow(0x20, 8);
    /// `VHOST_SET_VRING_CALL`.
    pub const SET_VRING_CALL: u64 = iow(0x21, 8);
    /// `VHOST_SET_VRING_ERR`.
    pub const SET_VRING_ERR: u64 = iow(0x22, 8);
    /// `VHOST_SET_VRING_BUSYLOOP_TIMEOUT`.
    pub const SET_VRING_BUSYLOOP_TIMEOUT: u64 = iow(0x23, 8);
    /// `VHOST_GET_VRING_BUSYLOOP_TIMEOUT` (an `_IOW` in the uapi, though it writes back).
    pub const GET_VRING_BUSYLOOP_TIMEOUT: u64 = iow(0x24, 8);
    /// `VHOST_SET_BACKEND_FEATURES`.
    pub const SET_BACKEND_FEATURES: u64 = iow(0x25, 8);
    /// `VHOST_GET_BACKEND_FEATURES`.
    pub const GET_BACKEND_FEATURES: u64 = ior(0x26, 8);
    /// `VHOST_NET_SET_BACKEND`.
    pub const NET_SET_BACKEND: u64 = iow(0x30, 8);
    /// `VHOST_SET_FORK_FROM_OWNER` (Debian 6.12 has it, `CONFIG_VHOST_ENABLE_FORK_OWNER_CONTROL`).
    pub const SET_FORK_FROM_OWNER: u64 = iow(0x84, 1);
    /// `VHOST_GET_FORK_FROM_OWNER`.
    pub const GET_FORK_FROM_OWNER: u64 = ior(0x85, 1);
    /// `VHOST_NEW_WORKER` (`struct vhost_worker_state`, 4 bytes, written back).
    pub const NEW_WORKER: u64 = ior(0x08, 4);
    /// `VHOST_FREE_WORKER` (`struct vhost_worker_state`).
    pub const FREE_WORKER: u64 = iow(0x09, 4);
    /// `VHOST_ATTACH_VRING_WORKER` (`struct vhost_vring_worker`: index, worker id).
    pub const ATTACH_VRING_WORKER: u64 = iow(0x15, 8);
    /// `VHOST_GET_VRING_WORKER` (`struct vhost_vring_worker`, written back).
    pub const GET_VRING_WORKER: u64 = iowr(0x16, 8);
    /// `VHOST_SCSI_SET_ENDPOINT` (`struct vhost_scsi_target`, 232 bytes).
    pub const SCSI_SET_ENDPOINT: u64 = iow(0x40, 232);
    /// `VHOST_SCSI_CLEAR_ENDPOINT`.
    pub const SCSI_CLEAR_ENDPOINT: u64 = iow(0x41, 232);
    /// `VHOST_SCSI_GET_ABI_VERSION` (an `_IOW` in the uapi, though it writes back).
    pub const SCSI_GET_ABI_VERSION: u64 = iow(0x42, 4);
    /// `VHOST_SCSI_SET_EVENTS_MISSED`.
    pub const SCSI_SET_EVENTS_MISSED: u64 = iow(0x43, 4);
    /// `VHOST_SCSI_GET_EVENTS_MISSED` (an `_IOW` in the uapi, though it writes back).
    pub const SCSI_GET_EVENTS_MISSED: u64 = iow(0x44, 4);
}

/// An open vhost device fd, driven ioctl by ioctl. Errors are the kernel's errno.
#[derive(Debug)]
pub struct RawVhost {
    file: File,
}

/// The errno of a failed call (`None`: it succeeded or failed without one).
pub fn errno_of<T>(r: &io::Result<T>) -> Option<i32> {
    r.as_ref().err().and_then(io::Error::raw_os_error)
}

impl RawVhost {
    /// Opens `path` (`/dev/vhost-net`, `/dev/vhost-vsock`) read-write, non-blocking.
    pub fn open(path: &str) -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(RawVhost { file })
    }

    /// A second handle on the open device behind `fd` (a `dup`): ioctls through it act on the
    /// same device, and dropping it leaves the device open.
    pub fn dup_of(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Self> {
        Ok(RawVhost {
            file: File::from(fd.try_clone_to_owned()?),
        })
    }

    /// The fd.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// `ioctl(fd, req, arg)` with a pointer argument; the return value on success.
    ///
    /// # Safety
    /// `arg` must point to memory of the size and direction `req` encodes (or be a plain
    /// integer for requests that take one).
    pub unsafe fn ioctl_ptr(&self, req: u64, arg: *mut libc::c_void) -> io::Result<i32> {
        // SAFETY: the caller vouches for arg; the fd is ours and open.
        let r = unsafe { libc::ioctl(self.fd(), req as libc::c_ulong, arg) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r)
    }

    fn ioctl_in<T>(&self, req: u64, v: &T) -> io::Result<()> {
        // SAFETY: v is a live T of the size req encodes; the kernel only reads it.
        unsafe { self.ioctl_ptr(req, (v as *const T).cast_mut().cast()) }.map(drop)
    }

    fn ioctl_inout<T>(&self, req: u64, v: &mut T) -> io::Result<()> {
        // SAFETY: v is a live, writable T of the size req encodes.
        unsafe { self.ioctl_ptr(req, (v as *mut T).cast()) }.map(drop)
    }

    /// `VHOST_SET_OWNER`.
    pub fn set_owner(&self) -> io::Result<()> {
        // SAFETY: VHOST_SET_OWNER takes no argument.
        unsafe { self.ioctl_ptr(nr::SET_OWNER, std::ptr::null_mut()) }.map(drop)
    }

    /// `VHOST_RESET_OWNER`.
    pub fn reset_owner(&self) -> io::Result<()> {
        // SAFETY: VHOST_RESET_OWNER takes no argument.
        unsafe { self.ioctl_ptr(nr::RESET_OWNER, std::ptr::null_mut()) }.map(drop)
    }

    /// `VHOST_GET_FEATURES`.
    pub fn get_features(&self) -> io::Result<u64> {
        let mut f = 0u64;
        self.ioctl_inout(nr::GET_FEATURES, &mut f)?;
        Ok(f)
    }

    /// `VHOST_SET_FEATURES`.
    pub fn set_features(&self, f: u64) -> io::Result<()> {
        self.ioctl_in(nr::SET_FEATURES, &f)
    }

    /// `VHOST_GET_BACKEND_FEATURES`.
    pub fn get_backend_features(&self) -> io::Result<u64> {
        let mut f = 0u64;
        self.ioctl_inout(nr::GET_BACKEND_FEATURES, &mut f)?;
        Ok(f)
    }

    /// `VHOST_SET_BACKEND_FEATURES`.
    pub fn set_backend_features(&self, f: u64) -> io::Result<()> {
        self.ioctl_in(nr::SET_BACKEND_FEATURES, &f)
    }

    /// `VHOST_SET_MEM_TABLE` with `regions` and the header's `padding` word (0 is valid).
    pub fn set_mem_table_raw(&self, regions: &[MemRegion], padding: u32) -> io::Result<()> {
        let mut buf: Vec<u64> = Vec::with_capacity(1 + 4 * regions.len());
        buf.push(u64::from(regions.len() as u32) | (u64::from(padding) << 32));
        for r in regions {
            buf.extend([
                r.guest_phys_addr,
                r.memory_size,
                r.userspace_addr,
                r.flags_padding,
            ]);
        }
        // SAFETY: buf holds the header and every region the header counts.
        unsafe { self.ioctl_ptr(nr::SET_MEM_TABLE, buf.as_mut_ptr().cast()) }.map(drop)
    }

    /// `VHOST_SET_MEM_TABLE`.
    pub fn set_mem_table(&self, regions: &[MemRegion]) -> io::Result<()> {
        self.set_mem_table_raw(regions, 0)
    }

    /// `VHOST_SET_LOG_BASE`.
    pub fn set_log_base(&self, base: u64) -> io::Result<()> {
        self.ioctl_in(nr::SET_LOG_BASE, &base)
    }

    /// `VHOST_SET_LOG_FD` (-1: none).
    pub fn set_log_fd(&self, fd: i32) -> io::Result<()> {
        self.ioctl_in(nr::SET_LOG_FD, &fd)
    }

    /// `VHOST_SET_VRING_NUM`.
    pub fn set_vring_num(&self, index: u32, num: u32) -> io::Result<()> {
        self.ioctl_in(nr::SET_VRING_NUM, &VringState { index, num })
    }

    /// `VHOST_SET_VRING_ADDR`.
    pub fn set_vring_addr(&self, a: &VringAddr) -> io::Result<()> {
        self.ioctl_in(nr::SET_VRING_ADDR, a)
    }

    /// `VHOST_SET_VRING_BASE`.
    pub fn set_vring_base(&self, index: u32, num: u32) -> io::Result<()> {
        self.ioctl_in(nr::SET_VRING_BASE, &VringState { index, num })
    }

    /// `VHOST_GET_VRING_BASE`.
    pub fn get_vring_base(&self, index: u32) -> io::Result<u32> {
        let mut s = VringState { index, num: 0 };
        self.ioctl_inout(nr::GET_VRING_BASE, &mut s)?;
        Ok(s.num)
    }

    /// `VHOST_SET_VRING_ENDIAN`.
    pub fn set_vring_endian(&self, index: u32, big: bool) -> io::Result<()> {
        let num = u32::from(big);
        self.ioctl_in(nr::SET_VRING_ENDIAN, &VringState { index, num })
    }

    /// `VHOST_GET_VRING_ENDIAN`.
    pub fn get_vring_endian(&self, index: u32) -> io::Result<u32> {
        let mut s = VringState { index, num: 0 };
        self.ioctl_inout(nr::GET_VRING_ENDIAN, &mut s)?;
        Ok(s.num)
    }

    fn vring_file(&self, req: u64, index: u32, fd: i32) -> io::Result<()> {
        self.ioctl_in(req, &VringFile { index, fd })
    }

    /// `VHOST_SET_VRING_KICK` (-1: unbind).
    pub fn set_vring_kick(&self, index: u32, fd: i32) -> io::Result<()> {
        self.vring_file(nr::SET_VRING_KICK, index, fd)
    }

    /// `VHOST_SET_VRING_CALL` (-1: unbind).
    pub fn set_vring_call(&self, index: u32, fd: i32) -> io::Result<()> {
        self.vring_file(nr::SET_VRING_CALL, index, fd)
    }

    /// `VHOST_SET_VRING_ERR` (-1: unbind): vhost signals it on every ring error (`vq_err`).
    pub fn set_vring_err(&self, index: u32, fd: i32) -> io::Result<()> {
        self.vring_file(nr::SET_VRING_ERR, index, fd)
    }

    /// `VHOST_SET_VRING_BUSYLOOP_TIMEOUT` in microseconds.
    pub fn set_busyloop_timeout(&self, index: u32, us: u32) -> io::Result<()> {
        self.ioctl_in(
            nr::SET_VRING_BUSYLOOP_TIMEOUT,
            &VringState { index, num: us },
        )
    }

    /// `VHOST_GET_VRING_BUSYLOOP_TIMEOUT`.
    pub fn get_busyloop_timeout(&self, index: u32) -> io::Result<u32> {
        let mut s = VringState { index, num: 0 };
        self.ioctl_inout(nr::GET_VRING_BUSYLOOP_TIMEOUT, &mut s)?;
        Ok(s.num)
    }

    /// `VHOST_NET_SET_BACKEND` (-1: detach).
    pub fn net_set_backend(&self, index: u32, fd: i32) -> io::Result<()> {
        self.vring_file(nr::NET_SET_BACKEND, index, fd)
    }

    /// `VHOST_SET_FORK_FROM_OWNER`.
    pub fn set_fork_from_owner(&self, v: u8) -> io::Result<()> {
        self.ioctl_in(nr::SET_FORK_FROM_OWNER, &v)
    }

    /// `VHOST_GET_FORK_FROM_OWNER`.
    pub fn get_fork_from_owner(&self) -> io::Result<u8> {
        let mut v = 0u8;
        self.ioctl_inout(nr::GET_FORK_FROM_OWNER, &mut v)?;
        Ok(v)
    }

    /// `VHOST_NEW_WORKER`: the new worker's id.
    pub fn new_worker(&self) -> io::Result<u32> {
        let mut id = u32::MAX;
        self.ioctl_inout(nr::NEW_WORKER, &mut id)?;
        Ok(id)
    }

    /// `VHOST_FREE_WORKER` of worker `id`.
    pub fn free_worker(&self, id: u32) -> io::Result<()> {
        self.ioctl_in(nr::FREE_WORKER, &id)
    }

    /// `VHOST_ATTACH_VRING_WORKER`: queue `index` is served by worker `id` from now on.
    pub fn attach_vring_worker(&self, index: u32, id: u32) -> io::Result<()> {
        self.ioctl_in(nr::ATTACH_VRING_WORKER, &VringState { index, num: id })
    }

    /// `VHOST_GET_VRING_WORKER`: what the kernel writes back (`index` and the worker id in
    /// `num`), unchanged, so that a caller can check both.
    pub fn get_vring_worker(&self, index: u32) -> io::Result<VringState> {
        let mut s = VringState {
            index,
            num: u32::MAX,
        };
        self.ioctl_inout(nr::GET_VRING_WORKER, &mut s)?;
        Ok(s)
    }

    /// `VHOST_SCSI_SET_ENDPOINT`.
    pub fn scsi_set_endpoint(&self, t: &ScsiTarget) -> io::Result<()> {
        self.ioctl_in(nr::SCSI_SET_ENDPOINT, t)
    }

    /// `VHOST_SCSI_CLEAR_ENDPOINT`.
    pub fn scsi_clear_endpoint(&self, t: &ScsiTarget) -> io::Result<()> {
        self.ioctl_in(nr::SCSI_CLEAR_ENDPOINT, t)
    }

    /// `VHOST_SCSI_GET_ABI_VERSION`.
    pub fn scsi_abi_version(&self) -> io::Result<i32> {
        let mut v = -1i32;
        self.ioctl_inout(nr::SCSI_GET_ABI_VERSION, &mut v)?;
        Ok(v)
    }

    /// `VHOST_SCSI_SET_EVENTS_MISSED`.
    pub fn scsi_set_events_missed(&self, v: u32) -> io::Result<()> {
        self.ioctl_in(nr::SCSI_SET_EVENTS_MISSED, &v)
    }

    /// `VHOST_SCSI_GET_EVENTS_MISSED`.
    pub fn scsi_events_missed(&self) -> io::Result<u32> {
        let mut v = u32::MAX;
        self.ioctl_inout(nr::SCSI_GET_EVENTS_MISSED, &mut v)?;
        Ok(v)
    }

    /// Writes one IOTLB message to the device fd (`vhost_chr_write_iter`).
    pub fn write_msg(&self, m: &MsgV2) -> io::Result<usize> {
        let b = m.bytes();
        // SAFETY: b is a valid buffer of b.len() bytes.
        let n = unsafe { libc::write(self.fd(), b.as_ptr().cast(), b.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Reads one message from the device fd (`vhost_chr_read_iter`); `Ok(None)` when none
    /// is queued (the fd is non-blocking).
    pub fn read_msg(&self) -> io::Result<Option<MsgV2>> {
        let mut b = [0u8; std::mem::size_of::<MsgV2>()];
        // SAFETY: b is a writable buffer of b.len() bytes.
        let n = unsafe { libc::read(self.fd(), b.as_mut_ptr().cast(), b.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        MsgV2::parse(&b[..n as usize])
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{n}-byte message")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_checked_ones() {
        // KERNEL-FACTS.md, compiled against the Debian 6.12 headers.
        assert_eq!(nr::GET_FEATURES, 0x8008af00);
        assert_eq!(nr::SET_FEATURES, 0x4008af00);
        assert_eq!(nr::SET_OWNER, 0xaf01);
        assert_eq!(nr::SET_MEM_TABLE, 0x4008af03);
        assert_eq!(nr::SET_VRING_NUM, 0x4008af10);
        assert_eq!(nr::SET_VRING_ADDR, 0x4028af11);
        assert_eq!(nr::SET_VRING_BASE, 0x4008af12);
        assert_eq!(nr::SET_VRING_KICK, 0x4008af20);
        assert_eq!(nr::SET_VRING_CALL, 0x4008af21);
        assert_eq!(nr::NET_SET_BACKEND, 0x4008af30);
        // The rest follow the same _IOC rule.
        assert_eq!(nr::GET_VRING_BASE, 0xc008af12);
        assert_eq!(nr::RESET_OWNER, 0xaf02);
        assert_eq!(nr::SET_VRING_ERR, 0x4008af22);
        assert_eq!(nr::SET_FORK_FROM_OWNER, 0x4001af84);
        // Compiled against the 6.12 uapi headers (include/uapi/linux/vhost.h), KERNEL-FACTS.md.
        assert_eq!(nr::NEW_WORKER, 0x8004af08);
        assert_eq!(nr::FREE_WORKER, 0x4004af09);
        assert_eq!(nr::ATTACH_VRING_WORKER, 0x4008af15);
        assert_eq!(nr::GET_VRING_WORKER, 0xc008af16);
        assert_eq!(nr::SCSI_SET_ENDPOINT, 0x40e8af40);
        assert_eq!(nr::SCSI_CLEAR_ENDPOINT, 0x40e8af41);
        assert_eq!(nr::SCSI_GET_ABI_VERSION, 0x4004af42);
        assert_eq!(nr::SCSI_SET_EVENTS_MISSED, 0x4004af43);
        assert_eq!(nr::SCSI_GET_EVENTS_MISSED, 0x4004af44);
        assert_eq!(std::mem::size_of::<ScsiTarget>(), 232);
        assert_eq!(std::mem::size_of::<VringAddr>(), 40);
        assert_eq!(std::mem::size_of::<MsgV2>(), 72);
        assert_eq!(std::mem::size_of::<MemRegion>(), 32);
    }

    #[test]
    fn messages_round_trip() {
        let m = MsgV2::iotlb(IotlbMsg {
            iova: 0x1000,
            size: 0x2000,
            uaddr: 0x7f00_0000_0000,
            perm: ACCESS_RW,
            kind: IOTLB_UPDATE,
        });
        let b = m.bytes();
        let back = MsgV2::parse(&b).unwrap();
        assert_eq!((back.kind, back.asid, back.iotlb), (2, 0, m.iotlb));
        assert!(MsgV2::parse(&b[..40]).is_none());
    }
}
