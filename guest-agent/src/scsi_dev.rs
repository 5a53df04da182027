//! What the vhost-scsi workloads (`scsi_workers.rs`, `scsi_control.rs`) share: the device
//! node and its queues, the SCSI target in configfs (an `rd_mcp` ramdisk as LUN 0 of a
//! `tcm_vhost` port with a nexus), one queue's split ring driven descriptor by descriptor
//! with its kick and error eventfds, and the virtio-scsi request and response layouts
//! (`include/uapi/linux/virtio_scsi.h`).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use frontends::vhost_raw::{RawVhost, VringAddr};
use frontends::vring::{Arena, Desc, DriverRing};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::net::{sys, NetError};
use crate::rawnet::{expect_errno, expect_ok, fail};

/// The vhost-scsi device node.
pub const VHOST_SCSI_PATH: &str = "/dev/vhost-scsi";
/// The control queue (`VHOST_SCSI_VQ_CTL`).
pub const CTL_VQ: u32 = 0;
/// The event queue (`VHOST_SCSI_VQ_EVT`).
pub const EVT_VQ: u32 = 1;
/// The control and event queues before the I/O queues (`VHOST_SCSI_VQ_IO`).
pub const FIRST_IO_VQ: u32 = 2;
/// A device-writable descriptor.
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// Opens `/dev/vhost-scsi`.
pub fn open() -> Result<RawVhost, NetError> {
    RawVhost::open(VHOST_SCSI_PATH).map_err(sys(format!("open {VHOST_SCSI_PATH}")))
}

/// configfs, where the SCSI target is configured.
pub const CONFIGFS: &str = "/sys/kernel/config";
/// The vhost fabric's target port (`tcm_vhost`) the device's endpoint names.
pub const TARGET_WWPN: &str = "naa.5001405dead0001";
/// The initiator port of the target portal group's nexus.
pub const INITIATOR_WWPN: &str = "naa.5001405dead0002";
/// The target portal group tag: byte 1 of a virtio-scsi LUN selects it.
pub const TPGT: u8 = 1;
/// Pages of the `rd_mcp` ramdisk behind LUN 0.
const RD_PAGES: u32 = 16;
/// Block size of the ramdisk (`rd_mcp` default).
pub const BLOCK: usize = 512;
/// `struct virtio_scsi_cmd_req` (no T10 PI): lun[8], tag, task_attr, prio, crn, cdb[32].
pub const REQ_LEN: usize = 51;
/// `struct virtio_scsi_cmd_resp`: sense_len, resid, status_qualifier, status, response,
/// sense[96].
pub const RESP_LEN: usize = 108;
/// `VIRTIO_SCSI_S_OK`.
pub const S_OK: u8 = 0;
/// `VIRTIO_SCSI_S_BAD_TARGET`.
pub const S_BAD_TARGET: u8 = 3;
/// `SAM_STAT_GOOD`.
pub const STAT_GOOD: u8 = 0;

/// The configfs paths of the target, created in this order and removed in reverse.
pub struct Target {
    fabric: String,
    hba: String,
    disk: String,
    tport: String,
    /// The target portal group (`tpgt_1`): `nexus`, `attrib/`, `lun/`.
    pub tpg: String,
    lun: String,
    link: String,
}

impl Target {
    fn paths() -> Target {
        let hba = format!("{CONFIGFS}/target/core/rd_mcp_0");
        let disk = format!("{hba}/disk0");
        let fabric = format!("{CONFIGFS}/target/vhost");
        let tport = format!("{fabric}/{TARGET_WWPN}");
        let tpg = format!("{tport}/tpgt_{TPGT}");
        let lun = format!("{tpg}/lun/lun_0");
        let link = format!("{lun}/disk0");
        Target {
            fabric,
            hba,
            disk,
            tport,
            tpg,
            lun,
            link,
        }
    }

    /// A ramdisk and a vhost target port with it as LUN 0 and a nexus: what
    /// `VHOST_SCSI_SET_ENDPOINT` looks for (`vhost_scsi_make_tport`, `_make_tpg`,
    /// `_port_link`, `_tpg_nexus_store` run here).
    pub fn create() -> Result<Target, NetError> {
        // SAFETY: mount(2) with NUL-terminated strings; EBUSY: already mounted.
        let r = unsafe {
            libc::mount(
                c"configfs".as_ptr(),
                c"/sys/kernel/config".as_ptr(),
                c"configfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                return Err(sys("mount configfs")(e));
            }
        }
        let t = Target::paths();
        let made = t.make();
        if made.is_err() {
            t.remove_what_is_there();
        }
        made.map(|()| t)
    }

    fn make(&self) -> Result<(), NetError> {
        let t = self;
        let mkdir = |p: &str| std::fs::create_dir(p).map_err(sys(format!("mkdir {p}")));
        let write = |p: String, v: &str| std::fs::write(&p, v).map_err(sys(format!("{p} <- {v}")));
        mkdir(&t.hba)?;
        mkdir(&t.disk)?;
        write(
            format!("{}/control", t.disk),
            &format!("rd_pages={RD_PAGES}"),
        )?;
        write(format!("{}/enable", t.disk), "1")?;
        // The vhost fabric's group appears when it is made (target_core_register_fabric).
        mkdir(&t.fabric)?;
        mkdir(&t.tport)?;
        mkdir(&t.tpg)?;
        mkdir(&t.lun)?;
        std::os::unix::fs::symlink(&t.disk, &t.link).map_err(sys(format!("ln -s {}", t.link)))?;
        write(format!("{}/nexus", t.tpg), INITIATOR_WWPN)
    }

    /// The configfs directory of LUN `lun` of the portal group.
    fn lun_dir(&self, lun: u16) -> String {
        format!("{}/lun/lun_{lun}", self.tpg)
    }

    /// Makes LUN `lun`'s directory (no device behind it yet).
    pub fn add_lun(&self, lun: u16) -> Result<(), NetError> {
        let d = self.lun_dir(lun);
        std::fs::create_dir(&d).map_err(sys(format!("mkdir {d}")))
    }

    /// Links the ramdisk as LUN `lun` (`vhost_scsi_port_link`, in this thread's syscall).
    pub fn link_lun(&self, lun: u16) -> Result<(), NetError> {
        let l = format!("{}/disk0", self.lun_dir(lun));
        std::os::unix::fs::symlink(&self.disk, &l).map_err(sys(format!("ln -s {l}")))
    }

    /// Unlinks LUN `lun`'s device (`vhost_scsi_port_unlink`).
    pub fn unlink_lun(&self, lun: u16) -> Result<(), NetError> {
        let l = format!("{}/disk0", self.lun_dir(lun));
        std::fs::remove_file(&l).map_err(sys(format!("rm {l}")))
    }

    /// Removes LUN `lun`'s (unlinked) directory.
    pub fn remove_lun(&self, lun: u16) -> Result<(), NetError> {
        let d = self.lun_dir(lun);
        std::fs::remove_dir(&d).map_err(sys(format!("rmdir {d}")))
    }

    /// The LUN directories other than LUN 0's (a workload's extra LUNs), links first.
    fn remove_extra_luns(&self) {
        let Ok(dir) = std::fs::read_dir(format!("{}/lun", self.tpg)) else {
            return;
        };
        for e in dir.flatten() {
            let p = e.path();
            if p.to_string_lossy() == self.lun {
                continue;
            }
            let _ = std::fs::remove_file(p.join("disk0"));
            let _ = std::fs::remove_dir(&p);
        }
    }

    /// The configfs directories [`create`](Self::create) made, in the order they can go.
    fn dirs_to_remove(&self) -> [&String; 6] {
        [
            &self.lun,
            &self.tpg,
            &self.tport,
            &self.fabric,
            &self.disk,
            &self.hba,
        ]
    }

    /// After a failure: removes whatever of the target exists, ignoring errors, so that the
    /// next run finds configfs as it was.
    pub fn remove_what_is_there(&self) {
        self.remove_extra_luns();
        let _ = std::fs::remove_file(&self.link);
        let _ = std::fs::write(format!("{}/nexus", self.tpg), "NULL");
        for d in self.dirs_to_remove() {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Everything [`create`](Self::create) made, in reverse. The nexus cannot go while the
    /// LUN is linked (`vhost_scsi_drop_nexus`: EBUSY, checked: one errno case), so the link
    /// goes first.
    pub fn remove(&self) -> Result<(), NetError> {
        let nexus = format!("{}/nexus", self.tpg);
        expect_errno(
            "dropping the nexus with a LUN linked",
            std::fs::write(&nexus, "NULL"),
            libc::EBUSY,
        )?;
        std::fs::remove_file(&self.link).map_err(sys(format!("rm {}", self.link)))?;
        std::fs::write(&nexus, "NULL").map_err(sys(format!("{nexus} <- NULL")))?;
        for d in self.dirs_to_remove() {
            std::fs::remove_dir(d).map_err(sys(format!("rmdir {d}")))?;
        }
        Ok(())
    }

    /// Runs `body` on a fresh target and removes the target whatever `body` returned
    /// (everything it left, on failure); `body`'s error comes first.
    pub fn with<T>(body: impl FnOnce(&Target) -> Result<T, NetError>) -> Result<T, NetError> {
        let target = Target::create()?;
        let r = body(&target);
        if r.is_err() {
            target.remove_extra_luns();
        }
        let removed = target.remove();
        if removed.is_err() {
            target.remove_what_is_there();
        }
        let v = r?;
        removed?;
        Ok(v)
    }
}

/// A virtio-scsi request header for LUN 0 of target `target`.
pub fn scsi_req(target: u8, tag: u64, cdb: &[u8]) -> [u8; REQ_LEN] {
    let mut r = [0u8; REQ_LEN];
    r[..8].copy_from_slice(&lun_bytes(target, 0));
    r[8..16].copy_from_slice(&tag.to_le_bytes());
    let n = cdb.len().min(32);
    r[19..19 + n].copy_from_slice(&cdb[..n]);
    r
}

/// A virtio-scsi LUN: byte 0 is 1, byte 1 the target, bytes 2-3 the LUN in flat addressing
/// (`0x4000 | lun`), the rest 0.
pub fn lun_bytes(target: u8, lun: u16) -> [u8; 8] {
    let l = (0x4000 | (lun & 0x3fff)).to_be_bytes();
    [1, target, l[0], l[1], 0, 0, 0, 0]
}

/// READ(10) / WRITE(10) of `blocks` at `lba`.
pub fn rw10(write: bool, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = if write { 0x2a } else { 0x28 };
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// `(response, status, resid, sense_len)` of a virtio-scsi response.
pub fn scsi_resp(b: &[u8; RESP_LEN]) -> (u8, u8, u32, u32) {
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    (b[11], b[10], u32_at(4), u32_at(0))
}

/// Writes `b` into the arena at `addr`.
pub fn arena_write(arena: &Arena, addr: u64, b: &[u8]) -> Result<(), NetError> {
    arena.write(addr, b).map_err(NetError::from)
}

/// Descriptors of one chain per slot.
const SLOT_DESCS: u16 = 4;

/// One queue of a vhost-scsi device: its split ring, kick and error eventfds. Chains are
/// written in slots of [`SLOT_DESCS`] descriptors, one slot per avail entry, reused once the
/// ring went round.
pub struct ScsiRing {
    /// The driver's view of the ring.
    pub ring: DriverRing,
    /// The queue's index.
    pub vq: u32,
    kick: EventFd,
    err: EventFd,
}

impl ScsiRing {
    /// A ring of `size` entries in `arena`, handed to `d` as queue `vq`:
    /// VHOST_SET_VRING_NUM, _ADDR, _BASE 0, _KICK, and _ERR when `with_err` (vhost signals
    /// the error eventfd on every `vq_err`).
    pub fn configure(
        d: &RawVhost,
        arena: &mut Arena,
        vq: u32,
        size: u16,
        with_err: bool,
    ) -> Result<ScsiRing, NetError> {
        let base = arena.alloc(4096, 4096)?;
        let ring = DriverRing::contiguous(base, size);
        expect_ok("VHOST_SET_VRING_NUM", d.set_vring_num(vq, size.into()))?;
        expect_ok(
            "VHOST_SET_VRING_ADDR",
            d.set_vring_addr(&VringAddr {
                index: vq,
                flags: 0,
                desc: ring.desc,
                used: ring.used,
                avail: ring.avail,
                log_guest_addr: 0,
            }),
        )?;
        expect_ok("VHOST_SET_VRING_BASE", d.set_vring_base(vq, 0))?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(sys("eventfd"))?;
        expect_ok(
            "VHOST_SET_VRING_KICK",
            d.set_vring_kick(vq, kick.as_raw_fd()),
        )?;
        let err = EventFd::new(EFD_NONBLOCK).map_err(sys("eventfd"))?;
        if with_err {
            expect_ok("VHOST_SET_VRING_ERR", d.set_vring_err(vq, err.as_raw_fd()))?;
        }
        Ok(ScsiRing {
            ring,
            vq,
            kick,
            err,
        })
    }

    /// Puts one chain, `(addr, len, flags)` per descriptor (NEXT added), in the next slot
    /// and publishes it; returns its head.
    pub fn post(&mut self, arena: &Arena, descs: &[(u64, u32, u16)]) -> Result<u16, NetError> {
        if descs.is_empty() || descs.len() > usize::from(SLOT_DESCS) {
            return Err(fail(
                "vhost-scsi ring",
                format!("{} descriptors in one chain", descs.len()),
            ));
        }
        let mem = arena.mem();
        let head = (self.ring.avail_idx() % (self.ring.size / SLOT_DESCS)) * SLOT_DESCS;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let idx = head + i as u16;
            self.ring.write_desc(
                &mem,
                None,
                idx,
                Desc {
                    addr,
                    len,
                    flags: if last { flags } else { flags | NEXT },
                    next: if last { 0 } else { idx + 1 },
                },
            )?;
        }
        self.ring.push_avail(&mem, head)?;
        Ok(head)
    }

    /// Kicks the queue.
    pub fn kick(&self) -> Result<(), NetError> {
        self.kick.write(1).map_err(sys("kick"))
    }

    /// The next used element, waited for up to `timeout`.
    pub fn wait_used(
        &mut self,
        arena: &Arena,
        case: &str,
        timeout: Duration,
    ) -> Result<(u32, u32), NetError> {
        let mem = arena.mem();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.ring.next_used(&mem)? {
                return Ok(u);
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    case,
                    format!("nothing used on queue {} within {timeout:?}", self.vq),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next used element must be `head` with length 0 (vhost-scsi always reports 0: the
    /// response says what was moved).
    pub fn expect_used(
        &mut self,
        arena: &Arena,
        case: &str,
        head: u16,
        timeout: Duration,
    ) -> Result<(), NetError> {
        let used = self.wait_used(arena, case, timeout)?;
        if used != (u32::from(head), 0) {
            return Err(fail(
                case,
                format!("used {used:?} on queue {}, expected ({head}, 0)", self.vq),
            ));
        }
        Ok(())
    }

    /// Nothing may be in the used ring now.
    pub fn expect_no_used(&self, arena: &Arena, case: &str) -> Result<(), NetError> {
        match self.ring.peek_used(&arena.mem())? {
            None => Ok(()),
            Some(u) => Err(fail(
                case,
                format!("used {u:?} on queue {}, expected nothing", self.vq),
            )),
        }
    }

    /// The `vq_err`s signalled since the last call (the error eventfd's count; 0 if none).
    pub fn take_errors(&self) -> Result<u64, NetError> {
        match self.err.read() {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(sys("reading the error eventfd")(e)),
        }
    }

    /// Exactly `want` `vq_err`s since the last call.
    pub fn expect_errors(&self, case: &str, want: u64) -> Result<(), NetError> {
        let got = self.take_errors()?;
        if got != want {
            return Err(fail(
                case,
                format!("{got} vq_err signals on queue {}, expected {want}", self.vq),
            ));
        }
        Ok(())
    }
}

const NEXT: u16 = VRING_DESC_F_NEXT as u16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_layout() {
        let r = scsi_req(1, 0x0102, &rw10(true, 8, 1));
        assert_eq!(&r[..8], &[1, 1, 0x40, 0, 0, 0, 0, 0]);
        assert_eq!(&r[8..16], &0x0102u64.to_le_bytes());
        assert_eq!(&r[19..29], &[0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0]);
        assert_eq!(lun_bytes(1, 1), [1, 1, 0x40, 1, 0, 0, 0, 0]);
        assert_eq!(lun_bytes(3, 0x1234), [1, 3, 0x52, 0x34, 0, 0, 0, 0]);
    }

    #[test]
    fn response_fields() {
        let mut b = [0u8; RESP_LEN];
        b[0] = 18;
        b[4] = 0x00;
        b[5] = 0x02;
        b[10] = 2;
        b[11] = 3;
        assert_eq!(scsi_resp(&b), (3, 2, 512, 18));
    }
}
