/* virtio-vsock driver test guest for the VMM's vsock device
 * (src/devices/virtio/vsock.rs). Polls: no interrupts under PVM.
 *
 * Finds the device through `virtio_mmio.device=<size>@<base>:<irq>`, does the
 * virtio 1.x handshake, sets up the rx (0), tx (1) and event (2) queues, posts
 * RX buffers (one descriptor each: 44-byte header + 4 KiB data, like Linux;
 * TX packets are a header descriptor + a data descriptor),
 * then runs up to two stream connections at once in one polling loop:
 *
 *  out: `vsock.out=P` - REQUEST to CID 2 port P, wait for the RESPONSE, send
 *       `vsock.bytes=N` bytes (default 393216) of the pattern in RW packets of
 *       `vsock.pkt=S` bytes (default 32768, at most 65536) within the host's
 *       credit (buf_alloc/fwd_cnt of its packets; CREDIT_REQUEST after a
 *       stall), then SHUTDOWN (both) and wait for the RST.
 *  in:  `vsock.listen=L` - answer a REQUEST to port L with a RESPONSE and echo
 *       every byte back; the echo ring (64 KiB) is the advertised buf_alloc
 *       and fwd_cnt counts bytes echoed (sent back straight from the ring). After the host's SHUTDOWN and the last
 *       echo: SHUTDOWN (both), wait for the RST.
 *
 * `vsock.eventidx` negotiates VIRTIO_RING_F_EVENT_IDX (notify per avail_event).
 * `vsock.stall=K`: a CREDIT_REQUEST after K idle polls without credit (default 20000).
 *
 * Reports (32-bit, REPORT_PORT), in this order:
 *   BOOT_MAGIC, DeviceID, DeviceFeatures[0], DeviceFeatures[1],
 *   status after FEATURES_OK (if FEATURES_OK was refused: END_MAGIC next),
 *   config guest_cid lo, hi, QueueNumMax of queues 0, 1, 2, 3 (nonexistent: 0),
 *   status after DRIVER_OK,
 *   out: error, op of the first reply, host buf_alloc, bytes sent lo, hi,
 *        RW packets, CREDIT_REQUESTs sent, credit stalls, op of the last packet,
 *   in:  error, host port, bytes received lo, hi, bytes echoed lo, hi,
 *        SHUTDOWN flags received, op of the last packet,
 *   RX packets, TX packets, unexpected packets,
 *   status after reset, END_MAGIC.
 * Errors: 0 ok, 1 timeout, 2 refused (RST instead of RESPONSE), 3 protocol
 * error, 4 credit violation by the host, 0xffff not run.
 * TEXT_PORT gets progress lines.
 */
#define QSZ 64
#include "virtio_guest.h"

#define EVQSZ 4
#define HDR 44
#define RXDATA 4096
#define TXSLOTS (QSZ / 2) /* slot s: descriptor 2s header, 2s+1 data */
#define PKTMAX 65536
#define ECHO_CAP 65536 /* a power of two */
/* The pattern repeats every PAT_WORDS 8-byte words (a prime count). */
#define PAT_WORDS 8191
#define PAT_PERIOD (PAT_WORDS * 8)
#define IDLE_LIMIT 400000000UL
#define HOST_CID 2

#define F_EVENT_IDX (1u << 29)

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUT_BOTH 3

#define E_OK 0
#define E_TIMEOUT 1
#define E_REFUSED 2
#define E_PROTO 3
#define E_CREDIT 4
#define E_NOTRUN 0xffff

struct __attribute__((packed)) hdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
};
_Static_assert(sizeof(struct hdr) == HDR, "virtio_vsock_hdr is 44 bytes");

struct vq {
	struct desc desc[QSZ];
	struct avail avail __attribute__((aligned(64)));
	struct used used __attribute__((aligned(64)));
	uint16_t size, last_used, kicked;
};

static struct vq vqs[3] __attribute__((aligned(4096)));
static uint8_t rxbufs[QSZ][HDR + RXDATA] __attribute__((aligned(64)));
static uint8_t txhdrs[TXSLOTS][64] __attribute__((aligned(64)));
/* The pattern from offset 0 to PAT_PERIOD + PKTMAX: packets point into it. */
static uint64_t pat[(PAT_PERIOD + PKTMAX) / 8];
static uint8_t evbufs[EVQSZ][8];
static uint8_t echo_buf[ECHO_CAP];
static uint16_t free_slots[TXSLOTS];
static int nfree;

static void print(const char *s)
{
	while (*s)
		outb(TEXT_PORT, (uint8_t)*s++);
}
static void print_num(uint64_t v)
{
	char b[24];
	int i = 23;
	b[i] = 0;
	do {
		b[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i > 0);
	print(&b[i]);
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

/* The stream the guest sends: byte i is byte (i % 8) (little-endian) of
 * ((i / 8) % PAT_WORDS + 1) * 0x9e3779b97f4a7c15. Mirrored in
 * src/guests.rs stream_pattern() and tests/virtio_vsock.rs.
 * Data descriptors point into a pre-built copy, so the (slow, emulated under
 * PVM) guest CPU does no per-byte work on the guest -> host path. */
static void build_pattern(void)
{
	uint64_t w = 0;
	for (unsigned long k = 0; k < sizeof pat / 8; k++) {
		pat[k] = (w + 1) * 0x9e3779b97f4a7c15ull;
		if (++w == PAT_WORDS)
			w = 0;
	}
}

static int event_idx;
static uint64_t guest_cid;

static void kick(uint32_t qi)
{
	struct vq *q = &vqs[qi];
	barrier();
	uint16_t new = q->avail.idx, old = q->kicked;
	q->kicked = new;
	if (event_idx) {
		uint16_t ev = ((volatile struct used *)&q->used)->avail_event;
		/* vring_need_event (virtio 1.2, 2.7.10) */
		if ((uint16_t)(new - ev - 1) >= (uint16_t)(new - old))
			return;
	}
	wr(R_QUEUE_NOTIFY, qi);
}

static void post(struct vq *q, uint16_t head)
{
	q->avail.ring[q->avail.idx % q->size] = head;
	barrier();
	q->avail.idx++;
}

static void setup_queue(uint32_t i, uint16_t size)
{
	struct vq *q = &vqs[i];
	q->size = size;
	wr(R_QUEUE_SEL, i);
	queue_activate(size, q->desc, &q->avail, &q->used);
}

/* Counters. */
static uint32_t rx_pkts, tx_pkts, unexpected;

/* TX: slot s is descriptor s, one buffer for header and data. */
static int reclaim_tx(void)
{
	struct vq *q = &vqs[1];
	volatile struct used *u = &q->used;
	int n = 0;
	while (q->last_used != u->idx) {
		barrier();
		uint32_t id = u->ring[q->last_used % QSZ].id;
		q->last_used++;
		if (id < QSZ && id % 2 == 0 && nfree < TXSLOTS)
			free_slots[nfree++] = (uint16_t)(id / 2);
		else
			unexpected++;
		n++;
	}
	return n;
}

static struct hdr *tx_slot(int *slot)
{
	for (unsigned long n = 0; !nfree; n++) {
		if (!reclaim_tx()) {
			if (n > IDLE_LIMIT)
				return 0;
			cpu_relax();
		}
	}
	*slot = free_slots[--nfree];
	return (struct hdr *)txhdrs[*slot];
}

/* Queues slot's header with `len` data bytes at `data` (a second descriptor). */
static void tx_send(int slot, const void *data, uint32_t len)
{
	struct vq *q = &vqs[1];
	uint16_t d = (uint16_t)(2 * slot);
	q->desc[d].addr = (uint64_t)(uintptr_t)txhdrs[slot];
	q->desc[d].len = HDR;
	q->desc[d].flags = len ? DESC_F_NEXT : 0;
	q->desc[d].next = d + 1;
	q->desc[d + 1].addr = (uint64_t)(uintptr_t)data;
	q->desc[d + 1].len = len;
	q->desc[d + 1].flags = 0;
	post(q, d);
	tx_pkts++;
	kick(1);
}

static void fill(struct hdr *h, uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags,
		 uint32_t len, uint32_t buf_alloc, uint32_t fwd_cnt)
{
	h->src_cid = guest_cid;
	h->dst_cid = HOST_CID;
	h->src_port = sport;
	h->dst_port = dport;
	h->len = len;
	h->type = 1;
	h->op = op;
	h->flags = flags;
	h->buf_alloc = buf_alloc;
	h->fwd_cnt = fwd_cnt;
}

/* A control packet (no data); 0 if no TX slot came free. */
static int send_ctrl(uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags,
		     uint32_t buf_alloc, uint32_t fwd_cnt)
{
	int slot;
	struct hdr *h = tx_slot(&slot);
	if (!h)
		return 0;
	fill(h, sport, dport, op, flags, 0, buf_alloc, fwd_cnt);
	tx_send(slot, 0, 0);
	return 1;
}

enum { C_OFF, C_LISTEN, C_CONNECTING, C_OPEN, C_SHUT_SENT, C_DONE };

struct conn {
	int state;
	uint32_t err;
	uint32_t lport, pport; /* ours, the host's */
	uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt;
	uint32_t first_op, last_op, shut_flags;
	/* out */
	uint64_t total, sent;
	uint32_t pkt, packets, creq, stalls;
	int stalled;
	/* in */
	uint64_t rx_bytes, echoed;
	uint32_t head, fill_len; /* echo ring */
};

static struct conn out, in;

static uint32_t credit(const struct conn *c)
{
	uint32_t in_flight = c->tx_cnt - c->peer_fwd_cnt;
	return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}
static uint32_t in_fwd_cnt(void)
{
	return (uint32_t)in.echoed;
}

static void fail(struct conn *c, uint32_t err, const char *why)
{
	if (c->err == E_OK)
		c->err = err;
	c->state = C_DONE;
	print("vsock-guest: ");
	print(c == &out ? "out: " : "in: ");
	print(why);
	print("\n");
}

static void on_out(const struct hdr *h)
{
	struct conn *c = &out;
	if (!c->first_op)
		c->first_op = h->op;
	c->last_op = h->op;
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RESPONSE:
		if (c->state != C_CONNECTING) {
			fail(c, E_PROTO, "RESPONSE out of turn");
			return;
		}
		c->state = C_OPEN;
		print("vsock-guest: out: connected\n");
		return;
	case OP_RST:
		if (c->state == C_CONNECTING)
			fail(c, E_REFUSED, "connection refused (RST)");
		else if (c->state != C_SHUT_SENT)
			fail(c, E_PROTO, "RST before our SHUTDOWN");
		else {
			c->state = C_DONE;
			print("vsock-guest: out: closed\n");
		}
		return;
	case OP_CREDIT_UPDATE:
		c->stalled = 0;
		return;
	case OP_CREDIT_REQUEST:
		send_ctrl(c->lport, c->pport, OP_CREDIT_UPDATE, 0, ECHO_CAP, 0);
		return;
	case OP_SHUTDOWN:
		c->shut_flags |= h->flags;
		return;
	default:
		fail(c, E_PROTO, "unexpected op");
	}
}

static void on_in(const struct hdr *h, const uint8_t *data, uint32_t len)
{
	struct conn *c = &in;
	if (h->op == OP_REQUEST && c->state == C_LISTEN) {
		c->pport = h->src_port;
		c->first_op = h->op;
		c->last_op = h->op;
		c->peer_buf_alloc = h->buf_alloc;
		c->peer_fwd_cnt = h->fwd_cnt;
		if (!send_ctrl(c->lport, c->pport, OP_RESPONSE, 0, ECHO_CAP, 0)) {
			fail(c, E_TIMEOUT, "no TX slot for the RESPONSE");
			return;
		}
		c->state = C_OPEN;
		print("vsock-guest: in: accepted host port ");
		print_num(c->pport);
		print("\n");
		return;
	}
	if (c->state < C_OPEN || c->state == C_DONE || h->src_port != c->pport) {
		if (h->op != OP_RST)
			send_ctrl(h->dst_port, h->src_port, OP_RST, 0, 0, 0);
		unexpected++;
		return;
	}
	c->last_op = h->op;
	c->peer_buf_alloc = h->buf_alloc;
	c->peer_fwd_cnt = h->fwd_cnt;
	switch (h->op) {
	case OP_RW:
		if (len > ECHO_CAP - c->fill_len) {
			fail(c, E_CREDIT, "host sent beyond our buf_alloc");
			send_ctrl(c->lport, c->pport, OP_RST, 0, 0, 0);
			return;
		}
		uint32_t tail = c->head + c->fill_len;
		for (uint32_t j = 0; j < len; j++)
			echo_buf[(tail + j) & (ECHO_CAP - 1)] = data[j];
		c->fill_len += len;
		c->rx_bytes += len;
		return;
	case OP_SHUTDOWN:
		c->shut_flags |= h->flags;
		return;
	case OP_CREDIT_UPDATE:
		c->stalled = 0;
		return;
	case OP_CREDIT_REQUEST:
		send_ctrl(c->lport, c->pport, OP_CREDIT_UPDATE, 0, ECHO_CAP, in_fwd_cnt());
		return;
	case OP_RST:
		if (c->state == C_SHUT_SENT) {
			c->state = C_DONE;
			print("vsock-guest: in: closed\n");
		} else {
			fail(c, E_PROTO, "RST before our SHUTDOWN");
		}
		return;
	default:
		fail(c, E_PROTO, "unexpected op");
	}
}

static int poll_rx(void)
{
	struct vq *q = &vqs[0];
	volatile struct used *u = &q->used;
	int n = 0;
	while (q->last_used != u->idx) {
		barrier();
		uint32_t id = u->ring[q->last_used % QSZ].id;
		uint32_t len = u->ring[q->last_used % QSZ].len;
		q->last_used++;
		n++;
		rx_pkts++;
		if (id >= QSZ || len < HDR || len > HDR + RXDATA) {
			unexpected++;
			if (id < QSZ)
				post(q, (uint16_t)id);
			continue;
		}
		const struct hdr *h = (const struct hdr *)rxbufs[id];
		const uint8_t *data = rxbufs[id] + HDR;
		uint32_t dlen = h->op == OP_RW ? h->len : 0;
		if (h->dst_cid != guest_cid || h->src_cid != HOST_CID || h->type != 1 ||
		    dlen > len - HDR) {
			unexpected++;
		} else if (out.state != C_OFF && h->dst_port == out.lport &&
			   h->src_port == out.pport && out.state != C_DONE) {
			on_out(h);
		} else if (in.state != C_OFF && h->dst_port == in.lport) {
			on_in(h, data, dlen);
		} else {
			unexpected++;
			if (h->op != OP_RST)
				send_ctrl(h->dst_port, h->src_port, OP_RST, 0, 0, 0);
		}
		post(q, (uint16_t)id);
	}
	if (n)
		kick(0);
	return n;
}

static unsigned long stall_polls;

/* One step of the outgoing stream; returns whether it did something. */
static int step_out(unsigned long idle)
{
	struct conn *c = &out;
	if (c->state != C_OPEN)
		return 0;
	if (c->sent == c->total) {
		if (!send_ctrl(c->lport, c->pport, OP_SHUTDOWN, SHUT_BOTH, ECHO_CAP, 0)) {
			fail(c, E_TIMEOUT, "no TX slot for the SHUTDOWN");
			return 0;
		}
		c->state = C_SHUT_SENT;
		print("vsock-guest: out: all bytes sent\n");
		return 1;
	}
	uint32_t cr = credit(c);
	if (!cr) {
		if (!c->stalled) {
			c->stalled = 1;
			c->stalls++;
		}
		if (idle && idle % stall_polls == 0) {
			if (send_ctrl(c->lport, c->pport, OP_CREDIT_REQUEST, 0, ECHO_CAP, 0))
				c->creq++;
		}
		return 0;
	}
	if (!nfree)
		reclaim_tx();
	if (!nfree)
		return 0;
	c->stalled = 0;
	uint64_t left = c->total - c->sent;
	uint32_t n = c->pkt;
	if (n > cr)
		n = cr;
	if (n > left)
		n = (uint32_t)left;
	int slot = free_slots[--nfree];
	struct hdr *h = (struct hdr *)txhdrs[slot];
	const uint8_t *d = (const uint8_t *)pat + c->sent % PAT_PERIOD;
	fill(h, c->lport, c->pport, OP_RW, 0, n, ECHO_CAP, 0);
	c->sent += n;
	c->tx_cnt += n;
	c->packets++;
	tx_send(slot, d, n);
	return 1;
}

static int step_in(unsigned long idle)
{
	struct conn *c = &in;
	if (c->state != C_OPEN)
		return 0;
	if (!c->fill_len) {
		if (c->shut_flags & 2) { /* the host will send no more */
			if (!send_ctrl(c->lport, c->pport, OP_SHUTDOWN, SHUT_BOTH, ECHO_CAP,
				       in_fwd_cnt())) {
				fail(c, E_TIMEOUT, "no TX slot for the SHUTDOWN");
				return 0;
			}
			c->state = C_SHUT_SENT;
			return 1;
		}
		return 0;
	}
	uint32_t cr = credit(c);
	if (!cr) {
		if (idle && idle % stall_polls == 0)
			send_ctrl(c->lport, c->pport, OP_CREDIT_REQUEST, 0, ECHO_CAP, in_fwd_cnt());
		return 0;
	}
	if (!nfree)
		reclaim_tx();
	if (!nfree)
		return 0;
	/* Straight from the ring (up to its end): the device has read the data
	 * by the time the host learns the new fwd_cnt this packet carries, so
	 * the host cannot overwrite it before. */
	uint32_t n = c->fill_len;
	if (n > ECHO_CAP - c->head)
		n = ECHO_CAP - c->head;
	if (n > cr)
		n = cr;
	int slot = free_slots[--nfree];
	struct hdr *h = (struct hdr *)txhdrs[slot];
	const uint8_t *d = echo_buf + c->head;
	c->head = (c->head + n) & (ECHO_CAP - 1);
	c->fill_len -= n;
	c->echoed += n;
	c->tx_cnt += n;
	fill(h, c->lport, c->pport, OP_RW, 0, n, ECHO_CAP, in_fwd_cnt());
	tx_send(slot, d, n);
	return 1;
}

static void print_kv(const char *k, uint64_t v)
{
	print(" ");
	print(k);
	print("=");
	print_num(v);
}

/* A diagnostic line when the loop has been idle for long. */
static void dump_state(void)
{
	print("vsock-guest: idle:");
	print_kv("out.state", (uint64_t)out.state);
	print_kv("sent", out.sent);
	print_kv("credit", credit(&out));
	print_kv("buf_alloc", out.peer_buf_alloc);
	print_kv("fwd_cnt", out.peer_fwd_cnt);
	print_kv("tx_cnt", out.tx_cnt);
	print_kv("in.state", (uint64_t)in.state);
	print_kv("in.rx", in.rx_bytes);
	print_kv("in.fill", in.fill_len);
	print_kv("in.credit", credit(&in));
	print_kv("nfree", (uint64_t)nfree);
	print_kv("rx.used", vqs[0].used.idx);
	print_kv("rx.avail", vqs[0].avail.idx);
	print_kv("tx.used", vqs[1].used.idx);
	print_kv("tx.avail", vqs[1].avail.idx);
	print("\n");
}

static void report_conn_out(void)
{
	report(out.state == C_OFF ? E_NOTRUN : out.err);
	report(out.first_op);
	report(out.peer_buf_alloc);
	report((uint32_t)out.sent);
	report((uint32_t)(out.sent >> 32));
	report(out.packets);
	report(out.creq);
	report(out.stalls);
	report(out.last_op);
}

static void report_conn_in(void)
{
	report(in.state == C_OFF ? E_NOTRUN : in.err);
	report(in.pport);
	report((uint32_t)in.rx_bytes);
	report((uint32_t)(in.rx_bytes >> 32));
	report((uint32_t)in.echoed);
	report((uint32_t)(in.echoed >> 32));
	report(in.shut_flags);
	report(in.last_op);
}

void guest_main(const uint8_t *zero_page)
{
	uint64_t size, irq;
	const char *cmdline = guest_start(zero_page, &size, &irq);
	if (!base)
		end();
	int want_event_idx = find(cmdline, "vsock.eventidx") != 0;
	uint32_t out_port = (uint32_t)param(cmdline, "vsock.out=", 0);
	uint32_t listen_port = (uint32_t)param(cmdline, "vsock.listen=", 0);
	uint64_t total = param(cmdline, "vsock.bytes=", 393216);
	uint32_t pkt = (uint32_t)param(cmdline, "vsock.pkt=", 32768);
	stall_polls = param(cmdline, "vsock.stall=", 20000);
	if (!stall_polls)
		stall_polls = 1;
	if (pkt == 0 || pkt > PKTMAX)
		pkt = 32768;

	uint32_t f0, f1;
	driver_begin(&f0, &f1);
	event_idx = want_event_idx && (f0 & F_EVENT_IDX);
	uint32_t st = driver_features(event_idx ? F_EVENT_IDX : 0, f1 & F_VERSION_1_HI);
	report(st);
	if (!(st & S_FEATURES_OK)) {
		wr(R_STATUS, st | S_FAILED);
		end();
	}
	uint32_t cid_lo = rd(R_CONFIG), cid_hi = rd(R_CONFIG + 4);
	report(cid_lo);
	report(cid_hi);
	guest_cid = (uint64_t)cid_hi << 32 | cid_lo;
	for (uint32_t i = 0; i < 4; i++) {
		wr(R_QUEUE_SEL, i);
		report(rd(R_QUEUE_NUM_MAX));
	}
	setup_queue(0, QSZ);
	setup_queue(1, QSZ);
	setup_queue(2, QSZ);
	wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	report(rd(R_STATUS));

	/* RX buffers: descriptor i = rxbufs[i]; event buffers likewise. */
	for (uint16_t i = 0; i < QSZ; i++) {
		vqs[0].desc[i].addr = (uint64_t)(uintptr_t)rxbufs[i];
		vqs[0].desc[i].len = HDR + RXDATA;
		vqs[0].desc[i].flags = DESC_F_WRITE;
		post(&vqs[0], i);
	}
	kick(0);
	for (uint16_t i = 0; i < EVQSZ; i++) {
		vqs[2].desc[i].addr = (uint64_t)(uintptr_t)evbufs[i];
		vqs[2].desc[i].len = sizeof evbufs[i];
		vqs[2].desc[i].flags = DESC_F_WRITE;
		post(&vqs[2], i);
	}
	kick(2);
	for (int i = 0; i < TXSLOTS; i++)
		free_slots[nfree++] = (uint16_t)(TXSLOTS - 1 - i);

	build_pattern();
	if (listen_port) {
		in.state = C_LISTEN;
		in.lport = listen_port;
	}
	if (out_port) {
		out.lport = 0x8000 + (out_port & 0x7fff);
		if (out.lport == listen_port)
			out.lport++;
		out.pport = out_port;
		out.total = total;
		out.pkt = pkt;
		out.state = C_CONNECTING;
		if (!send_ctrl(out.lport, out.pport, OP_REQUEST, 0, ECHO_CAP, 0))
			fail(&out, E_TIMEOUT, "no TX slot for the REQUEST");
	}

	unsigned long idle = 0;
	for (;;) {
		int busy = (out.state != C_OFF && out.state != C_DONE) ||
			   (in.state != C_OFF && in.state != C_DONE);
		if (!busy)
			break;
		int progress = reclaim_tx();
		progress |= poll_rx();
		progress |= step_out(idle);
		progress |= step_in(idle);
		if (progress) {
			idle = 0;
			continue;
		}
		if (++idle == IDLE_LIMIT / 8)
			dump_state();
		if (idle > IDLE_LIMIT) {
			if (out.state != C_OFF && out.state != C_DONE)
				fail(&out, E_TIMEOUT, "timed out");
			if (in.state != C_OFF && in.state != C_DONE)
				fail(&in, E_TIMEOUT, "timed out");
			break;
		}
		cpu_relax();
	}
	report_conn_out();
	report_conn_in();
	report(rx_pkts);
	report(tx_pkts);
	report(unexpected);
	wr(R_STATUS, 0);
	report(rd(R_STATUS));
	end();
}
