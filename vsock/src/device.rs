//! Moves packets between the virtqueues in guest memory and a
//! [`VsockChannel`]; the same code serves any front door (vhost-user here,
//! virtio-mmio in the VMM), since it only needs a `QueueT` and guest memory.

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestMemory};

use crate::proto::MAX_PKT_BUF_SIZE;
use crate::{Error, VsockChannel, VsockPacket, PKT_HEADER_SIZE};

/// Queue indices (virtio 1.2, 5.10.2).
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
pub const NUM_QUEUES: usize = 3;
/// Largest queue size we accept.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// What one pass over the TX queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxOutcome {
    /// Descriptor chains were returned to the guest (notify it).
    pub used: bool,
    /// Stopped on back-pressure: run it again after RX made progress.
    pub stalled: bool,
    /// Packets handed to the channel.
    pub packets: u64,
}

/// Takes every packet the guest queued on TX. Malformed chains are returned
/// unused and dropped.
pub fn process_tx<M, Q, C>(mem: &M, queue: &mut Q, chan: &mut C) -> TxOutcome
where
    M: GuestMemory,
    Q: QueueT,
    C: VsockChannel,
{
    let mut out = TxOutcome::default();
    if !queue.ready() {
        return out;
    }
    let mut bounce_buf = Vec::new();
    let bounce = &mut bounce_buf;
    // At most one queue's worth per pass, whatever the avail index says.
    for _ in 0..queue.size().max(1) {
        let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let gather = chain.clone();
        let sent = match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_BUF_SIZE) {
            Ok(pkt) => chan.send_pkt(&pkt),
            // Data over several descriptors (Linux sends paged skbs that
            // way): copy it into a bounded bounce buffer.
            Err(e) => match gather_tx(mem, gather, bounce) {
                Some((hdr, len)) => {
                    let data = bounce.get_mut(..len).filter(|d| !d.is_empty());
                    let mut hdr_slot = [0u8; PKT_HEADER_SIZE];
                    // SAFETY: both buffers outlive `pkt` and nothing else
                    // touches them meanwhile.
                    match unsafe { VsockPacket::new(&mut hdr_slot, data) } {
                        Ok(mut pkt) => match pkt.set_header_from_raw(&hdr) {
                            Ok(()) => chan.send_pkt(&pkt),
                            Err(e) => Err(e.into()),
                        },
                        Err(e) => Err(e.into()),
                    }
                }
                None => {
                    log::debug!("vsock: dropping malformed TX chain {head}: {e}");
                    Ok(())
                }
            },
        };
        match sent {
            Err(Error::Backpressure) => {
                queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                out.stalled = true;
                break;
            }
            _ => out.packets += 1,
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            log::debug!("vsock: TX add_used({head}): {e}");
        }
        out.used = true;
    }
    out
}

/// Reads a TX packet whose header and data are spread over any number of
/// device-readable descriptors: the header into the returned array, the
/// data (at most [`MAX_PKT_BUF_SIZE`] bytes) into `bounce`.
fn gather_tx<G, M>(
    mem: &G,
    chain: virtio_queue::DescriptorChain<M>,
    bounce: &mut Vec<u8>,
) -> Option<([u8; PKT_HEADER_SIZE], usize)>
where
    G: GuestMemory,
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut hdr = [0u8; PKT_HEADER_SIZE];
    let mut hdr_len = 0usize;
    let mut want: Option<usize> = None;
    bounce.clear();
    for desc in chain {
        if desc.is_write_only() {
            return None;
        }
        let mut addr = desc.addr();
        let mut left = desc.len() as usize;
        if hdr_len < PKT_HEADER_SIZE {
            let n = left.min(PKT_HEADER_SIZE - hdr_len);
            mem.read_slice(&mut hdr[hdr_len..hdr_len + n], addr).ok()?;
            hdr_len += n;
            left -= n;
            addr = addr.checked_add(n as u64)?;
            if hdr_len == PKT_HEADER_SIZE {
                let len = u32::from_le_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]);
                if len > MAX_PKT_BUF_SIZE {
                    return None;
                }
                want = Some(len as usize);
            }
        }
        let Some(w) = want else { continue };
        let n = left.min(w - bounce.len());
        if n > 0 {
            let start = bounce.len();
            bounce.resize(start + n, 0);
            mem.read_slice(&mut bounce[start..], addr).ok()?;
        }
        if bounce.len() == w {
            break;
        }
    }
    let w = want?;
    (bounce.len() == w).then_some((hdr, w))
}

/// Fills the guest's RX buffers while the channel has packets. Returns the
/// number of buffers used (notify the guest when non-zero).
pub fn process_rx<M, Q, C>(mem: &M, queue: &mut Q, chan: &mut C) -> u64
where
    M: GuestMemory,
    Q: QueueT,
    C: VsockChannel,
{
    let mut used = 0;
    if !queue.ready() {
        return 0;
    }
    for _ in 0..queue.size().max(1) {
        if !chan.has_pending_rx() {
            break;
        }
        let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_BUF_SIZE) {
            Ok(mut pkt) => match chan.recv_pkt(&mut pkt) {
                Ok(()) => PKT_HEADER_SIZE as u32 + pkt.len(),
                Err(_) => {
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                    break;
                }
            },
            Err(e) => {
                log::debug!("vsock: unusable RX chain {head}: {e}");
                0
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            log::debug!("vsock: RX add_used({head}): {e}");
        }
        used += 1;
    }
    used
}

/// Runs TX and RX until neither makes progress (a TX pass stalled on
/// back-pressure runs again once RX freed room). Returns (tx used, rx used).
pub fn process_queues<M, Q, C>(mem: &M, rxq: &mut Q, txq: &mut Q, chan: &mut C) -> (bool, bool)
where
    M: GuestMemory,
    Q: QueueT,
    C: VsockChannel,
{
    let (mut tx_used, mut rx_used) = (false, false);
    // Bounded: each round either stops or moved a queue's worth of buffers.
    for _ in 0..64 {
        let tx = process_tx(mem, txq, chan);
        let rx = process_rx(mem, rxq, chan);
        tx_used |= tx.used;
        rx_used |= rx > 0;
        // Again only if RX moved and TX waits on it or RX has more.
        let again = rx > 0 && (tx.stalled || (tx.packets > 0 && chan.has_pending_rx()));
        if !again {
            break;
        }
    }
    (tx_used, rx_used)
}
