//! virtio-net facts the device follows (virtio 1.2, 5.1): feature bits, the
//! config space, the vnet header and the rules for the offloads in it.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

/// Size of `virtio_net_hdr_v1` (VERSION_1 always uses it, with `num_buffers`).
pub const VNET_HDR_LEN: usize = frontends::tap::VNET_HDR_LEN;
/// Offset of `num_buffers` in the header.
pub(super) const NUM_BUFFERS_OFFSET: usize = 10;
/// Longest Ethernet frame (without the vnet header) carried either way: a
/// 64 KiB MTU plus an Ethernet header and a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// Shortest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Maximum size of both queues.
pub const NET_QUEUE_SIZE: u16 = 256;
/// receiveq1.
pub const RXQ: usize = 0;
/// transmitq1.
pub const TXQ: usize = 1;
/// The MAC the VMM gives the guest unless told otherwise (QEMU's default).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Feature bit VIRTIO_NET_F_MAC.
pub const F_MAC: u64 = 1 << VIRTIO_NET_F_MAC;
/// Feature bit VIRTIO_NET_F_MRG_RXBUF.
pub const F_MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
/// Feature bit VIRTIO_NET_F_STATUS.
pub const F_STATUS: u64 = 1 << VIRTIO_NET_F_STATUS;
/// Feature bit VIRTIO_NET_F_CSUM: the driver may send partially checksummed frames.
pub const F_CSUM: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;
/// Feature bit VIRTIO_NET_F_GUEST_CSUM: the driver takes partially checksummed frames.
pub const F_GUEST_CSUM: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM;
/// Feature bit VIRTIO_NET_F_GUEST_TSO4.
pub const F_GUEST_TSO4: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4;
/// Feature bit VIRTIO_NET_F_GUEST_TSO6.
pub const F_GUEST_TSO6: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO6;
/// Feature bit VIRTIO_NET_F_HOST_TSO4.
pub const F_HOST_TSO4: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_TSO4;
/// Feature bit VIRTIO_NET_F_HOST_TSO6.
pub const F_HOST_TSO6: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_TSO6;
/// The offloads a header-passing backend lets the device offer.
pub const OFFLOAD_FEATURES: u64 =
    F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6;
/// Size of the config space (mac, status, max_virtqueue_pairs).
pub const CONFIG_SIZE: usize = 10;

/// `virtio_net_hdr.flags`: VIRTIO_NET_HDR_F_NEEDS_CSUM.
const HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type` values.
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;

/// Checks a TX header against the offloads the driver negotiated (`features`):
/// `Err` names what the guest may not ask for.
pub fn check_tx_header(hdr: &[u8; VNET_HDR_LEN], features: u64) -> Result<(), String> {
    let (flags, gso) = (hdr[0], hdr[1]);
    match flags {
        0 => {}
        HDR_F_NEEDS_CSUM if features & F_CSUM != 0 => {}
        f => return Err(format!("header flags {f:#x} not allowed")),
    }
    let allowed = match gso {
        GSO_NONE => true,
        GSO_TCPV4 => features & F_HOST_TSO4 != 0,
        GSO_TCPV6 => features & F_HOST_TSO6 != 0,
        _ => false,
    };
    if !allowed {
        return Err(format!("GSO type {gso:#x} not negotiated"));
    }
    if gso != GSO_NONE && flags != HDR_F_NEEDS_CSUM {
        return Err("GSO without NEEDS_CSUM".into());
    }
    Ok(())
}

/// The `TUNSETOFFLOAD` flags for the guest offloads in `features`.
pub fn tun_offloads(features: u64) -> libc::c_uint {
    if features & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if features & F_GUEST_TSO4 != 0 {
        f |= libc::TUN_F_TSO4;
    }
    if features & F_GUEST_TSO6 != 0 {
        f |= libc::TUN_F_TSO6;
    }
    f
}

/// The config space of a device with MAC `mac`: `mac`, `status` = LINK_UP,
/// `max_virtqueue_pairs` = 1.
pub(super) fn config_space(mac: [u8; 6]) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    c[0..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c
}

/// Prepares the header of an RX frame (`frame` starts with the backend's
/// header): kept when the driver takes offloads, zeroed otherwise (a backend
/// frame then carries nothing the guest may act on); `num_buffers` set.
pub(super) fn rx_header(frame: &mut [u8], features: u64, num_buffers: u16) {
    if features & F_GUEST_CSUM == 0 {
        frame[..VNET_HDR_LEN].fill(0);
    }
    frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_header_rules_and_tun_flags() {
        let h = |flags: u8, gso: u8| {
            let mut h = [0u8; VNET_HDR_LEN];
            h[0] = flags;
            h[1] = gso;
            h
        };
        let all = OFFLOAD_FEATURES;
        assert!(check_tx_header(&h(0, 0), 0).is_ok());
        assert!(check_tx_header(&h(1, 0), 0).is_err());
        assert!(check_tx_header(&h(1, 0), F_CSUM).is_ok());
        assert!(check_tx_header(&h(1, 1), F_CSUM).is_err());
        assert!(check_tx_header(&h(1, 1), all).is_ok());
        assert!(check_tx_header(&h(1, 4), all).is_ok());
        assert!(
            check_tx_header(&h(0, 1), all).is_err(),
            "GSO needs NEEDS_CSUM"
        );
        assert!(
            check_tx_header(&h(1, 3), all).is_err(),
            "UDP GSO not offered"
        );
        assert!(
            check_tx_header(&h(1, 0x81), all).is_err(),
            "ECN not offered"
        );
        assert!(check_tx_header(&h(4, 0), all).is_err());
        assert_eq!(tun_offloads(0), 0);
        assert_eq!(tun_offloads(F_GUEST_TSO4), 0, "TSO needs GUEST_CSUM");
        assert_eq!(tun_offloads(F_GUEST_CSUM), libc::TUN_F_CSUM);
        assert_eq!(
            tun_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }
}
