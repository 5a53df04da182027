//! One vsock stream connection between a guest socket and a host Unix
//! stream: its state machine and credit-based flow control (virtio 1.2,
//! 5.10.6.3).
//!
//! Guest → host: data is written to the Unix stream at once; what the stream
//! does not take is kept in a buffer of at most `buf_alloc` bytes (our
//! advertised receive buffer). `fwd_cnt` counts bytes handed to the stream.
//! A guest that sends beyond the credit it was given is reset.
//!
//! Host → guest: data is read from the Unix stream straight into the guest's
//! RX buffer, never more than the guest's credit
//! (`peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`); without credit the stream is
//! not read and a CREDIT_REQUEST goes out, so nothing piles up on the host.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, WriteVolatile};
use vmm_sys_util::epoll::EventSet;

use crate::proto::*;
use crate::{Error, Limits, Result, VsockPacket};

/// Control packets waiting for an RX buffer (bit set).
mod pending {
    pub const RST: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 4;
    pub const SHUTDOWN: u8 = 8;
    pub const CREDIT_REQUEST: u8 = 16;
    pub const CREDIT_UPDATE: u8 = 32;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST queued or sent, waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// An RST is queued; the connection goes away once it is sent.
    Killing,
    /// Finished: remove it.
    Closed,
}

pub struct Connection {
    stream: UnixStream,
    state: ConnState,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    limits: Limits,
    /// Guest → host bytes the stream did not take yet.
    tx_buf: VecDeque<u8>,
    /// Bytes handed to the host stream (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    pending: u8,
    /// The host stream may have data for the guest.
    rw_pending: bool,
    credit_requested: bool,
    /// SHUTDOWN flags the guest sent.
    peer_shut: u32,
    /// The host stream reached EOF (SHUTDOWN SEND goes to the guest).
    local_eof: bool,
    /// `shutdown(Write)` done on the host stream after the guest's SHUTDOWN SEND.
    host_write_shut: bool,
    /// The host stream hung up: no more epoll, finish by reading/writing.
    hup: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("local_port", &self.local_port)
            .field("peer_port", &self.peer_port)
            .field("tx_buf", &self.tx_buf.len())
            .field("fwd_cnt", &self.fwd_cnt.0)
            .field("rx_cnt", &self.rx_cnt.0)
            .field("peer_credit", &self.peer_credit())
            .finish()
    }
}

impl Connection {
    fn new(
        stream: UnixStream,
        state: ConnState,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        limits: Limits,
    ) -> Self {
        Connection {
            stream,
            state,
            guest_cid,
            local_port,
            peer_port,
            limits,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            pending: 0,
            rw_pending: false,
            credit_requested: false,
            peer_shut: 0,
            local_eof: false,
            host_write_shut: false,
            hup: false,
        }
    }

    /// A guest REQUEST accepted: the RESPONSE is queued. `stream` must be
    /// non-blocking.
    pub fn new_peer_init<B: BitmapSlice>(
        stream: UnixStream,
        guest_cid: u64,
        request: &VsockPacket<'_, B>,
        limits: Limits,
    ) -> Self {
        let mut c = Connection::new(
            stream,
            ConnState::Established,
            guest_cid,
            request.dst_port(),
            request.src_port(),
            limits,
        );
        c.peer_buf_alloc = request.buf_alloc();
        c.peer_fwd_cnt = Wrapping(request.fwd_cnt());
        c.pending = pending::RESPONSE;
        c
    }

    /// A host-initiated connection to guest port `peer_port`: the REQUEST is
    /// queued. `stream` must be non-blocking.
    pub fn new_local_init(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        limits: Limits,
    ) -> Self {
        let mut c = Connection::new(
            stream,
            ConnState::LocalInit,
            guest_cid,
            local_port,
            peer_port,
            limits,
        );
        c.pending = pending::REQUEST;
        c
    }

    pub fn state(&self) -> ConnState {
        self.state
    }
    pub fn local_port(&self) -> u32 {
        self.local_port
    }
    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }
    /// Guest → host bytes buffered on the host.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }
    pub fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt.0
    }

    /// Bytes the guest can still take (its credit for us).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn may_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.local_eof
            && self.peer_shut & SHUTDOWN_RCV == 0
    }

    fn can_read_host(&self) -> bool {
        self.may_read_host() && self.peer_credit() > 0
    }

    /// Whether [`Connection::recv_pkt`] has something for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0 || (self.rw_pending && self.can_read_host())
    }

    /// The connection is finished; remove it.
    pub fn is_closed(&self) -> bool {
        self.state == ConnState::Closed
    }

    /// The epoll events wanted on the host stream (empty: not polled).
    pub fn wanted_events(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.hup || matches!(self.state, ConnState::Killing | ConnState::Closed) {
            return ev;
        }
        if self.can_read_host() && !self.rw_pending {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    pub fn stream_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Queues an RST and drops everything else.
    pub fn kill(&mut self) {
        if matches!(self.state, ConnState::Killing | ConnState::Closed) {
            return;
        }
        self.state = ConnState::Killing;
        self.pending = pending::RST;
        self.rw_pending = false;
        self.tx_buf = VecDeque::new();
    }

    /// Re-derives the queued work after any change.
    fn settle(&mut self) {
        if !matches!(self.state, ConnState::Established) {
            return;
        }
        // The guest shut its sending side: pass the EOF on once flushed.
        if self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty() && !self.host_write_shut {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.host_write_shut = true;
        }
        // Both directions finished: the guest shut everything, or the guest
        // will send no more and the host sent its EOF.
        let done_tx = self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty();
        if (self.peer_shut == SHUTDOWN_BOTH && self.tx_buf.is_empty())
            || (done_tx && self.local_eof && self.pending & pending::SHUTDOWN == 0)
        {
            self.kill();
            return;
        }
        if self.hup && self.may_read_host() {
            // No epoll after a hang-up: read until EOF when credit allows.
            self.rw_pending = true;
        }
        if self.rw_pending && self.may_read_host() && self.peer_credit() == 0 {
            if !self.credit_requested {
                self.pending |= pending::CREDIT_REQUEST;
                self.credit_requested = true;
            }
        } else if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        let unannounced = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        if unannounced >= self.limits.credit_update_threshold {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    fn fill_header<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        op: u16,
        flags: u32,
        len: u32,
    ) {
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.guest_cid)
            .set_src_port(self.local_port)
            .set_dst_port(self.peer_port)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_len(len)
            .set_buf_alloc(self.limits.conn_buf_size)
            .set_fwd_cnt(self.fwd_cnt.0);
        // Every packet carries our credit information.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !pending::CREDIT_UPDATE;
    }

    /// Fills an RX buffer with the next packet of this connection for the guest.
    pub fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Result<()> {
        let r = self.recv_pkt_inner(pkt);
        self.settle();
        r
    }

    fn recv_pkt_inner<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Result<()> {
        if self.pending & pending::RST != 0 {
            self.fill_header(pkt, OP_RST, 0, 0);
            self.pending = 0;
            self.state = ConnState::Closed;
            return Ok(());
        }
        for (bit, op) in [
            (pending::REQUEST, OP_REQUEST),
            (pending::RESPONSE, OP_RESPONSE),
        ] {
            if self.pending & bit != 0 {
                self.pending &= !bit;
                self.fill_header(pkt, op, 0, 0);
                return Ok(());
            }
        }
        if self.pending & pending::SHUTDOWN != 0 {
            self.pending &= !pending::SHUTDOWN;
            self.fill_header(pkt, OP_SHUTDOWN, SHUTDOWN_SEND, 0);
            return Ok(());
        }
        if self.pending & pending::CREDIT_REQUEST != 0 {
            self.pending &= !pending::CREDIT_REQUEST;
            self.fill_header(pkt, OP_CREDIT_REQUEST, 0, 0);
            return Ok(());
        }
        if self.rw_pending && self.can_read_host() {
            if let Some(data) = pkt.data_slice() {
                let max = (data.len() as u64)
                    .min(self.peer_credit() as u64)
                    .min(MAX_PKT_BUF_SIZE as u64) as usize;
                let mut dst = data.subslice(0, max).map_err(|_| Error::NoData)?;
                match self.stream.read_volatile(&mut dst) {
                    Ok(0) => {
                        self.rw_pending = false;
                        self.local_eof = true;
                        self.fill_header(pkt, OP_SHUTDOWN, SHUTDOWN_SEND, 0);
                        return Ok(());
                    }
                    Ok(n) => {
                        self.rx_cnt += Wrapping(n as u32);
                        self.fill_header(pkt, OP_RW, 0, n as u32);
                        return Ok(());
                    }
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::Interrupted =>
                    {
                        self.rw_pending = false;
                    }
                    Err(e) => {
                        log::debug!(
                            "vsock: reading host stream of port {}: {e}",
                            self.local_port
                        );
                        self.kill();
                        self.fill_header(pkt, OP_RST, 0, 0);
                        self.pending = 0;
                        self.state = ConnState::Closed;
                        return Ok(());
                    }
                }
            } else {
                // An RX buffer without room for data: spend it on credit info.
                self.fill_header(pkt, OP_CREDIT_UPDATE, 0, 0);
                return Ok(());
            }
        }
        if self.pending & pending::CREDIT_UPDATE != 0 {
            self.fill_header(pkt, OP_CREDIT_UPDATE, 0, 0);
            return Ok(());
        }
        Err(Error::NoData)
    }

    /// Handles a packet the guest sent on this connection.
    pub fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        self.send_pkt_inner(pkt);
        self.settle();
    }

    fn send_pkt_inner<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        if matches!(self.state, ConnState::Killing | ConnState::Closed) {
            return;
        }
        // Every packet carries the guest's credit information.
        self.peer_buf_alloc = pkt.buf_alloc();
        self.peer_fwd_cnt = Wrapping(pkt.fwd_cnt());
        let op = pkt.op();
        if op == OP_RST {
            if self.state == ConnState::LocalInit {
                // At the default level: a host CONNECT the guest refuses otherwise leaves no
                // trace but a closed socket.
                log::warn!(
                    "vsock: host CONNECT {}: the guest refused it (nothing listens on that port \
                     in the guest)",
                    pkt.src_port()
                );
            }
            self.state = ConnState::Closed;
            self.pending = 0;
            return;
        }
        match (self.state, op) {
            (ConnState::LocalInit, OP_RESPONSE) => {
                self.state = ConnState::Established;
                let line = format!("OK {}\n", self.local_port);
                // A fresh stream has room for a short line; anything else is fatal.
                match self.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {}
                    _ => self.kill(),
                }
            }
            (ConnState::Established, OP_RW) => self.guest_data(pkt),
            (ConnState::Established, OP_CREDIT_UPDATE) => {}
            (ConnState::Established, OP_CREDIT_REQUEST) => {
                self.pending |= pending::CREDIT_UPDATE;
            }
            (ConnState::Established, OP_SHUTDOWN) => {
                self.peer_shut |= pkt.flags() & SHUTDOWN_BOTH;
                if self.peer_shut & SHUTDOWN_RCV != 0 {
                    self.rw_pending = false;
                }
            }
            // Anything else is a protocol violation (a second REQUEST, a
            // RESPONSE out of turn, data before the handshake, unknown ops).
            _ => self.kill(),
        }
    }

    fn guest_data<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        if self.peer_shut & SHUTDOWN_SEND != 0 {
            self.kill();
            return;
        }
        let len = pkt.len() as usize;
        let Some(data) = pkt.data_slice().filter(|_| len > 0) else {
            return;
        };
        // Credit violation: the guest sent more than we have room for.
        if self.tx_buf.len() + len > self.limits.conn_buf_size as usize {
            log::debug!(
                "vsock: guest port {} exceeded its credit, resetting",
                self.peer_port
            );
            self.kill();
            return;
        }
        let Ok(data) = data.subslice(0, len) else {
            self.kill();
            return;
        };
        let mut written = 0usize;
        if self.tx_buf.is_empty() && !self.host_write_shut {
            match self.stream.write_volatile(&data) {
                Ok(n) => written = n,
                Err(VolatileMemoryError::IOError(e))
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!(
                        "vsock: writing host stream of port {}: {e}",
                        self.local_port
                    );
                    self.kill();
                    return;
                }
            }
        }
        self.fwd_cnt += Wrapping(written as u32);
        // Keep the rest, chunk by chunk (bounded above).
        let mut chunk = [0u8; 4096];
        let mut off = written;
        while off < len {
            let n = (len - off).min(chunk.len());
            let Ok(part) = data.subslice(off, n) else {
                self.kill();
                return;
            };
            part.copy_to(&mut chunk[..n]);
            self.tx_buf.extend(&chunk[..n]);
            off += n;
        }
        if !self.tx_buf.is_empty() && self.hup {
            self.flush();
        }
    }

    /// Writes buffered guest data to the host stream.
    fn flush(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => {
                    self.kill();
                    return;
                }
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!(
                        "vsock: flushing host stream of port {}: {e}",
                        self.local_port
                    );
                    self.kill();
                    return;
                }
            }
        }
        if self.tx_buf.capacity() > 64 * 1024 {
            // Give memory back after a burst.
            self.tx_buf.shrink_to(64 * 1024);
        }
    }

    /// Handles epoll events of the host stream.
    pub fn notify(&mut self, evset: EventSet) {
        if matches!(self.state, ConnState::Killing | ConnState::Closed) {
            return;
        }
        if evset.contains(EventSet::OUT) {
            self.flush();
        }
        if evset.contains(EventSet::IN) {
            self.rw_pending = true;
        }
        if evset.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP) {
            self.hup = true;
            if !self.tx_buf.is_empty() {
                self.flush();
                if !self.tx_buf.is_empty() && self.state != ConnState::Killing {
                    // The host side went away with our data unsent.
                    self.kill();
                }
            }
        }
        self.settle();
    }
}

#[cfg(test)]
mod tests;
