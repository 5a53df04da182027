//! virtio-vsock device core, shared by two front doors: the in-process
//! virtio-mmio device of our VMM and a vhost-user backend for QEMU
//! ([`vhost_user`]).
//!
//! Layers, Firecracker style:
//! - [`device`]: moves packets between virtqueues (descriptor chains in guest
//!   memory, parsed by the `virtio-vsock` crate) and a [`VsockChannel`].
//! - [`muxer::Muxer`]: the channel for the host: Unix sockets after the
//!   Firecracker hybrid-vsock convention (guest → CID 2 port P reaches a
//!   listener on `<uds>_P`; a host process connects to `<uds>` and writes
//!   `CONNECT <port>\n`, answered by `OK <host_port>\n`).
//! - [`connection::Connection`]: one stream, its state machine and its
//!   credit-based flow control (`buf_alloc`, `fwd_cnt`).
//!
//! Everything the guest writes is hostile: malformed chains and headers are
//! dropped or answered with RST, never a panic; every buffer and queue has a
//! fixed bound ([`Limits`]).

pub mod connection;
pub mod device;
pub mod driver;
pub mod muxer;
pub mod vhost_user;

use std::os::fd::RawFd;

use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::EventSet;

pub use log::LevelFilter;

pub use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

/// Constants of the virtio-vsock specification (virtio 1.2, 5.10).
pub mod proto {
    /// The host's CID; guest connects to it reach the host.
    pub const HOST_CID: u64 = 2;
    /// CIDs 0..=2 are reserved (hypervisor, local, host); `u32::MAX` is `VMADDR_CID_ANY`.
    pub const FIRST_GUEST_CID: u64 = 3;
    pub const CID_ANY: u64 = u32::MAX as u64;
    /// Only stream sockets are offered (no VIRTIO_VSOCK_F_SEQPACKET).
    pub const TYPE_STREAM: u16 = 1;
    pub const OP_REQUEST: u16 = 1;
    pub const OP_RESPONSE: u16 = 2;
    pub const OP_RST: u16 = 3;
    pub const OP_SHUTDOWN: u16 = 4;
    pub const OP_RW: u16 = 5;
    pub const OP_CREDIT_UPDATE: u16 = 6;
    pub const OP_CREDIT_REQUEST: u16 = 7;
    /// SHUTDOWN flags: the sender will receive / send no more.
    pub const SHUTDOWN_RCV: u32 = 1;
    pub const SHUTDOWN_SEND: u32 = 2;
    pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;
    /// Largest payload of one packet (Linux VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
    pub const MAX_PKT_BUF_SIZE: u32 = 64 * 1024;
}

/// Fixed bounds that keep a flooding or stalled guest (or host peer) from
/// growing host memory. Worst case memory ≈ `max_connections * conn_buf_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live connections (both directions together).
    pub max_connections: usize,
    /// Bytes of guest→host data buffered per connection while the host
    /// peer does not read; advertised to the guest as `buf_alloc`.
    pub conn_buf_size: u32,
    /// Send a CREDIT_UPDATE once this many bytes were forwarded since the
    /// last credit information the guest got.
    pub credit_update_threshold: u32,
    /// Host connections to `<uds>` that have not finished their CONNECT line.
    pub max_pending_host: usize,
    /// RST packets for unknown connections waiting for an RX buffer; when
    /// full, TX processing pauses (back-pressure on the guest).
    pub max_pending_rst: usize,
    /// How long a host `CONNECT` waits for the guest's RESPONSE before the
    /// host stream is closed and the guest gets an RST.
    pub connect_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            conn_buf_size: 256 * 1024,
            credit_update_threshold: 64 * 1024,
            max_pending_host: 32,
            max_pending_rst: 128,
            // Firecracker's vsock uses the same 2 s for host-initiated connects.
            connect_timeout: std::time::Duration::from_secs(2),
        }
    }
}

/// Errors of the vsock core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest CID {0} is invalid: CIDs 0, 1 and 2 are reserved (hypervisor, local, host) and {max} is VMADDR_CID_ANY; use 3 or more", max = proto::CID_ANY)]
    InvalidGuestCid(u64),
    #[error("{0} exists and is not a Unix socket; refusing to replace it (remove it or pick another --uds path)")]
    UdsPathNotSocket(std::path::PathBuf),
    // `cause`, not `source`: the message carries it, and a source would print it twice in an
    // error chain ("Caused by: ..." repeating the same text).
    #[error("binding the vsock Unix socket {path}: {cause}")]
    Bind {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
    #[error("no packet to deliver")]
    NoData,
    #[error("the RX side is full; retry this TX packet after the guest took RX packets")]
    Backpressure,
    #[error("malformed packet: {0}")]
    Packet(#[from] virtio_vsock::packet::Error),
    #[error("vhost-user: {0}")]
    VhostUser(String),
    #[error("vhost-user socket {path}: {cause}")]
    VhostUserSocket {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Checks that `cid` may be a guest's CID.
pub fn validate_guest_cid(cid: u64) -> Result<()> {
    if !(proto::FIRST_GUEST_CID..proto::CID_ANY).contains(&cid) {
        return Err(Error::InvalidGuestCid(cid));
    }
    Ok(())
}

/// The packet seam between the device (virtqueues) and a backend.
pub trait VsockChannel {
    /// Fills `pkt` (an RX buffer of the guest) with the next packet for the
    /// guest. [`Error::NoData`] when there is none; the buffer is unused then.
    fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Result<()>;
    /// Takes a packet the guest sent (TX). [`Error::Backpressure`] means the
    /// packet was not looked at: hand it again after RX made progress.
    fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<'_, B>) -> Result<()>;
    /// Whether `recv_pkt` may produce a packet.
    fn has_pending_rx(&self) -> bool;
}

/// The event seam: a backend exposes one pollable fd (an epoll fd of its
/// own) and is told when it is ready.
pub trait VsockEpollListener {
    fn as_raw_fd(&self) -> RawFd;
    fn interest(&self) -> EventSet {
        EventSet::IN
    }
    /// Handles whatever became ready, without blocking.
    fn notify(&mut self, evset: EventSet);
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        eprintln!("{level}: {}", record.args());
    }
    fn flush(&self) {}
}

static STDERR_LOG: StderrLog = StderrLog;

/// Sends `log` records (this crate's and vhost-user's) to stderr, for
/// binaries that have no logger of their own; called again, only the level changes.
pub fn log_to_stderr(level: log::LevelFilter) {
    let _ = log::set_logger(&STDERR_LOG);
    log::set_max_level(level);
}

/// A full vsock backend.
pub trait VsockBackend: VsockChannel + VsockEpollListener + Send {}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// The cause is in the message once and is not also a `source()` (an error chain would
    /// print it twice).
    #[test]
    fn causes_are_printed_once() {
        let e = Error::VhostUserSocket {
            path: "/no/dir/v.sock".into(),
            cause: std::io::Error::other("socket error: No such file or directory"),
        };
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(e.to_string().matches("No such file").count(), 1, "{e}");
        let b = Error::Bind {
            path: "/x".into(),
            cause: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(std::error::Error::source(&b).is_none());
    }
}
