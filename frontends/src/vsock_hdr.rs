//! `struct virtio_vsock_hdr` (virtio 1.2, 5.10.6), little-endian on the wire: one codec for
//! the guest agent's vhost-vsock frontend and the VMM side's synthetic test driver.

/// `sizeof(struct virtio_vsock_hdr)`.
pub const HDR_LEN: usize = 44;

/// `struct virtio_vsock_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub ty: u16,
    /// Operation.
    pub op: u16,
    /// Flags (SHUTDOWN: 1 = RCV, 2 = SEND).
    pub flags: u32,
    /// Receive buffer space of the sender.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed.
    pub fwd_cnt: u32,
}

impl Hdr {
    /// Little-endian wire bytes.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.ty.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses wire bytes (`None` if too short).
    pub fn parse(b: &[u8]) -> Option<Hdr> {
        let b = b.get(..HDR_LEN)?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Some(Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            ty: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        let h = Hdr {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 52,
            len: 4096,
            ty: 1,
            op: 5,
            flags: 3,
            buf_alloc: 1 << 18,
            fwd_cnt: 77,
        };
        let b = h.to_bytes();
        assert_eq!(b.len(), HDR_LEN);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(Hdr::parse(&b), Some(h));
        let mut long = b.to_vec();
        long.extend_from_slice(b"payload");
        assert_eq!(Hdr::parse(&long), Some(h));
        assert_eq!(Hdr::parse(&b[..HDR_LEN - 1]), None);
    }
}
