//! Kernel frontends shared by the guest agent and the VMM, so each is written once:
//!
//! * [`kcov`]: `/sys/kernel/debug/kcov` — areas, remote coverage with a common handle;
//!   the agent uses it for the guest kernel, the VMM (`--host-kcov`) for the host kernel.
//! * [`tap`]: tap interfaces with a vnet header (the VMM's tap backend, the agent's
//!   vhost-net backend).
//! * [`vhost`]: what every kernel vhost frontend shares (errors, memory table, rings).
//! * [`vhost_net`]: handing two rings and a tap to a kernel's vhost-net; the agent drives the
//!   guest's vhost-net with it, the VMM the host's.
//! * [`vhost_raw`]: the vhost uapi ioctl by ioctl with the kernel's errno (malformed calls on
//!   purpose, dirty log, IOTLB messages, fork-owner), for the agent's breadth workloads.
//! * [`vring`]: the driver side of virtio split rings: [`vring::DriverRing`] (raw ring
//!   operations over any guest memory: the vsock crate's synthetic driver and fuzzer) and
//!   [`vring::SplitQueue`] on top of it (the agent's vhost frontends, in its own memory).
//! * [`vsock_hdr`]: the `virtio_vsock_hdr` codec (the agent's vhost-vsock frontend, the vsock
//!   crate's test driver).

pub mod kcov;
pub mod netif;
pub mod tap;
pub mod vhost;
pub mod vhost_net;
pub mod vhost_raw;
pub mod vring;
pub mod vsock_hdr;
