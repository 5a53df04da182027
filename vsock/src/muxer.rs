//! The host side of the device: Unix sockets after Firecracker's
//! hybrid-vsock convention.
//!
//! - Guest connects to CID 2 port P → the muxer connects to the Unix listener
//!   at `<uds>_P` (none there: RST, the guest's `connect()` fails with
//!   ECONNRESET).
//! - A host process connects to `<uds>` and writes `CONNECT <port>\n`; once
//!   the guest listener on that port accepts, it reads `OK <host_port>\n`
//!   and the stream carries the connection. A malformed line, a line longer
//!   than [`MAX_CONNECT_LINE`] or a refused port closes the host stream, and so
//!   does a guest that does not answer within [`Limits::connect_timeout`]
//!   (it gets an RST).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::connection::{ConnState, Connection};
use crate::proto::*;
use crate::{
    validate_guest_cid, Error, Limits, Result, VsockBackend, VsockChannel, VsockEpollListener,
    VsockPacket,
};

/// Longest `CONNECT <port>\n` line accepted ("CONNECT 4294967295\n" is 19).
pub const MAX_CONNECT_LINE: usize = 32;
/// Host-initiated connections use local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const EVENTS_PER_NOTIFY: usize = 64;

/// (local/host port, peer/guest port).
type ConnKey = (u32, u32);

struct MuxConn {
    conn: Connection,
    registered: Option<EventSet>,
    in_rxq: bool,
}

struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// An RST for a packet that matches no connection.
#[derive(Clone, Copy, Debug)]
struct Rst {
    src_port: u32,
    dst_port: u32,
}

/// Parses a `CONNECT <port>` line (without its newline).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Path of the host listener for guest→host connections to `port`.
pub fn listener_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to a Unix socket without blocking (a listener with a full
/// backlog gives EAGAIN instead of stalling the device).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: plain socket(2) call; the fd is owned by the UnixStream below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or invalid",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and len is within it.
    let r = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Owns the Unix sockets and the connections of one guest.
pub struct Muxer {
    guest_cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    limits: Limits,
    conns: HashMap<ConnKey, MuxConn>,
    fd_to_key: HashMap<RawFd, ConnKey>,
    pending_hosts: HashMap<RawFd, PendingHost>,
    rxq: VecDeque<ConnKey>,
    rstq: VecDeque<Rst>,
    next_local_port: u32,
    /// Fires at the first host-CONNECT deadline.
    timer: TimerFd,
    /// Host-initiated connections and when they stop waiting for the guest
    /// (in order: every deadline is `connect_timeout` after its CONNECT).
    deadlines: VecDeque<(Instant, ConnKey)>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("guest_cid", &self.guest_cid)
            .field("uds", &self.uds)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Muxer {
    /// Binds `uds` (an existing socket there is replaced; anything else is an
    /// error) for a guest with `guest_cid`.
    pub fn new(uds: &Path, guest_cid: u64, limits: Limits) -> Result<Muxer> {
        validate_guest_cid(guest_cid)?;
        match std::fs::symlink_metadata(uds) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(uds).map_err(|cause| Error::Bind {
                    path: uds.to_path_buf(),
                    cause,
                })?;
            }
            Ok(_) => return Err(Error::UdsPathNotSocket(uds.to_path_buf())),
            Err(_) => {}
        }
        let bind_err = |cause| Error::Bind {
            path: uds.to_path_buf(),
            cause,
        };
        let listener = UnixListener::bind(uds).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        let timer = TimerFd::new().map_err(|e| Error::Epoll(e.into()))?;
        for fd in [listener.as_raw_fd(), timer.as_raw_fd()] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .map_err(Error::Epoll)?;
        }
        Ok(Muxer {
            guest_cid,
            uds: uds.to_path_buf(),
            listener,
            epoll,
            limits,
            conns: HashMap::new(),
            fd_to_key: HashMap::new(),
            pending_hosts: HashMap::new(),
            rxq: VecDeque::new(),
            rstq: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            timer,
            deadlines: VecDeque::new(),
        })
    }

    pub fn uds(&self) -> &Path {
        &self.uds
    }
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }
    /// Guest → host bytes buffered on the host, all connections together.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.conn.buffered()).sum()
    }
    pub fn connection(&self, local_port: u32, peer_port: u32) -> Option<&Connection> {
        self.conns.get(&(local_port, peer_port)).map(|c| &c.conn)
    }

    fn queue_rst(&mut self, src_port: u32, dst_port: u32) {
        if self.rstq.len() < self.limits.max_pending_rst {
            self.rstq.push_back(Rst { src_port, dst_port });
        }
    }

    fn set_interest(&self, fd: RawFd, old: Option<EventSet>, new: EventSet) -> Option<EventSet> {
        let res = match (old, new.is_empty()) {
            (None, true) => return None,
            (Some(_), true) => {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                return None;
            }
            (Some(o), false) if o == new => return old,
            (Some(_), false) => self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(new, fd as u64),
            ),
            (None, false) => {
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(new, fd as u64))
            }
        };
        match res {
            Ok(()) => Some(new),
            Err(e) => {
                log::warn!("vsock: epoll_ctl on fd {fd}: {e}");
                old
            }
        }
    }

    /// Brings a connection's epoll interest and RX queue entry up to date,
    /// and removes it once closed.
    fn update_conn(&mut self, key: ConnKey) {
        let Some(mc) = self.conns.get(&key) else {
            return;
        };
        let fd = mc.conn.stream_fd();
        if mc.conn.is_closed() {
            if mc.registered.is_some() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.fd_to_key.remove(&fd);
            self.conns.remove(&key);
            return;
        }
        let registered = self.set_interest(fd, mc.registered, mc.conn.wanted_events());
        let Some(mc) = self.conns.get_mut(&key) else {
            return;
        };
        mc.registered = registered;
        if mc.conn.has_pending_rx() && !mc.in_rxq {
            mc.in_rxq = true;
            self.rxq.push_back(key);
        }
    }

    fn insert_conn(&mut self, conn: Connection) {
        let key = (conn.local_port(), conn.peer_port());
        self.fd_to_key.insert(conn.stream_fd(), key);
        self.conns.insert(
            key,
            MuxConn {
                conn,
                registered: None,
                in_rxq: false,
            },
        );
        self.update_conn(key);
    }

    fn guest_request<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) {
        if self.conns.len() >= self.limits.max_connections {
            log::warn!(
                "vsock: connection limit {} reached; refusing guest port {}",
                self.limits.max_connections,
                pkt.src_port()
            );
            self.queue_rst(pkt.dst_port(), pkt.src_port());
            return;
        }
        let path = listener_path(&self.uds, pkt.dst_port());
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Connection::new_peer_init(stream, self.guest_cid, pkt, self.limits);
                self.insert_conn(conn);
            }
            Err(e) => {
                // At the default level: a guest whose connects all fail otherwise leaves no
                // trace on the host.
                log::warn!(
                    "vsock: the guest connected to host port {} but nothing listens on {} \
                     ({e}); the guest gets a reset",
                    pkt.dst_port(),
                    path.display()
                );
                self.queue_rst(pkt.dst_port(), pkt.src_port());
            }
        }
    }

    fn accept_hosts(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending_hosts.len() >= self.limits.max_pending_host
                        || stream.set_nonblocking(true).is_err()
                    {
                        log::warn!(
                            "vsock: too many host connections waiting for CONNECT; closing one"
                        );
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if self
                        .epoll
                        .ctl(
                            ControlOperation::Add,
                            fd,
                            EpollEvent::new(EventSet::IN, fd as u64),
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.pending_hosts.insert(
                        fd,
                        PendingHost {
                            stream,
                            line: Vec::with_capacity(MAX_CONNECT_LINE),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn drop_pending_host(&mut self, fd: RawFd) -> Option<PendingHost> {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.pending_hosts.remove(&fd)
    }

    /// Reads the CONNECT line byte by byte, so that data the host sends after
    /// it stays in the stream for the guest.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(ph) = self.pending_hosts.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match ph.stream.read(&mut byte) {
                Ok(0) => {
                    self.drop_pending_host(fd);
                    return;
                }
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(&ph.line),
                Ok(_) => {
                    if ph.line.len() >= MAX_CONNECT_LINE {
                        break None;
                    }
                    ph.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_pending_host(fd);
                    return;
                }
            }
        };
        let Some(ph) = self.drop_pending_host(fd) else {
            return;
        };
        let Some(port) = port else {
            log::warn!(
                "vsock: malformed CONNECT line {:?} on {}; expected \"CONNECT <port>\\n\"",
                String::from_utf8_lossy(&ph.line),
                self.uds.display()
            );
            return;
        };
        if self.conns.len() >= self.limits.max_connections {
            log::warn!("vsock: connection limit reached; refusing host CONNECT {port}");
            return;
        }
        let Some(local_port) = self.alloc_local_port(port) else {
            return;
        };
        let conn =
            Connection::new_local_init(ph.stream, self.guest_cid, local_port, port, self.limits);
        self.insert_conn(conn);
        self.deadlines.push_back((
            Instant::now() + self.limits.connect_timeout,
            (local_port, port),
        ));
        if self.deadlines.len() == 1 {
            self.arm_timer();
        }
    }

    /// Arms the timer for the first deadline (disarmed when there is none).
    fn arm_timer(&mut self) {
        let Some(&(d, _)) = self.deadlines.front() else {
            return;
        };
        let left = d
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if let Err(e) = self.timer.reset(left, None) {
            log::warn!("vsock: arming the CONNECT timer: {e}");
        }
    }

    /// Host connections whose guest did not answer in time: RST to the guest,
    /// host stream closed once it is sent.
    fn expire_connects(&mut self) {
        let now = Instant::now();
        while let Some(&(d, key)) = self.deadlines.front() {
            if d > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(mc) = self.conns.get_mut(&key) else {
                continue;
            };
            if mc.conn.state() == ConnState::LocalInit {
                log::warn!(
                    "vsock: the guest did not answer host CONNECT {} within {:?}; closing it",
                    key.1,
                    self.limits.connect_timeout
                );
                mc.conn.kill();
                self.update_conn(key);
            }
        }
        self.arm_timer();
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=self.limits.max_connections {
            let port = self.next_local_port;
            self.next_local_port = if port >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.uds) {
            if m.file_type().is_socket() {
                let _ = std::fs::remove_file(&self.uds);
            }
        }
    }
}

impl VsockChannel for Muxer {
    fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Result<()> {
        if let Some(rst) = self.rstq.pop_front() {
            pkt.set_src_cid(HOST_CID)
                .set_dst_cid(self.guest_cid)
                .set_src_port(rst.src_port)
                .set_dst_port(rst.dst_port)
                .set_type(TYPE_STREAM)
                .set_op(OP_RST)
                .set_flags(0)
                .set_len(0)
                .set_buf_alloc(0)
                .set_fwd_cnt(0);
            return Ok(());
        }
        while let Some(key) = self.rxq.pop_front() {
            let Some(mc) = self.conns.get_mut(&key) else {
                continue;
            };
            mc.in_rxq = false;
            let r = mc.conn.recv_pkt(pkt);
            self.update_conn(key);
            if r.is_ok() {
                return Ok(());
            }
        }
        Err(Error::NoData)
    }

    fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) -> Result<()> {
        if self.rstq.len() >= self.limits.max_pending_rst {
            return Err(Error::Backpressure);
        }
        if pkt.src_cid() != self.guest_cid {
            log::debug!("vsock: dropping packet with source CID {}", pkt.src_cid());
            return Ok(());
        }
        let op = pkt.op();
        if pkt.dst_cid() != HOST_CID || pkt.type_() != TYPE_STREAM {
            if op != OP_RST {
                self.queue_rst(pkt.dst_port(), pkt.src_port());
            }
            return Ok(());
        }
        let key = (pkt.dst_port(), pkt.src_port());
        if let Some(mc) = self.conns.get_mut(&key) {
            mc.conn.send_pkt(pkt);
            self.update_conn(key);
            return Ok(());
        }
        match op {
            OP_REQUEST => self.guest_request(pkt),
            OP_RST => {}
            _ => self.queue_rst(pkt.dst_port(), pkt.src_port()),
        }
        Ok(())
    }

    fn has_pending_rx(&self) -> bool {
        !self.rstq.is_empty() || !self.rxq.is_empty()
    }
}

impl VsockEpollListener for Muxer {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn notify(&mut self, _evset: EventSet) {
        let mut events = [EpollEvent::default(); EVENTS_PER_NOTIFY];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("vsock: epoll_wait: {e}");
                }
                return;
            }
        };
        let lfd = self.listener.as_raw_fd();
        let tfd = self.timer.as_raw_fd();
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            if fd == tfd {
                // Readable: expired; reading clears it.
                let _ = self.timer.wait();
                self.expire_connects();
            } else if fd == lfd {
                self.accept_hosts();
            } else if self.pending_hosts.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.fd_to_key.get(&fd) {
                if let Some(mc) = self.conns.get_mut(&key) {
                    mc.conn.notify(ev.event_set());
                }
                self.update_conn(key);
            }
        }
    }
}

impl VsockBackend for Muxer {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1234"), Some(1234));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"connect 5",
            b"CONNECT  5",
            b"CONNECT 5 6",
            b"CONNECT +5",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn listener_paths() {
        assert_eq!(
            listener_path(Path::new("/run/x/vsock.sock"), 52),
            PathBuf::from("/run/x/vsock.sock_52")
        );
    }

    #[test]
    fn bad_cids_and_paths_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        for cid in [0, 1, 2, u32::MAX as u64, u64::MAX] {
            let e = Muxer::new(&uds, cid, Limits::default()).unwrap_err();
            assert!(matches!(e, Error::InvalidGuestCid(c) if c == cid), "{e}");
            assert!(e.to_string().contains("reserved"), "{e}");
        }
        let file = dir.path().join("regular");
        std::fs::write(&file, b"keep me").unwrap();
        let e = Muxer::new(&file, 3, Limits::default()).unwrap_err();
        assert!(matches!(e, Error::UdsPathNotSocket(_)), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        // A stale socket is replaced; the socket goes away with the muxer.
        let m = Muxer::new(&uds, 3, Limits::default()).unwrap();
        drop(m);
        assert!(!uds.exists());
        let _l = UnixListener::bind(&uds).unwrap();
        let m = Muxer::new(&uds, 3, Limits::default()).unwrap();
        assert_eq!(m.guest_cid(), 3);
        let e = Muxer::new(Path::new("/no/such/dir/v.sock"), 3, Limits::default()).unwrap_err();
        assert!(matches!(e, Error::Bind { .. }), "{e}");
    }
}
