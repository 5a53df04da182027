//! The VMM's vhost-net backend and `--host-kcov`, exercised for real inside the testbed's
//! guest (whose kernel has vhost-net and kcov, unlike our CI hosts).
//!
//! Built static and put into the initramfs by the `vhost_backend_in_guest` test, it plays
//! the host: the VMM's [`NetDevice::vhost`] device is activated exactly as a vCPU thread
//! would activate it on DRIVER_OK, over "guest memory" that is one anonymous mapping of
//! this process, with the guest agent's split-ring driver (`guest_agent::vring`) writing
//! the rings a guest driver would write. [`HostKcov`] owns `VHOST_SET_OWNER`, so the
//! kernel's vhost worker reports into its area.
//!
//! Checks: TX frames come out of the tap byte-exact (AF_PACKET), injected frames land in
//! RX buffers byte-exact, interrupts were relayed; then prints the host-kcov PCs as
//! `@@HOSTPC@@ 0x… 0x…` lines for the test to symbolize. Exit status 0 on success, 1 on a
//! failed check, 2 when the kernel lacks what it needs.
//!
//! Usage: `vhost_net_selftest [FRAMES] [SIZE]` (defaults 64 and 1000).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use guest_agent::net::{frame_id, test_frame, PacketSocket, NET_HDR_LEN, TEST_ETHERTYPE};
use guest_agent::vring::{Arena, Segment, SplitQueue};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm::devices::virtio::net::tap::Tap;
use vmm::devices::virtio::net::{NetDevice, DEFAULT_MAC, F_MAC, F_STATUS};
use vmm::devices::virtio::{features, ActivateContext, Interrupt, VirtioDevice};
use vmm::host_kcov::HostKcov;

/// PCs per console line.
const PCS_PER_LINE: usize = 8;
const QUEUE_SIZE: u16 = 256;
const RX_BUF: usize = 2048;
const TIMEOUT: Duration = Duration::from_secs(10);

fn queue_of(q: &SplitQueue) -> Result<Queue, String> {
    let c = q.config();
    let mut vq = Queue::new(q.size()).map_err(|e| format!("queue: {e}"))?;
    vq.set_size(c.queue_size);
    vq.try_set_desc_table_address(GuestAddress(c.desc_table_addr))
        .and_then(|_| vq.try_set_avail_ring_address(GuestAddress(c.avail_ring_addr)))
        .and_then(|_| vq.try_set_used_ring_address(GuestAddress(c.used_ring_addr)))
        .map_err(|e| format!("queue addresses: {e}"))?;
    vq.set_event_idx(true);
    vq.set_ready(true);
    Ok(vq)
}

fn run(frames: u32, size: usize) -> Result<(), (u8, String)> {
    let fail = |m: String| (1u8, m);
    let hk = HostKcov::start().map_err(|e| (2, e.to_string()))?;
    let tap = Tap::open("vmmtap%d").map_err(|e| (2, e.to_string()))?;
    tap.set_up().map_err(|e| fail(e.to_string()))?;
    let ifindex = tap.ifindex().map_err(|e| fail(e.to_string()))?;
    let tap_name = tap.name().to_owned();
    let out = PacketSocket::bind(ifindex, TEST_ETHERTYPE).map_err(|e| fail(e.to_string()))?;
    let inject = PacketSocket::bind(ifindex, 0).map_err(|e| fail(e.to_string()))?;

    let q = usize::from(QUEUE_SIZE);
    let mut arena = Arena::new(8 * 4096 + 2 * q * (24 + NET_HDR_LEN + RX_BUF) + (1 << 16))
        .map_err(|e| fail(e.to_string()))?;
    let mut rx =
        SplitQueue::new(&mut arena, QUEUE_SIZE, false, true).map_err(|e| fail(e.to_string()))?;
    let mut tx =
        SplitQueue::new(&mut arena, QUEUE_SIZE, false, true).map_err(|e| fail(e.to_string()))?;
    let rx_slots: Vec<u64> = (0..q / 2)
        .map(|_| arena.alloc((NET_HDR_LEN + RX_BUF) as u64, 64))
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    let tx_slot = arena
        .alloc((NET_HDR_LEN + size) as u64, 64)
        .map_err(|e| fail(e.to_string()))?;
    let post = |rx: &mut SplitQueue, i: usize| {
        rx.add(
            &[
                Segment {
                    addr: rx_slots[i],
                    len: NET_HDR_LEN as u32,
                    write: true,
                },
                Segment {
                    addr: rx_slots[i] + NET_HDR_LEN as u64,
                    len: RX_BUF as u32,
                    write: true,
                },
            ],
            i as u64,
        )
    };
    for i in 0..rx_slots.len() {
        post(&mut rx, i).map_err(|e| fail(e.to_string()))?;
    }
    rx.publish().map_err(|e| fail(e.to_string()))?;

    // DRIVER_OK, as the transport hands it to the device.
    let mut dev = NetDevice::vhost(tap, DEFAULT_MAC, Some(hk.owner()));
    let handle = dev.handle();
    let interrupt = Arc::new(Interrupt::new().map_err(|e| fail(e.to_string()))?);
    let kicks = [rx.kick.try_clone(), tx.kick.try_clone()];
    let [Ok(rx_kick), Ok(tx_kick)] = kicks else {
        return Err(fail("eventfd clone".into()));
    };
    // Queue order of the device: receiveq1 (RXQ = 0), transmitq1 (TXQ = 1).
    let queues = vec![queue_of(&rx).map_err(fail)?, queue_of(&tx).map_err(fail)?];
    dev.activate(ActivateContext {
        mem: (*arena.mem()).clone(),
        features: features::VERSION_1 | features::RING_EVENT_IDX | F_MAC | F_STATUS,
        queues,
        queue_evts: vec![rx_kick, tx_kick],
        interrupt: interrupt.clone(),
    })
    .map_err(|e| (2, format!("activation: {e}")))?;

    // TX: one frame at a time through the ring, out of the tap.
    for seq in 0..frames {
        let f = test_frame(b'T', seq, size);
        arena
            .write(tx_slot, &[0u8; NET_HDR_LEN])
            .map_err(|e| fail(e.to_string()))?;
        arena
            .write(tx_slot + NET_HDR_LEN as u64, &f)
            .map_err(|e| fail(e.to_string()))?;
        tx.add(
            &[
                Segment {
                    addr: tx_slot,
                    len: NET_HDR_LEN as u32,
                    write: false,
                },
                Segment {
                    addr: tx_slot + NET_HDR_LEN as u64,
                    len: size as u32,
                    write: false,
                },
            ],
            u64::from(seq),
        )
        .map_err(|e| fail(e.to_string()))?;
        tx.publish().map_err(|e| fail(e.to_string()))?;
        tx.wait_used(TIMEOUT)
            .map_err(|e| fail(format!("TX frame {seq}: {e}")))?;
        loop {
            let got = out
                .recv(TIMEOUT)
                .map_err(|e| fail(e.to_string()))?
                .ok_or_else(|| fail(format!("TX frame {seq} never came out of {tap_name}")))?;
            match frame_id(&got) {
                Some((b'T', s)) if s == seq => {
                    if got != f {
                        return Err(fail(format!("TX frame {seq} differs")));
                    }
                    break;
                }
                _ => continue, // not ours (e.g. the stack's own frames)
            }
        }
    }
    // RX: injected into the tap, into the ring.
    let mut received = 0u32;
    for seq in 0..frames {
        let f = test_frame(b'R', seq, size);
        inject.send(&f).map_err(|e| fail(e.to_string()))?;
        loop {
            let (token, len) = rx
                .wait_used(TIMEOUT)
                .map_err(|e| fail(format!("RX frame {seq}: {e}")))?;
            let i = usize::try_from(token)
                .ok()
                .filter(|&i| i < rx_slots.len())
                .ok_or_else(|| fail(format!("RX token {token} is no buffer of ours")))?;
            let len = (len as usize).min(NET_HDR_LEN + RX_BUF);
            let mut buf = vec![0u8; len];
            arena
                .read(rx_slots[i], &mut buf)
                .map_err(|e| fail(e.to_string()))?;
            post(&mut rx, i).map_err(|e| fail(e.to_string()))?;
            rx.publish().map_err(|e| fail(e.to_string()))?;
            let frame = buf.get(NET_HDR_LEN..).unwrap_or_default();
            if frame_id(frame) == Some((b'R', seq)) {
                if frame != f.as_slice() {
                    return Err(fail(format!("RX frame {seq} differs")));
                }
                received += 1;
                break;
            }
        }
    }
    dev.reset();
    let stats = handle.stats();
    let cov = hk.finish().map_err(|e| fail(e.to_string()))?;
    let pcs = cov.unique_pcs();
    println!(
        "vhost-selftest: {frames} TX and {received} RX frames of {size} bytes byte-exact through \
         the VMM's vhost backend; {} interrupts relayed; host kcov handle {:#018x}: {} PCs, {} distinct, overflow {}",
        stats.vhost_calls,
        cov.handle,
        cov.coverage.entry_count(),
        pcs.len(),
        cov.coverage.overflow
    );
    for chunk in pcs.chunks(PCS_PER_LINE) {
        let words: Vec<String> = chunk.iter().map(|p| format!("{p:#x}")).collect();
        println!("@@HOSTPC@@ {}", words.join(" "));
    }
    if pcs.is_empty() {
        return Err(fail(
            "host kcov collected no PCs from the vhost worker".into(),
        ));
    }
    if stats.vhost_calls == 0 {
        return Err(fail("no interrupt was relayed from vhost".into()));
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let frames = args.next().and_then(|a| a.parse().ok()).unwrap_or(64u32);
    let size = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000usize)
        .clamp(60, RX_BUF);
    match run(frames, size) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, m)) => {
            eprintln!("vhost-selftest: {m}");
            ExitCode::from(code)
        }
    }
}
