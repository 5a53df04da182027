//! virtio-net (virtio 1.2, 5.1) with two kinds of host backend:
//!
//! * userspace: frames cross the VMM behind the [`NetBackend`] seam — a tap
//!   ([`tap::Tap`]) in the VMM, a memory backend in tests;
//! * host vhost-net ([`NetDevice::vhost`], module [`vhost`]): the rings go to the
//!   host kernel's `/dev/vhost-net` with a tap as its backend, and the VMM only
//!   relays interrupts (optionally under host kcov, [`crate::host_kcov`]).
//!
//! * Features: VERSION_1, MAC, STATUS, MRG_RXBUF and RING_EVENT_IDX; with a
//!   backend that takes vnet headers as they are ([`NetBackend::offloads`], the
//!   tap) also the offloads CSUM, GUEST_CSUM, HOST_TSO4/6 and GUEST_TSO4/6: the
//!   guest's checksum/GSO header goes to the tap, and the tap may hand the guest
//!   partially checksummed frames and TCP segments of up to 64 KiB (it is told
//!   which with `TUNSETOFFLOAD`, from what the driver acknowledged). Without
//!   MRG_RXBUF every RX frame goes
//!   into one buffer chain, which must hold the 12-byte header plus the frame
//!   (else the frame is dropped and counted in [`NetStats::rx_dropped`]);
//!   with it a frame spreads over as many chains as it takes (consecutive
//!   used entries, `num_buffers` = their count), and waits, consuming none,
//!   while the guest has posted too few.
//! * Config space: `mac` (6 bytes, read-only), `status` (LINK_UP), and
//!   `max_virtqueue_pairs` = 1 (10 bytes).
//! * Queues: 0 = receiveq1, 1 = transmitq1 (no control queue).
//! * Every TX chain is a `virtio_net_hdr_v1` (12 bytes) and an Ethernet frame.
//!   Without negotiated offloads the frame goes to the backend after a zeroed
//!   header; with them the guest's header goes along, checked first: NEEDS_CSUM
//!   only with CSUM, a TCPv4/TCPv6 GSO type only with HOST_TSO4/6, no other
//!   flags or GSO types (a chain that breaks this is a bad chain). Every RX
//!   frame reaches the guest after the backend's header (zero unless guest
//!   offloads were negotiated) with `num_buffers` set (1 without MRG_RXBUF).
//!
//! Guest descriptors are hostile: chains that cannot be read or written, are
//! shorter than a header plus an Ethernet header, or longer than
//! [`MAX_FRAME_LEN`] are returned to the guest with length 0 and counted in
//! [`NetStats::bad_chains`]; nothing panics. Host memory is bounded: one RX and
//! one TX frame buffer of [`VNET_HDR_LEN`] + [`MAX_FRAME_LEN`] bytes per active
//! device (plus, with MRG_RXBUF, a list of at most a queue's worth of chains
//! per frame); frames wait in the backend (the tap's own bounded queue) while the
//! guest has no RX buffers.
//!
//! Files: `device.rs` the device model ([`NetDevice`]); `spec.rs` feature bits,
//! config space, the vnet header and its offload rules; `backend.rs` the
//! [`NetBackend`] seam and [`tap`] its tap; `worker.rs` the userspace queue
//! handling; [`vhost`] the host vhost-net path; `cmdline.rs` `--net`
//! ([`NetSpec`]); `stats.rs` the counters ([`NetStats`]). No file imports one
//! that imports it back: `mod.rs` only re-exports.

mod backend;
mod cmdline;
mod device;
mod spec;
mod stats;
pub mod tap;
#[cfg(test)]
mod testutil;
pub mod vhost;
mod worker;

pub use backend::{NetBackend, SharedBackend};
pub use cmdline::{parse_mac, BuiltNet, NetSpec, NetSpecError};
pub use device::NetDevice;
pub use spec::{
    check_tx_header, tun_offloads, CONFIG_SIZE, DEFAULT_MAC, F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4,
    F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6, F_MAC, F_MRG_RXBUF, F_STATUS, MAX_FRAME_LEN,
    MIN_FRAME_LEN, NET_QUEUE_SIZE, OFFLOAD_FEATURES, RXQ, TXQ, VNET_HDR_LEN,
};
pub use stats::{NetHandle, NetStats};
