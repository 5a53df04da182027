/* virtio-net throughput test guest (benches/src/net.rs, benches/tests/net.rs,
 * `cargo xtask bench net`).
 *
 * Polls (no interrupts under PVM; it asks for none: VRING_AVAIL_F_NO_INTERRUPT,
 * or a used_event kept half a ring-index space away with EVENT_IDX). Finds the
 * device through `virtio_mmio.device=<size>@<base>:<irq>`, negotiates
 * VERSION_1 + MAC + STATUS (+ RING_EVENT_IDX when offered, unless
 * `nb.noeventidx`), sets up receiveq1 (0) and transmitq1 (1) with QSZ entries,
 * then runs one direction, chosen on the command line:
 *
 *   nb.dir=tx|rx  nb.frames=N  nb.len=S  [nb.verify]
 *
 * S is the Ethernet frame length (no vnet header, no FCS), MIN_LEN..MAX_LEN.
 * Frame seq (0..N-1) is: destination MAC, source MAC, ETHERTYPE (big-endian),
 * seq (u32 little-endian at SEQ_OFF), then byte j = pat(j) for j >= PAT_OFF.
 * TX frames go to ff:ff:ff:ff:ff:ff from the config MAC; RX frames are
 * expected to carry the same layout (the host picks the addresses).
 *
 *  tx: each frame is a chain of two descriptors: the slot's own head (the
 *      12-byte vnet header and the frame's first PAT_OFF bytes) and the
 *      payload (bytes PAT_OFF..S), one copy in POOL that every frame shares.
 *      Both are built once (this guest's CPU is slow under PVM: no per-byte
 *      work per frame); per frame the guest only stamps seq into a recycled
 *      head. It posts every free slot (TX_SLOTS of them), kicks (only where
 *      the device asked for it), recycles used slots, until the device has
 *      used all N.
 *  rx: posts up to QSZ buffers of 12 + S bytes (as many as POOL holds) and
 *      reposts each one as soon as it has looked at it. Frames of another
 *      ethertype are counted as ignored; frames of the wrong length as bad;
 *      seq gaps as lost, seq going backwards as reordered. With nb.verify it
 *      also sums frame_sum() of every good frame. It ends after N good frames,
 *      or when the host says stop (CTRL_STOP read from BENCH_PORT, polled
 *      every CTRL_EVERY idle polls), or after IDLE_LIMIT idle polls.
 *
 * BENCH_PORT (out %eax): 0 when the transfer starts (the host's clock starts);
 * then, rx: the count of good frames, at least every PROGRESS_EVERY frames and
 * whenever the used ring is drained (the host keeps a window of frames in
 * flight on it); tx: N (or what was used) once all are used. in %eax: the
 * host's control word.
 *
 * Reports (32-bit, REPORT_PORT), in this order:
 *   BOOT_MAGIC, DeviceID, DeviceFeatures word 0, word 1,
 *   status after FEATURES_OK (END_MAGIC next if refused),
 *   QueueNumMax of queue 0, of queue 1 (END_MAGIC next if either < QSZ),
 *   status after DRIVER_OK,
 *   direction (0 tx, 1 rx), N, S, verify, event_idx, slots/buffers posted
 *   (0: N or S out of range, END_MAGIC next);
 *   tx: frames posted, used entries seen, kicks, bad used ids;
 *   rx: good frames, their bytes lo, hi, ignored, bad length, lost (gaps),
 *       reordered, bad used ids, checksum lo, hi (0 without nb.verify), kicks,
 *       stopped by the host (1) or not (0);
 *   END_MAGIC.
 * Mirrored in benches/src/net.rs.
 */
#define QSZ 256
#include "virtio_guest.h"

#define BENCH_PORT 0x518
#define CTRL_STOP 1
#define HDR 12
#define ETHERTYPE 0x88b6
#define SEQ_OFF 14
#define PAT_OFF 18
#define MIN_LEN 60
#define MAX_LEN 65553 /* MAX_FRAME_LEN of src/devices/virtio/net/spec.rs */
#define MAX_FRAMES 0x7fffffffu
#define POOL_SIZE (16u << 20)
#define SLOT_ALIGN 64
#define TX_SLOTS (QSZ / 2) /* slot s: descriptors 2s (head) and 2s+1 (payload) */
#define PROGRESS_EVERY 32
#define CTRL_EVERY 2048
#define IDLE_LIMIT 400000000UL

#define F_MAC (1u << 5)
#define F_STATUS (1u << 16)
#define F_EVENT_IDX (1u << 29)
#define USED_F_NO_NOTIFY 1
#define AVAIL_F_NO_INTERRUPT 1

typedef uint64_t __attribute__((may_alias, aligned(1))) u64_unaligned;
typedef uint32_t __attribute__((may_alias, aligned(1))) u32_unaligned;

struct vq {
	struct desc desc[QSZ];
	struct avail avail __attribute__((aligned(64)));
	struct used used __attribute__((aligned(64)));
	uint16_t last_used; /* next used entry to look at */
	uint16_t kicked;    /* avail.idx at the last kick decision */
};

static struct vq vqs[2] __attribute__((aligned(4096)));
static uint8_t pool[POOL_SIZE] __attribute__((aligned(4096)));
/* TX: per slot, the vnet header and the frame's first PAT_OFF bytes. */
static uint8_t txhead[TX_SLOTS][SLOT_ALIGN] __attribute__((aligned(64)));
static int event_idx;
static uint32_t kicks;

static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

/* The number after `key` on the command line, or dflt. */
static uint64_t param(const char *cmdline, const char *key, uint64_t dflt)
{
	const char *p = find(cmdline, key);
	if (!p)
		return dflt;
	while (*key)
		key++, p++;
	return number(&p);
}

/* Payload byte j of every frame (mirrored in benches/src/net.rs). */
static inline uint8_t pat(uint32_t j)
{
	return (uint8_t)(j * 7 + (j >> 8) * 3 + 1);
}

/* Fletcher-style sum over little-endian 64-bit words, the tail zero-padded
 * (mirrored in benches/src/net.rs frame_sum). */
static uint64_t frame_sum(const uint8_t *f, uint32_t len)
{
	uint64_t a = 0, b = 0, w = 0;
	uint32_t i = 0;
	for (; i + 8 <= len; i += 8) {
		a += *(const u64_unaligned *)(f + i);
		b += a;
	}
	for (uint32_t k = 0; i + k < len; k++)
		w |= (uint64_t)f[i + k] << (8 * k);
	a += w;
	b += a;
	return a ^ (b * 0x9e3779b97f4a7c15ull) ^ len;
}

static void publish(struct vq *q, uint16_t head)
{
	q->avail.ring[q->avail.idx % QSZ] = head;
	barrier();
	q->avail.idx++;
}

/* Notify queue qi of what was published since the last call, where the device
 * asked for notifications (used flags, or avail_event with EVENT_IDX). */
static void kick(uint32_t qi)
{
	struct vq *q = &vqs[qi];
	volatile struct used *u = &q->used;
	barrier();
	uint16_t new = q->avail.idx, old = q->kicked;
	if (new == old)
		return;
	q->kicked = new;
	if (event_idx) {
		/* vring_need_event (virtio 1.2, 2.7.10) */
		if ((uint16_t)(new - u->avail_event - 1) >= (uint16_t)(new - old))
			return;
	} else if (u->flags & USED_F_NO_NOTIFY) {
		return;
	}
	kicks++;
	wr(R_QUEUE_NOTIFY, qi);
}

/* No interrupts: with EVENT_IDX, keep used_event half the index space ahead of
 * what the guest has seen (the device is never that far ahead). */
static void no_interrupts(struct vq *q)
{
	if (event_idx)
		*(volatile uint16_t *)&q->avail.used_event = (uint16_t)(q->last_used + 0x8000);
	else
		q->avail.flags = AVAIL_F_NO_INTERRUPT;
}

static void setup_queue(uint32_t i)
{
	struct vq *q = &vqs[i];
	no_interrupts(q);
	wr(R_QUEUE_SEL, i);
	queue_activate(QSZ, q->desc, &q->avail, &q->used);
}

/* seq is little-endian in the frame, like x86. */
static inline void put_seq(uint8_t *f, uint32_t seq)
{
	*(u32_unaligned *)(f + SEQ_OFF) = seq;
}

static uint32_t slot_size(uint32_t len)
{
	return (HDR + len + SLOT_ALIGN - 1) & ~(uint32_t)(SLOT_ALIGN - 1);
}

/* RX buffers of 12 + len bytes that fit in POOL, at most QSZ. */
static uint32_t rx_buffers(uint32_t len)
{
	uint32_t n = POOL_SIZE / slot_size(len);
	return n > QSZ ? QSZ : n;
}

static void run_tx(uint32_t n, uint32_t len, const uint8_t mac[6])
{
	struct vq *q = &vqs[1];
	volatile struct used *u = &q->used;
	uint32_t nslots = TX_SLOTS;
	uint16_t free_ids[TX_SLOTS];
	uint32_t nfree = 0;
	/* The payload all frames share, built once. */
	for (uint32_t j = PAT_OFF; j < len; j++)
		pool[j] = pat(j);
	for (uint32_t s = 0; s < nslots; s++) {
		uint8_t *b = txhead[s], *f = b + HDR;
		for (int j = 0; j < HDR; j++)
			b[j] = 0;
		for (int j = 0; j < 6; j++) {
			f[j] = 0xff;
			f[6 + j] = mac[j];
		}
		f[12] = ETHERTYPE >> 8;
		f[13] = ETHERTYPE & 0xff;
		put_seq(f, 0);
		struct desc *d = &q->desc[2 * s];
		d[0].addr = (uint64_t)(uintptr_t)b;
		d[0].len = HDR + PAT_OFF;
		d[0].flags = DESC_F_NEXT;
		d[0].next = (uint16_t)(2 * s + 1);
		d[1].addr = (uint64_t)(uintptr_t)(pool + PAT_OFF);
		d[1].len = len - PAT_OFF;
		d[1].flags = 0;
		d[1].next = 0;
		free_ids[nfree++] = (uint16_t)s;
	}
	outl(BENCH_PORT, 0);
	uint32_t sent = 0, used = 0, bad = 0;
	unsigned long idle = 0;
	while (used < n) {
		int progress = 0;
		while (q->last_used != u->idx) {
			barrier();
			uint32_t id = u->ring[q->last_used % QSZ].id;
			q->last_used++;
			used++;
			progress = 1;
			if (id % 2 == 0 && id / 2 < nslots && nfree < nslots)
				free_ids[nfree++] = (uint16_t)(id / 2);
			else
				bad++;
		}
		if (progress)
			no_interrupts(q);
		int posted = 0;
		while (nfree && sent < n) {
			uint16_t s = free_ids[--nfree];
			put_seq(txhead[s] + HDR, sent);
			publish(q, (uint16_t)(2 * s));
			sent++;
			posted = 1;
		}
		if (posted)
			kick(1);
		if (posted || progress) {
			idle = 0;
		} else if (++idle > IDLE_LIMIT) {
			break;
		} else {
			cpu_relax();
		}
	}
	outl(BENCH_PORT, used);
	report(sent);
	report(used);
	report(kicks);
	report(bad);
}

static void run_rx(uint32_t n, uint32_t len, int verify)
{
	struct vq *q = &vqs[0];
	volatile struct used *u = &q->used;
	uint32_t bsz = slot_size(len), nbufs = rx_buffers(len);
	for (uint32_t i = 0; i < nbufs; i++) {
		q->desc[i].addr = (uint64_t)(uintptr_t)(pool + i * bsz);
		q->desc[i].len = HDR + len;
		q->desc[i].flags = DESC_F_WRITE;
		q->desc[i].next = 0;
		publish(q, (uint16_t)i);
	}
	kick(0);
	outl(BENCH_PORT, 0);
	uint32_t got = 0, reported = 0, ignored = 0, badlen = 0, lost = 0, reordered = 0, bad = 0;
	uint32_t expect = 0, stopped = 0;
	uint64_t bytes = 0, sum = 0;
	unsigned long idle = 0, since_ctrl = 0;
	while (got < n) {
		int any = 0;
		while (q->last_used != u->idx) {
			barrier();
			uint32_t id = u->ring[q->last_used % QSZ].id;
			uint32_t ulen = u->ring[q->last_used % QSZ].len;
			q->last_used++;
			any = 1;
			if (id >= nbufs) {
				bad++;
				continue;
			}
			const uint8_t *f = pool + id * bsz + HDR;
			if (ulen < HDR + PAT_OFF || ulen > HDR + len) {
				badlen++;
			} else if (f[12] != (ETHERTYPE >> 8) || f[13] != (ETHERTYPE & 0xff)) {
				ignored++;
			} else if (ulen != HDR + len) {
				badlen++;
			} else {
				uint32_t seq = *(const u32_unaligned *)(f + SEQ_OFF);
				if (seq >= expect) {
					lost += seq - expect;
					expect = seq + 1;
				} else {
					reordered++;
				}
				got++;
				bytes += len;
				if (verify)
					sum += frame_sum(f, len);
			}
			publish(q, (uint16_t)id);
			if (got - reported >= PROGRESS_EVERY) {
				outl(BENCH_PORT, got);
				reported = got;
			}
		}
		if (any) {
			no_interrupts(q);
			kick(0);
			idle = 0;
			continue;
		}
		if (got != reported) {
			outl(BENCH_PORT, got);
			reported = got;
		}
		if (++since_ctrl >= CTRL_EVERY) {
			since_ctrl = 0;
			if (inl(BENCH_PORT) & CTRL_STOP) {
				stopped = 1;
				break;
			}
		}
		if (++idle > IDLE_LIMIT)
			break;
		cpu_relax();
	}
	if (got != reported)
		outl(BENCH_PORT, got);
	report(got);
	report((uint32_t)bytes);
	report((uint32_t)(bytes >> 32));
	report(ignored);
	report(badlen);
	report(lost);
	report(reordered);
	report(bad);
	report((uint32_t)sum);
	report((uint32_t)(sum >> 32));
	report(kicks);
	report(stopped);
}

void guest_main(const uint8_t *zero_page)
{
	uint64_t size, irq;
	const char *cmdline = guest_start(zero_page, &size, &irq);
	if (!base)
		end();
	int rx = find(cmdline, "nb.dir=rx") != 0;
	int verify = find(cmdline, "nb.verify") != 0;
	uint64_t n = param(cmdline, "nb.frames=", 0), len = param(cmdline, "nb.len=", 0);

	uint32_t f0, f1;
	driver_begin(&f0, &f1);
	event_idx = (f0 & F_EVENT_IDX) && !find(cmdline, "nb.noeventidx");
	uint32_t st = driver_features((f0 & (F_MAC | F_STATUS)) | (event_idx ? F_EVENT_IDX : 0),
				      f1 & F_VERSION_1_HI);
	report(st);
	if (!(st & S_FEATURES_OK))
		end();
	uint32_t max[2];
	for (uint32_t i = 0; i < 2; i++) {
		wr(R_QUEUE_SEL, i);
		max[i] = rd(R_QUEUE_NUM_MAX);
		report(max[i]);
	}
	if (max[0] < QSZ || max[1] < QSZ)
		end();
	uint8_t mac[6];
	for (int i = 0; i < 6; i++)
		mac[i] = *(volatile uint8_t *)(base + R_CONFIG + i);
	setup_queue(0);
	setup_queue(1);
	wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	report(rd(R_STATUS));

	int ok = n >= 1 && n <= MAX_FRAMES && len >= MIN_LEN && len <= MAX_LEN;
	report((uint32_t)rx);
	report((uint32_t)n);
	report((uint32_t)len);
	report((uint32_t)verify);
	report((uint32_t)event_idx);
	report(ok ? (rx ? rx_buffers((uint32_t)len) : TX_SLOTS) : 0);
	if (!ok)
		end();
	if (rx)
		run_rx((uint32_t)n, (uint32_t)len, verify);
	else
		run_tx((uint32_t)n, (uint32_t)len, mac);
	end();
}
