//! `vhost-scsi-control`: the vhost-scsi paths the I/O of `vhost-scsi-workers` does not take,
//! on a device whose endpoint is a target in configfs ([`Target`]), each answer checked
//! against what `drivers/vhost/scsi.c` (6.12) does:
//!
//! * the control queue: task management (`VIRTIO_SCSI_T_TMF`): LOGICAL_UNIT_RESET of LUN 0
//!   answered FUNCTION_SUCCEEDED, of a LUN that does not exist FUNCTION_REJECTED (the target
//!   answers TMR_LUN_DOES_NOT_EXIST), any other subtype FUNCTION_REJECTED at once, a target
//!   nobody configured, a LUN whose byte 0 is not 1 and a request shorter than
//!   `virtio_scsi_ctrl_tmf_req` BAD_TARGET; `VIRTIO_SCSI_T_AN_QUERY` / `_AN_SUBSCRIBE`
//!   answered OK with event_actual 0 (BAD_TARGET for a bad LUN); dropped without an answer
//!   (nothing in the used ring, the next request answered first): an unknown type, a type
//!   cut short, a response buffer smaller than the type's response;
//! * the event queue with VIRTIO_SCSI_F_HOTPLUG: linking and unlinking a LUN in configfs
//!   (`vhost_scsi_port_link`/`_unlink` → `vhost_scsi_do_plug`) puts a TRANSPORT_RESET event
//!   with reason RESCAN / REMOVED and the LUN's bytes into the posted buffer; without the
//!   feature nothing; with no buffer posted, or a buffer of the wrong size (dropped), the
//!   events-missed flag is set (`VHOST_SCSI_GET_EVENTS_MISSED`) and the next event carries
//!   VIRTIO_SCSI_T_EVENTS_MISSED; a kick of the event queue with the flag set (also set by
//!   `VHOST_SCSI_SET_EVENTS_MISSED`) sends NO_EVENT | EVENTS_MISSED, without it nothing;
//! * malformed I/O requests: a header shorter than `virtio_scsi_cmd_req`, a LUN whose byte 0
//!   is not 1, a variable-length CDB longer than 32 bytes, an unknown target, a header the
//!   kernel cannot read (its page PROT_NONE) answered BAD_TARGET; no response buffer, one
//!   byte short of it, and data in more than `VHOST_SCSI_PREALLOC_SGLS` pages dropped; a
//!   descriptor outside the memory table stops the queue (nothing used, the ring base not
//!   moved, the same error at the next kick); WRITE(10) with less data than the CDB says
//!   CHECK CONDITION (INVALID FIELD IN COMMAND IU), READ(10) with more buffer than the CDB
//!   says GOOD with the residue, with less CHECK CONDITION (INVALID FIELD IN CDB); unit
//!   attentions after the LUN reset and the LUN changes; then WRITE(10)/READ(10) byte-exact;
//! * T10 PI (`VIRTIO_SCSI_F_T10_PI`): the `fabric_prot_type` attribute shown back (0, 1, 3;
//!   2 and a non-number EINVAL), a request without the PI fields, PI bytes against the data
//!   direction BAD_TARGET, a READ(10) with PI bytes in (GOOD, the PI counted as residue, the
//!   data byte-exact) and a WRITE(10) with PI bytes out (CHECK CONDITION: the rd_mcp disk
//!   has no protection, so the PI bytes make the transfer longer than the CDB's).
//!
//! Every `vq_err` the source has on a path is counted on the queue's error eventfd
//! (`VHOST_SET_VRING_ERR`) and must be exactly there. Target-core callbacks
//! (`vhost_scsi_queue_data_in`, `_queue_status`, `_queue_tm_rsp`, `_release_cmd`) and
//! `vhost_scsi_tmf_flush_work` run in target-core or system workqueues, outside any kcov
//! remote section: their outcome is checked (the responses), their lines are not counted.

use std::time::Duration;

use frontends::vhost_raw::{MemRegion, RawVhost, ScsiTarget};
use frontends::vring::Arena;
use kcov_wire::plan::Params;

use crate::net::{sys, Counters, NetError};
use crate::rawnet::{expect_errno, expect_ok, fail};
use crate::scsi_dev::{
    arena_write, lun_bytes, open, rw10, scsi_req, scsi_resp, ScsiRing, Target, BLOCK, CTL_VQ,
    EVT_VQ, FIRST_IO_VQ, REQ_LEN, RESP_LEN, STAT_GOOD, S_BAD_TARGET, S_OK, TARGET_WWPN, TPGT,
    WRITE,
};

/// `VIRTIO_F_VERSION_1`.
const F_V1: u64 = 1 << 32;
/// `VIRTIO_SCSI_F_HOTPLUG`.
const F_HOTPLUG: u64 = 1 << 1;
/// `VIRTIO_SCSI_F_T10_PI`.
const F_T10_PI: u64 = 1 << 3;
/// Ring size of every queue.
const RING: u16 = 32;
/// The I/O queue that is stopped by a descriptor outside the memory table.
const STUCK_VQ: u32 = FIRST_IO_VQ + 1;
/// `VIRTIO_SCSI_T_TMF`, `_AN_QUERY`, `_AN_SUBSCRIBE`.
const T_TMF: u32 = 0;
const T_AN_QUERY: u32 = 1;
const T_AN_SUBSCRIBE: u32 = 2;
/// `VIRTIO_SCSI_T_TMF_ABORT_TASK`, `_LOGICAL_UNIT_RESET`.
const TMF_ABORT_TASK: u32 = 0;
const TMF_LUN_RESET: u32 = 5;
/// `VIRTIO_SCSI_S_FUNCTION_SUCCEEDED`, `_REJECTED`.
const S_FUNCTION_SUCCEEDED: u8 = 10;
const S_FUNCTION_REJECTED: u8 = 11;
/// `struct virtio_scsi_ctrl_tmf_req`, `_an_req` / `_resp`, `virtio_scsi_event`.
const TMF_REQ_LEN: usize = 24;
const AN_REQ_LEN: usize = 16;
const AN_RESP_LEN: u32 = 5;
const EVENT_LEN: usize = 16;
/// `VIRTIO_SCSI_T_NO_EVENT`, `_TRANSPORT_RESET`, `_EVENTS_MISSED`.
const T_NO_EVENT: u32 = 0;
const T_TRANSPORT_RESET: u32 = 1;
const T_EVENTS_MISSED: u32 = 0x8000_0000;
/// `VIRTIO_SCSI_EVT_RESET_RESCAN`, `_REMOVED`.
const RESET_RESCAN: u32 = 1;
const RESET_REMOVED: u32 = 2;
/// The LUN linked and unlinked for the hotplug events.
const HOTPLUG_LUN: u16 = 1;
/// `VHOST_SCSI_PREALLOC_SGLS`: pages of data one command may have.
const PREALLOC_SGLS: u64 = 2048;
/// `struct virtio_scsi_cmd_req_pi`: ..., crn, pi_bytesout, pi_bytesin, cdb[32].
const PI_REQ_LEN: usize = 59;
/// PI bytes per 512-byte block (a DIF tuple).
const PI_LEN: usize = 8;
/// `SAM_STAT_CHECK_CONDITION`.
const STAT_CHECK_CONDITION: u8 = 2;
/// Sense key UNIT ATTENTION.
const UNIT_ATTENTION: u8 = 0x06;
/// ILLEGAL REQUEST, INVALID FIELD IN COMMAND INFORMATION UNIT (TCM_INVALID_FIELD_IN_COMMAND_IU).
const INVALID_FIELD_IN_COMMAND_IU: (u8, u8, u8) = (0x05, 0x0e, 0x03);
/// ILLEGAL REQUEST, INVALID FIELD IN CDB (TCM_INVALID_CDB_FIELD).
const INVALID_FIELD_IN_CDB: (u8, u8, u8) = (0x05, 0x24, 0x00);
/// TEST UNIT READY: no data, GOOD on the ramdisk.
const TUR: [u8; 6] = [0; 6];
/// The tpg attribute vhost-scsi adds (`vhost_scsi_tpg_attrib_fabric_prot_type_*`).
const PROT_TYPE_ATTR: &str = "attrib/fabric_prot_type";

/// Runs every part on a fresh target, removed after.
pub fn run(params: &Params) -> Result<Counters, NetError> {
    let timeout = Duration::from_millis(u64::from(params.timeout_ms));
    let mut n = Tally::default();
    Target::with(|t| {
        prot_type_attribute(&mut n, t)?;
        let mut c = Control::open(timeout)?;
        c.control(&mut n)?;
        c.events(&mut n, t)?;
        c.malformed_io(&mut n)?;
        c.stuck_queue(&mut n)?;
        c.t10_pi(&mut n)?;
        c.write_read(&mut n, 21)?;
        expect_ok(
            "VHOST_SCSI_CLEAR_ENDPOINT",
            c.d.scsi_clear_endpoint(&ScsiTarget::new(TARGET_WWPN)),
        )?;
        Ok(())
    })?;
    Ok(vec![
        ("tmf".into(), n.tmf),
        ("an".into(), n.an),
        ("ctl_dropped".into(), n.ctl_dropped),
        ("events".into(), n.events),
        ("io_rejected".into(), n.io_rejected),
        ("io_dropped".into(), n.io_dropped),
        ("scsi_commands".into(), n.commands),
        ("pi".into(), n.pi),
        ("prot_type_values".into(), n.prot_type),
        ("vq_errs".into(), n.vq_errs),
        (
            "iterations".into(),
            n.tmf + n.an + n.ctl_dropped + n.events + n.io_rejected + n.io_dropped + n.commands,
        ),
    ])
}

/// What was checked.
#[derive(Default)]
struct Tally {
    tmf: u64,
    an: u64,
    ctl_dropped: u64,
    events: u64,
    io_rejected: u64,
    io_dropped: u64,
    commands: u64,
    pi: u64,
    prot_type: u64,
    vq_errs: u64,
}

/// `fabric_prot_type` of the portal group: what is stored is shown back; only 0, 1 and 3
/// are taken (`vhost_scsi_tpg_attrib_fabric_prot_type_store`). Left at 0: the session (made
/// with the nexus before) keeps its protection type anyway.
fn prot_type_attribute(n: &mut Tally, t: &Target) -> Result<(), NetError> {
    let path = format!("{}/{PROT_TYPE_ATTR}", t.tpg);
    let show = |want: &str| -> Result<(), NetError> {
        let got = std::fs::read_to_string(&path).map_err(sys(format!("read {path}")))?;
        if got != format!("{want}\n") {
            return Err(fail(
                "fabric_prot_type",
                format!("shows {got:?}, expected {want:?}"),
            ));
        }
        Ok(())
    };
    show("0")?;
    for v in ["1", "3", "0"] {
        std::fs::write(&path, v).map_err(sys(format!("{path} <- {v}")))?;
        show(v)?;
        n.prot_type += 1;
    }
    for bad in ["2", "x"] {
        expect_errno(
            &format!("fabric_prot_type <- {bad}"),
            std::fs::write(&path, bad),
            libc::EINVAL,
        )?;
        show("0")?;
        n.prot_type += 1;
    }
    Ok(())
}

/// A 16-byte `virtio_scsi_event`.
fn event_bytes(event: u32, lun: [u8; 8], reason: u32) -> [u8; EVENT_LEN] {
    let mut e = [0u8; EVENT_LEN];
    e[..4].copy_from_slice(&event.to_le_bytes());
    e[4..12].copy_from_slice(&lun);
    e[12..].copy_from_slice(&reason.to_le_bytes());
    e
}

/// A `virtio_scsi_ctrl_tmf_req`.
fn tmf_req(subtype: u32, lun: [u8; 8]) -> [u8; TMF_REQ_LEN] {
    let mut r = [0u8; TMF_REQ_LEN];
    r[..4].copy_from_slice(&T_TMF.to_le_bytes());
    r[4..8].copy_from_slice(&subtype.to_le_bytes());
    r[8..16].copy_from_slice(&lun);
    r[16..].copy_from_slice(&0x7a6u64.to_le_bytes());
    r
}

/// A `virtio_scsi_ctrl_an_req`.
fn an_req(ty: u32, lun: [u8; 8], events: u32) -> [u8; AN_REQ_LEN] {
    let mut r = [0u8; AN_REQ_LEN];
    r[..4].copy_from_slice(&ty.to_le_bytes());
    r[4..12].copy_from_slice(&lun);
    r[12..].copy_from_slice(&events.to_le_bytes());
    r
}

/// A `virtio_scsi_cmd_req_pi` for LUN 0 of [`TPGT`].
fn pi_req(tag: u64, pi_out: u32, pi_in: u32, cdb: &[u8]) -> [u8; PI_REQ_LEN] {
    let mut r = [0u8; PI_REQ_LEN];
    r[..8].copy_from_slice(&lun_bytes(TPGT, 0));
    r[8..16].copy_from_slice(&tag.to_le_bytes());
    r[19..23].copy_from_slice(&pi_out.to_le_bytes());
    r[23..27].copy_from_slice(&pi_in.to_le_bytes());
    let k = cdb.len().min(32);
    r[27..27 + k].copy_from_slice(&cdb[..k]);
    r
}

/// A response buffer as the kernel leaves one it wrote: `len` bytes, all 0 but `at` = `v`.
fn zeros_but(len: usize, at: usize, v: u8) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[at] = v;
    b
}

/// A command response that is BAD_TARGET and nothing else (all other bytes zero).
fn expect_bad_target(case: &str, r: &[u8]) -> Result<(), NetError> {
    if r != &zeros_but(RESP_LEN, 11, S_BAD_TARGET)[..] {
        return Err(fail(
            case,
            format!(
                "response {:02x?}, expected BAD_TARGET",
                &r[..12.min(r.len())]
            ),
        ));
    }
    Ok(())
}

/// The fixed-format sense data target core builds (`scsi_build_sense_buffer`) for a key,
/// ASC and ASCQ, in the 96 bytes vhost-scsi copies.
fn fixed_sense(key: u8, asc: u8, ascq: u8) -> [u8; 96] {
    let mut s = [0u8; 96];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 0x0a;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// The device: every queue configured, features VERSION_1 | HOTPLUG, the endpoint set.
struct Control {
    d: RawVhost,
    arena: Arena,
    ctl: ScsiRing,
    evt: ScsiRing,
    io: ScsiRing,
    stuck: ScsiRing,
    tag: u64,
    timeout: Duration,
}

impl Control {
    fn open(timeout: Duration) -> Result<Control, NetError> {
        // Room for one data buffer one page past VHOST_SCSI_PREALLOC_SGLS pages, and the rest.
        let mut arena = Arena::new(((PREALLOC_SGLS + 1) * 4096 + (2 << 20)) as usize)?;
        let d = open()?;
        expect_ok("VHOST_SET_FEATURES", d.set_features(F_V1 | F_HOTPLUG))?;
        expect_ok("VHOST_SET_OWNER", d.set_owner())?;
        expect_ok(
            "VHOST_SET_MEM_TABLE",
            d.set_mem_table(&[MemRegion::from(arena.region_info())]),
        )?;
        let ctl = ScsiRing::configure(&d, &mut arena, CTL_VQ, RING, true)?;
        let evt = ScsiRing::configure(&d, &mut arena, EVT_VQ, RING, true)?;
        let io = ScsiRing::configure(&d, &mut arena, FIRST_IO_VQ, RING, true)?;
        let stuck = ScsiRing::configure(&d, &mut arena, STUCK_VQ, RING, true)?;
        expect_ok(
            "VHOST_SCSI_SET_ENDPOINT",
            d.scsi_set_endpoint(&ScsiTarget::new(TARGET_WWPN)),
        )?;
        Ok(Control {
            d,
            arena,
            ctl,
            evt,
            io,
            stuck,
            tag: 0,
            timeout,
        })
    }

    /// A fresh buffer holding `bytes` (device-readable).
    fn out(&mut self, bytes: &[u8]) -> Result<(u64, u32, u16), NetError> {
        let a = self.arena.alloc(bytes.len().max(1) as u64, 64)?;
        arena_write(&self.arena, a, bytes)?;
        Ok((a, bytes.len() as u32, 0))
    }

    /// A fresh device-writable buffer of `len` bytes, filled with 0xff.
    fn inb(&mut self, len: u32) -> Result<(u64, u32, u16), NetError> {
        let a = self.arena.alloc(u64::from(len.max(1)), 64)?;
        arena_write(&self.arena, a, &vec![0xffu8; len as usize])?;
        Ok((a, len, WRITE))
    }

    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, NetError> {
        let mut b = vec![0u8; len];
        self.arena.read(addr, &mut b)?;
        Ok(b)
    }

    /// `len` bytes at `addr` must be `want`.
    fn expect_bytes(&self, case: &str, addr: u64, want: &[u8]) -> Result<(), NetError> {
        let got = self.read(addr, want.len())?;
        if got != want {
            return Err(fail(case, format!("{got:02x?}, expected {want:02x?}")));
        }
        Ok(())
    }

    /// A flush of every worker: `vhost_scsi_ioctl` ends each `vhost_dev_ioctl` call in
    /// `vhost_scsi_flush`, which waits for the work queued so far (kicks, events).
    fn flush(&self) -> Result<(), NetError> {
        expect_ok("VHOST_SET_LOG_FD -1 (flush)", self.d.set_log_fd(-1))
    }

    fn events_missed(&self, case: &str, want: u32) -> Result<(), NetError> {
        let got = expect_ok("VHOST_SCSI_GET_EVENTS_MISSED", self.d.scsi_events_missed())?;
        if got != want {
            return Err(fail(case, format!("events missed {got}, expected {want}")));
        }
        Ok(())
    }

    /// One control request and its response buffer, answered with exactly `want`, with
    /// `errs` `vq_err`s.
    fn ctl_answered(
        &mut self,
        n: &mut Tally,
        case: &str,
        req: &[u8],
        want: &[u8],
        errs: u64,
    ) -> Result<(), NetError> {
        let r = self.out(req)?;
        let resp = self.inb(want.len() as u32)?;
        let head = self.ctl.post(&self.arena, &[r, resp])?;
        self.ctl.kick()?;
        self.ctl
            .expect_used(&self.arena, case, head, self.timeout)?;
        self.expect_bytes(case, resp.0, want)?;
        self.ctl.expect_errors(case, errs)?;
        n.vq_errs += errs;
        Ok(())
    }

    /// A control chain the kernel drops: posted with an AN query behind it, one kick; the
    /// query must be the first thing used (so the dropped chain got no used entry) and
    /// answered, and the drop must have been one `vq_err`.
    fn ctl_dropped(
        &mut self,
        n: &mut Tally,
        case: &str,
        chain: &[(u64, u32, u16)],
    ) -> Result<(), NetError> {
        self.ctl.post(&self.arena, chain)?;
        let q = self.out(&an_req(T_AN_QUERY, lun_bytes(TPGT, 0), 0))?;
        let resp = self.inb(AN_RESP_LEN)?;
        let head = self.ctl.post(&self.arena, &[q, resp])?;
        self.ctl.kick()?;
        self.ctl
            .expect_used(&self.arena, case, head, self.timeout)?;
        self.expect_bytes(case, resp.0, &[0; AN_RESP_LEN as usize])?;
        self.ctl.expect_no_used(&self.arena, case)?;
        self.ctl.expect_errors(case, 1)?;
        n.vq_errs += 1;
        n.ctl_dropped += 1;
        Ok(())
    }

    /// The control queue (`vhost_scsi_ctl_handle_vq`).
    fn control(&mut self, n: &mut Tally) -> Result<(), NetError> {
        let lun0 = lun_bytes(TPGT, 0);
        let rejected = [S_FUNCTION_REJECTED];
        // vhost_scsi_handle_tmf: anything but LOGICAL_UNIT_RESET is rejected at once.
        self.ctl_answered(
            n,
            "TMF ABORT_TASK",
            &tmf_req(TMF_ABORT_TASK, lun0),
            &rejected,
            0,
        )?;
        // target_submit_tmr(TMR_LUN_RESET): answered from vhost_scsi_tmf_resp_work once the
        // target completed it.
        self.ctl_answered(
            n,
            "TMF LOGICAL_UNIT_RESET of LUN 0",
            &tmf_req(TMF_LUN_RESET, lun0),
            &[S_FUNCTION_SUCCEEDED],
            0,
        )?;
        // target_tmr_work allocates a unit attention (29/03, BUS DEVICE RESET FUNCTION
        // OCCURRED) on the device before the response goes out: the next command gets it,
        // once; the one after is GOOD.
        self.unit_attention(n, "TEST UNIT READY after the LUN reset", 0x29, 0x03)?;
        // No LUN 5: transport_lookup_tmr_lun fails, the target answers
        // TMR_LUN_DOES_NOT_EXIST, which vhost-scsi reports as rejected.
        self.ctl_answered(
            n,
            "TMF LOGICAL_UNIT_RESET of LUN 5",
            &tmf_req(TMF_LUN_RESET, lun_bytes(TPGT, 5)),
            &rejected,
            0,
        )?;
        n.tmf += 3;
        // vhost_scsi_get_req: no portal group for target 7 (no vq_err), byte 0 of the LUN
        // not 1 (a vq_err); vhost_scsi_chk_size: the request shorter than the TMF request.
        let mut bad_lun = lun0;
        bad_lun[0] = 0;
        let bad = [S_BAD_TARGET];
        for (case, req, errs) in [
            (
                "TMF for target 7",
                tmf_req(TMF_LUN_RESET, lun_bytes(7, 0)).to_vec(),
                0,
            ),
            (
                "TMF with LUN byte 0 = 0",
                tmf_req(TMF_LUN_RESET, bad_lun).to_vec(),
                1,
            ),
            (
                "TMF of 8 bytes",
                tmf_req(TMF_LUN_RESET, lun0)[..8].to_vec(),
                1,
            ),
        ] {
            self.ctl_answered(n, case, &req, &bad, errs)?;
            n.tmf += 1;
        }
        // Asynchronous notification: nothing to report, event_actual 0, OK.
        let ok = [0u8; AN_RESP_LEN as usize];
        self.ctl_answered(
            n,
            "AN_QUERY",
            &an_req(T_AN_QUERY, lun0, 0xffff_ffff),
            &ok,
            0,
        )?;
        self.ctl_answered(
            n,
            "AN_SUBSCRIBE",
            &an_req(T_AN_SUBSCRIBE, lun0, 0x7e),
            &ok,
            0,
        )?;
        self.ctl_answered(
            n,
            "AN_QUERY with LUN byte 0 = 0",
            &an_req(T_AN_QUERY, bad_lun, 0),
            &[0, 0, 0, 0, S_BAD_TARGET],
            1,
        )?;
        n.an += 3;
        // Dropped, no response: an unknown type ("Unknown control request"), a type cut
        // short ("Faulted on copy_from_iter tmf type"), no TMF response buffer and an AN
        // response buffer one byte short (vhost_scsi_chk_size: -EINVAL).
        let unknown = self.out(&an_req(7, lun0, 0))?;
        let resp = self.inb(AN_RESP_LEN)?;
        self.ctl_dropped(n, "control type 7", &[unknown, resp])?;
        let short = self.out(&[0u8; 2])?;
        let resp = self.inb(AN_RESP_LEN)?;
        self.ctl_dropped(n, "control request of 2 bytes", &[short, resp])?;
        let tmf = self.out(&tmf_req(TMF_LUN_RESET, lun0))?;
        self.ctl_dropped(n, "TMF without a response buffer", &[tmf])?;
        let an = self.out(&an_req(T_AN_QUERY, lun0, 0))?;
        let resp = self.inb(AN_RESP_LEN - 1)?;
        self.ctl_dropped(n, "AN with a 4-byte response buffer", &[an, resp])?;
        Ok(())
    }

    /// Posts one event buffer of `len` bytes; returns (head, address).
    fn event_buffer(&mut self, len: u32) -> Result<(u16, u64), NetError> {
        let b = self.inb(len)?;
        let head = self.evt.post(&self.arena, &[b])?;
        Ok((head, b.0))
    }

    /// The next used event must be `head`, holding exactly `want`.
    fn expect_event(
        &mut self,
        n: &mut Tally,
        case: &str,
        (head, addr): (u16, u64),
        want: [u8; EVENT_LEN],
    ) -> Result<(), NetError> {
        self.evt
            .expect_used(&self.arena, case, head, self.timeout)?;
        self.expect_bytes(case, addr, &want)?;
        self.evt.expect_errors(case, 0)?;
        n.events += 1;
        Ok(())
    }

    /// Hotplug events (`vhost_scsi_do_plug` → `_send_evt` → `_evt_work` → `_do_evt_work`).
    fn events(&mut self, n: &mut Tally, t: &Target) -> Result<(), NetError> {
        // vhost_scsi_send_evt: lun[1] the tpgt, lun[3] the LUN; lun[2] is only set (0x40 |
        // high byte) for LUNs from 256 on, so LUN 1 is [1, tpgt, 0, 1, 0, 0, 0, 0].
        let lun = [1, TPGT, 0, HOTPLUG_LUN as u8, 0, 0, 0, 0];
        let rescan = event_bytes(T_TRANSPORT_RESET, lun, RESET_RESCAN);
        let removed = event_bytes(T_TRANSPORT_RESET, lun, RESET_REMOVED);
        let missed_rescan = event_bytes(T_TRANSPORT_RESET | T_EVENTS_MISSED, lun, RESET_RESCAN);
        let missed_none = event_bytes(T_NO_EVENT | T_EVENTS_MISSED, [0; 8], 0);
        t.add_lun(HOTPLUG_LUN)?;
        // Without VIRTIO_SCSI_F_HOTPLUG a link and an unlink send nothing.
        expect_ok(
            "VHOST_SET_FEATURES without HOTPLUG",
            self.d.set_features(F_V1),
        )?;
        let first = self.event_buffer(EVENT_LEN as u32)?;
        self.evt.kick()?;
        t.link_lun(HOTPLUG_LUN)?;
        t.unlink_lun(HOTPLUG_LUN)?;
        self.flush()?;
        self.evt
            .expect_no_used(&self.arena, "link and unlink without HOTPLUG")?;
        self.events_missed("link and unlink without HOTPLUG", 0)?;
        expect_ok(
            "VHOST_SET_FEATURES with HOTPLUG",
            self.d.set_features(F_V1 | F_HOTPLUG),
        )?;
        // The buffer posted before takes the link's event.
        t.link_lun(HOTPLUG_LUN)?;
        self.expect_event(n, "link of LUN 1", first, rescan)?;
        self.events_missed("after the link of LUN 1", 0)?;
        // No buffer: the event is lost and the flag set (vhost_scsi_do_evt_work, no head).
        t.unlink_lun(HOTPLUG_LUN)?;
        self.flush()?;
        self.evt
            .expect_no_used(&self.arena, "unlink without an event buffer")?;
        self.evt
            .expect_errors("unlink without an event buffer", 0)?;
        self.events_missed("unlink without an event buffer", 1)?;
        // A kick with the flag set: NO_EVENT | EVENTS_MISSED (vhost_scsi_evt_handle_kick),
        // the flag cleared; the same after VHOST_SCSI_SET_EVENTS_MISSED.
        for case in [
            "event-queue kick after a lost event",
            "event-queue kick after VHOST_SCSI_SET_EVENTS_MISSED",
        ] {
            let b = self.event_buffer(EVENT_LEN as u32)?;
            self.evt.kick()?;
            self.expect_event(n, case, b, missed_none)?;
            self.events_missed(case, 0)?;
            expect_ok(
                "VHOST_SCSI_SET_EVENTS_MISSED",
                self.d.scsi_set_events_missed(1),
            )?;
        }
        expect_ok(
            "VHOST_SCSI_SET_EVENTS_MISSED 0",
            self.d.scsi_set_events_missed(0),
        )?;
        // A kick without the flag sends nothing; the buffer stays for the next link.
        let b = self.event_buffer(EVENT_LEN as u32)?;
        self.evt.kick()?;
        self.flush()?;
        self.evt
            .expect_no_used(&self.arena, "event-queue kick, nothing missed")?;
        t.link_lun(HOTPLUG_LUN)?;
        self.expect_event(n, "link of LUN 1 again", b, rescan)?;
        // A buffer of 32 bytes is not a virtio_scsi_event: consumed, not used, one vq_err,
        // the event lost; the next event says so.
        let case = "unlink into a 32-byte event buffer";
        self.event_buffer(2 * EVENT_LEN as u32)?;
        t.unlink_lun(HOTPLUG_LUN)?;
        self.flush()?;
        self.evt.expect_no_used(&self.arena, case)?;
        self.evt.expect_errors(case, 1)?;
        n.vq_errs += 1;
        self.events_missed(case, 1)?;
        let b = self.event_buffer(EVENT_LEN as u32)?;
        t.link_lun(HOTPLUG_LUN)?;
        self.expect_event(n, "link after a lost event", b, missed_rescan)?;
        self.events_missed("link after a lost event", 0)?;
        let b = self.event_buffer(EVENT_LEN as u32)?;
        t.unlink_lun(HOTPLUG_LUN)?;
        self.expect_event(n, "unlink of LUN 1", b, removed)?;
        t.remove_lun(HOTPLUG_LUN)?;
        // Each link and unlink also queued a unit attention (3F/0E, REPORTED LUNS DATA HAS
        // CHANGED: target_luns_data_has_changed) on LUN 0 for the nexus, the same one once
        // (core_scsi3_ua_allocate does not report one twice).
        self.unit_attention(n, "TEST UNIT READY after the hotplug", 0x3f, 0x0e)
    }

    /// Posts `chain` on the I/O queue, kicks, waits for it; returns the response.
    fn io_answered(
        &mut self,
        case: &str,
        chain: &[(u64, u32, u16)],
        resp: u64,
        errs: u64,
        n: &mut Tally,
    ) -> Result<[u8; RESP_LEN], NetError> {
        let head = self.io.post(&self.arena, chain)?;
        self.io.kick()?;
        self.io.expect_used(&self.arena, case, head, self.timeout)?;
        self.io.expect_errors(case, errs)?;
        n.vq_errs += errs;
        let mut b = [0u8; RESP_LEN];
        self.arena.read(resp, &mut b)?;
        Ok(b)
    }

    fn next_tag(&mut self) -> u64 {
        self.tag += 1;
        self.tag
    }

    /// One SCSI command on LUN 0: header (+ data out), response (+ data in of `data_in`
    /// bytes, 0xee); returns the response and the data-in buffer's address.
    fn command(
        &mut self,
        n: &mut Tally,
        case: &str,
        cdb: &[u8],
        out: Option<&[u8]>,
        data_in: u32,
    ) -> Result<([u8; RESP_LEN], u64), NetError> {
        let tag = self.next_tag();
        let mut chain = vec![self.out(&scsi_req(TPGT, tag, cdb))?];
        if let Some(bytes) = out {
            chain.push(self.out(bytes)?);
        }
        let resp = self.inb(RESP_LEN as u32)?;
        chain.push(resp);
        let mut din = 0;
        if data_in > 0 {
            let d = self.inb(data_in)?;
            arena_write(&self.arena, d.0, &vec![0xeeu8; data_in as usize])?;
            din = d.0;
            chain.push(d);
        }
        let r = self.io_answered(case, &chain, resp.0, 0, n)?;
        n.commands += 1;
        Ok((r, din))
    }

    /// `(response, status, resid, sense_len)` of `r` must be `want`, the sense all 0.
    fn expect_resp(
        case: &str,
        r: &[u8; RESP_LEN],
        want: (u8, u8, u32, u32),
    ) -> Result<(), NetError> {
        let got = scsi_resp(r);
        if got != want || r[12..].iter().any(|&b| b != 0) {
            return Err(fail(
                case,
                format!(
                    "(response, status, resid, sense_len) {got:?}, expected {want:?}; sense {:02x?}",
                    &r[12..26]
                ),
            ));
        }
        Ok(())
    }

    /// `r` must be CHECK CONDITION with `resid` and fixed-format sense `key`/`asc`/`ascq`.
    fn expect_check(
        case: &str,
        r: &[u8; RESP_LEN],
        resid: u32,
        (key, asc, ascq): (u8, u8, u8),
    ) -> Result<(), NetError> {
        if scsi_resp(r) != (S_OK, STAT_CHECK_CONDITION, resid, 96)
            || r[12..] != fixed_sense(key, asc, ascq)[..]
        {
            return Err(fail(
                case,
                format!(
                    "(response, status, resid, sense_len) {:?}, sense {:02x?}; expected \
                     CHECK CONDITION, resid {resid}, sense {key:x} {asc:02x}/{ascq:02x}",
                    scsi_resp(r),
                    &r[12..26]
                ),
            ));
        }
        Ok(())
    }

    /// A chain answered BAD_TARGET at once: the whole response 0 but `response`.
    fn io_bad_target(
        &mut self,
        n: &mut Tally,
        case: &str,
        mut chain: Vec<(u64, u32, u16)>,
        errs: u64,
    ) -> Result<(), NetError> {
        let resp = self.inb(RESP_LEN as u32)?;
        chain.push(resp);
        let r = self.io_answered(case, &chain, resp.0, errs, n)?;
        expect_bad_target(case, &r)?;
        n.io_rejected += 1;
        Ok(())
    }

    /// An I/O chain the kernel drops (`ret` -EINVAL in `vhost_scsi_handle_vq`): posted with
    /// TEST UNIT READY behind it, one kick; the TUR must be the first thing used and GOOD,
    /// the drop one `vq_err`.
    fn io_dropped(
        &mut self,
        n: &mut Tally,
        case: &str,
        chain: &[(u64, u32, u16)],
    ) -> Result<(), NetError> {
        self.io.post(&self.arena, chain)?;
        let tag = self.next_tag();
        let req = self.out(&scsi_req(TPGT, tag, &TUR))?;
        let resp = self.inb(RESP_LEN as u32)?;
        let r = self.io_answered(case, &[req, resp], resp.0, 1, n)?;
        Self::expect_resp(case, &r, (S_OK, STAT_GOOD, 0, 0))?;
        self.io.expect_no_used(&self.arena, case)?;
        n.io_dropped += 1;
        Ok(())
    }

    /// TEST UNIT READY answered CHECK CONDITION, UNIT ATTENTION `asc`/`ascq`, then a second
    /// one GOOD (reported once).
    fn unit_attention(
        &mut self,
        n: &mut Tally,
        case: &str,
        asc: u8,
        ascq: u8,
    ) -> Result<(), NetError> {
        let (r, _) = self.command(n, case, &TUR, None, 0)?;
        Self::expect_check(case, &r, 0, (UNIT_ATTENTION, asc, ascq))?;
        let (r, _) = self.command(n, case, &TUR, None, 0)?;
        Self::expect_resp(&format!("{case}, again"), &r, (S_OK, STAT_GOOD, 0, 0))
    }

    /// Malformed requests on the first I/O queue, then residues.
    fn malformed_io(&mut self, n: &mut Tally) -> Result<(), NetError> {
        let read1 = rw10(false, 8, 1);
        // vhost_scsi_chk_size: the header shorter than virtio_scsi_cmd_req (-EIO).
        let tag = self.next_tag();
        let short = self.out(&scsi_req(TPGT, tag, &read1)[..20])?;
        self.io_bad_target(n, "a request header of 20 bytes", vec![short], 1)?;
        // vhost_scsi_get_req: byte 0 of the LUN not 1 (a vq_err); no portal group for the
        // target (none).
        let tag = self.next_tag();
        let mut r = scsi_req(TPGT, tag, &read1);
        r[0] = 0;
        let bad_lun = self.out(&r)?;
        self.io_bad_target(n, "a request with LUN byte 0 = 0", vec![bad_lun], 1)?;
        let tag = self.next_tag();
        let other = self.out(&scsi_req(9, tag, &read1))?;
        self.io_bad_target(n, "a request for target 9", vec![other], 0)?;
        // scsi_command_size of a variable-length CDB (0x7f) is 8 + its byte 7: 208 > 32.
        let mut varlen = [0u8; 32];
        varlen[0] = 0x7f;
        varlen[7] = 200;
        let tag = self.next_tag();
        let long = self.out(&scsi_req(TPGT, tag, &varlen))?;
        self.io_bad_target(n, "a variable-length CDB of 208 bytes", vec![long], 1)?;
        // A header the kernel cannot read: its page PROT_NONE ("Faulted on
        // copy_from_iter_full").
        let tag = self.next_tag();
        let page = self.arena.alloc(4096, 4096)?;
        arena_write(&self.arena, page, &scsi_req(TPGT, tag, &read1))?;
        protect(page, libc::PROT_NONE)?;
        let r = self.io_bad_target(
            n,
            "a request header on a PROT_NONE page",
            vec![(page, REQ_LEN as u32, 0)],
            1,
        );
        protect(page, libc::PROT_READ | libc::PROT_WRITE)?;
        r?;
        // Dropped (-EINVAL): no response buffer, one a byte short; data in one page more
        // than VHOST_SCSI_PREALLOC_SGLS (vhost_scsi_calc_sgls fails in vhost_scsi_mapal).
        let tag = self.next_tag();
        let req = self.out(&scsi_req(TPGT, tag, &read1))?;
        self.io_dropped(n, "a request without a response buffer", &[req])?;
        let tag = self.next_tag();
        let req = self.out(&scsi_req(TPGT, tag, &read1))?;
        let resp = self.inb(RESP_LEN as u32 - 1)?;
        self.io_dropped(n, "a response buffer of 107 bytes", &[req, resp])?;
        let tag = self.next_tag();
        let pages = PREALLOC_SGLS + 1;
        let req = self.out(&scsi_req(TPGT, tag, &rw10(false, 0, 1)))?;
        let resp = self.inb(RESP_LEN as u32)?;
        // Never touched: the kernel counts its pages and gives up.
        let big = self.arena.alloc(pages * 4096, 4096)?;
        self.io_dropped(
            n,
            "data in over 2049 pages",
            &[req, resp, (big, (pages * 4096) as u32, WRITE)],
        )?;
        // The data buffer and the CDB disagree (target_cmd_size_check): a WRITE(10) of two
        // blocks with one block of data is refused (INVALID FIELD IN COMMAND IU) and nothing
        // written; READs move what both allow and report the rest as residue.
        let pattern: Vec<u8> = (0..BLOCK).map(|i| (i * 13 + 5) as u8).collect();
        let case = "WRITE(10) of 2 blocks with 1 block of data";
        let (r, _) = self.command(n, case, &rw10(true, 10, 2), Some(&pattern), 0)?;
        Self::expect_check(case, &r, BLOCK as u32, INVALID_FIELD_IN_COMMAND_IU)?;
        let (r, din) = self.command(
            n,
            "READ(10) of the refused block",
            &rw10(false, 10, 1),
            None,
            BLOCK as u32,
        )?;
        Self::expect_resp("READ(10) of the refused block", &r, (S_OK, STAT_GOOD, 0, 0))?;
        self.expect_bytes("READ(10) of the refused block", din, &[0u8; BLOCK])?;
        self.write_read(n, 11)?;
        let mut want = pattern_for(11);
        let case = "READ(10) of 1 block into 2 blocks of buffer";
        let (r, din) = self.command(n, case, &rw10(false, 11, 1), None, 2 * BLOCK as u32)?;
        Self::expect_resp(case, &r, (S_OK, STAT_GOOD, BLOCK as u32, 0))?;
        want.extend_from_slice(&[0xee; BLOCK]);
        self.expect_bytes(case, din, &want)?;
        // More data than the buffer: target_cmd_size_check keeps the fabric's length for a
        // READ, but transport_generic_map_mem_to_cmd refuses the overflow for a fabric that
        // brings its own scatterlists (INVALID FIELD IN CDB); nothing is read.
        let case = "READ(10) of 2 blocks into 1 block of buffer";
        let (r, din) = self.command(n, case, &rw10(false, 11, 2), None, BLOCK as u32)?;
        Self::expect_check(case, &r, BLOCK as u32, INVALID_FIELD_IN_CDB)?;
        self.expect_bytes(case, din, &[0xee; BLOCK])?;
        Ok(())
    }

    /// WRITE(10) of [`pattern_for`] `lba` read back byte-exact by READ(10): the device is
    /// alive and moves data.
    fn write_read(&mut self, n: &mut Tally, lba: u32) -> Result<(), NetError> {
        let p = pattern_for(lba);
        let case = format!("WRITE(10) of block {lba}");
        let (r, _) = self.command(n, &case, &rw10(true, lba, 1), Some(&p), 0)?;
        Self::expect_resp(&case, &r, (S_OK, STAT_GOOD, 0, 0))?;
        let case = format!("READ(10) of block {lba}");
        let (r, din) = self.command(n, &case, &rw10(false, lba, 1), None, BLOCK as u32)?;
        Self::expect_resp(&case, &r, (S_OK, STAT_GOOD, 0, 0))?;
        self.expect_bytes(&case, din, &p)
    }

    /// A descriptor outside the memory table on its own queue: `vhost_get_vq_desc` fails,
    /// `vhost_scsi_get_desc` stops until the next kick; nothing used, the ring base
    /// (`last_avail_idx`) not moved, and each kick tries the same head again.
    fn stuck_queue(&mut self, n: &mut Tally) -> Result<(), NetError> {
        let case = "a descriptor outside the memory table";
        self.stuck
            .post(&self.arena, &[(0x1000, REQ_LEN as u32, 0)])?;
        for _ in 0..2 {
            self.stuck.kick()?;
            self.flush()?;
            self.stuck.expect_no_used(&self.arena, case)?;
            self.stuck.expect_errors(case, 1)?;
            n.vq_errs += 1;
            let base = expect_ok(
                "VHOST_GET_VRING_BASE of the stopped queue",
                self.d.get_vring_base(STUCK_VQ),
            )?;
            if base != 0 {
                return Err(fail(case, format!("ring base {base}, expected 0")));
            }
            n.io_rejected += 1;
        }
        Ok(())
    }

    /// T10 PI: `virtio_scsi_cmd_req_pi` headers.
    fn t10_pi(&mut self, n: &mut Tally) -> Result<(), NetError> {
        expect_ok(
            "VHOST_SET_FEATURES with T10_PI",
            self.d.set_features(F_V1 | F_HOTPLUG | F_T10_PI),
        )?;
        let read = rw10(false, 21, 1);
        // A header without the PI fields is 8 bytes short.
        let tag = self.next_tag();
        let plain = self.out(&scsi_req(TPGT, tag, &read))?;
        self.io_bad_target(n, "a non-PI header with T10_PI", vec![plain], 1)?;
        // PI bytes against the data direction.
        let tag = self.next_tag();
        let out_on_read = self.out(&pi_req(tag, PI_LEN as u32, 0, &read))?;
        let resp = self.inb(RESP_LEN as u32)?;
        let din = self.inb(BLOCK as u32)?;
        self.io_answered_bad(n, "pi_bytesout on a READ", vec![out_on_read, resp, din])?;
        let tag = self.next_tag();
        let write = rw10(true, 21, 1);
        let in_on_write = self.out(&pi_req(tag, 0, PI_LEN as u32, &write))?;
        let dout = self.out(&pattern_for(21))?;
        let resp = self.inb(RESP_LEN as u32)?;
        self.io_answered_bad(n, "pi_bytesin on a WRITE", vec![in_on_write, dout, resp])?;
        // No PI bytes: an ordinary WRITE(10)/READ(10) through the PI header.
        let p = pattern_for(22);
        let tag = self.next_tag();
        let w = self.out(&pi_req(tag, 0, 0, &rw10(true, 22, 1)))?;
        let dout = self.out(&p)?;
        let resp = self.inb(RESP_LEN as u32)?;
        let r = self.io_answered("PI header, WRITE(10)", &[w, dout, resp], resp.0, 0, n)?;
        Self::expect_resp("PI header, WRITE(10)", &r, (S_OK, STAT_GOOD, 0, 0))?;
        let tag = self.next_tag();
        let rq = self.out(&pi_req(tag, 0, 0, &rw10(false, 22, 1)))?;
        let resp = self.inb(RESP_LEN as u32)?;
        let din = self.inb(BLOCK as u32)?;
        let r = self.io_answered("PI header, READ(10)", &[rq, resp, din], resp.0, 0, n)?;
        Self::expect_resp("PI header, READ(10)", &r, (S_OK, STAT_GOOD, 0, 0))?;
        self.expect_bytes("PI header, READ(10)", din.0, &p)?;
        // 8 PI bytes in before the data: the disk has no protection and the session's
        // protection type is 0, so target core reads the block as without PI, counts the
        // PI bytes as residue and leaves them alone.
        let case = "READ(10) with pi_bytesin 8";
        let tag = self.next_tag();
        let rq = self.out(&pi_req(tag, 0, PI_LEN as u32, &rw10(false, 22, 1)))?;
        let resp = self.inb(RESP_LEN as u32)?;
        let pi = self.inb(PI_LEN as u32)?;
        let din = self.inb(BLOCK as u32)?;
        let r = self.io_answered(case, &[rq, resp, pi, din], resp.0, 0, n)?;
        Self::expect_resp(case, &r, (S_OK, STAT_GOOD, PI_LEN as u32, 0))?;
        self.expect_bytes(case, din.0, &p)?;
        self.expect_bytes(case, pi.0, &[0xff; PI_LEN])?;
        // 8 PI bytes out before the data: 520 bytes for a one-block WRITE(10), refused
        // like any WRITE whose data and CDB disagree; the block keeps its data.
        let case = "WRITE(10) with pi_bytesout 8";
        let tag = self.next_tag();
        let wq = self.out(&pi_req(tag, PI_LEN as u32, 0, &rw10(true, 22, 1)))?;
        let pi = self.out(&[0u8; PI_LEN])?;
        let dout = self.out(&pattern_for(23))?;
        let resp = self.inb(RESP_LEN as u32)?;
        let r = self.io_answered(case, &[wq, pi, dout, resp], resp.0, 0, n)?;
        Self::expect_check(case, &r, PI_LEN as u32, INVALID_FIELD_IN_COMMAND_IU)?;
        n.pi += 7;
        n.commands += 4;
        expect_ok(
            "VHOST_SET_FEATURES without T10_PI",
            self.d.set_features(F_V1 | F_HOTPLUG),
        )?;
        // The block the refused PI WRITE named still holds the plain WRITE's data.
        let case = "READ(10) after the PI WRITE";
        let (r, din) = self.command(n, case, &rw10(false, 22, 1), None, BLOCK as u32)?;
        Self::expect_resp(case, &r, (S_OK, STAT_GOOD, 0, 0))?;
        self.expect_bytes(case, din, &p)
    }

    /// A chain with its response buffer second to last or last, answered BAD_TARGET with
    /// one `vq_err` (the PI direction checks).
    fn io_answered_bad(
        &mut self,
        n: &mut Tally,
        case: &str,
        chain: Vec<(u64, u32, u16)>,
    ) -> Result<(), NetError> {
        let resp = chain
            .iter()
            .find(|d| d.2 == WRITE && d.1 == RESP_LEN as u32)
            .map(|d| d.0)
            .ok_or_else(|| fail(case, "no response buffer in the chain"))?;
        let r = self.io_answered(case, &chain, resp, 1, n)?;
        expect_bad_target(case, &r)?;
        n.io_rejected += 1;
        Ok(())
    }
}

/// The block written to `lba`.
fn pattern_for(lba: u32) -> Vec<u8> {
    (0..BLOCK)
        .map(|i| (i as u32).wrapping_mul(7).wrapping_add(lba * 31) as u8)
        .collect()
}

/// mprotect of one arena page (guest address = its address in this process).
fn protect(page: u64, prot: libc::c_int) -> Result<(), NetError> {
    // SAFETY: `page` is a page-aligned page of the arena's own anonymous mapping, which lives
    // as long as the device; nothing in this process touches it while it is PROT_NONE.
    let r = unsafe { libc::mprotect(page as *mut libc::c_void, 4096, prot) };
    if r != 0 {
        return Err(sys("mprotect")(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_layouts() {
        let t = tmf_req(TMF_LUN_RESET, lun_bytes(1, 0));
        assert_eq!(&t[..8], &[0, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&t[8..16], &[1, 1, 0x40, 0, 0, 0, 0, 0]);
        let a = an_req(T_AN_SUBSCRIBE, lun_bytes(1, 0), 0x7e);
        assert_eq!(&a[..4], &[2, 0, 0, 0]);
        assert_eq!(&a[12..], &[0x7e, 0, 0, 0]);
        let e = event_bytes(
            T_TRANSPORT_RESET | T_EVENTS_MISSED,
            [1, 1, 0, 1, 0, 0, 0, 0],
            2,
        );
        assert_eq!(e, [1, 0, 0, 0x80, 1, 1, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn pi_header_layout() {
        let r = pi_req(3, 8, 0, &rw10(false, 1, 1));
        assert_eq!(r.len(), PI_REQ_LEN);
        assert_eq!(&r[19..27], &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r[27], 0x28);
    }

    #[test]
    fn fixed_sense_is_scsi_build_sense_buffer() {
        let s = fixed_sense(5, 0x0e, 3);
        assert_eq!(
            &s[..14],
            &[0x70, 0, 5, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x0e, 3]
        );
        assert!(s[14..].iter().all(|&b| b == 0));
    }
}
