/* virtio-net driver test guest (src/devices/virtio/net/, tests/virtio_net.rs).
 *
 * Polls (no interrupts under PVM). Finds the device through the
 * `virtio_mmio.device=<size>@<base>:<irq>` word, negotiates VERSION_1 + MAC +
 * STATUS, posts QSZ receive buffers of RXBUF bytes on receiveq1 (queue 0),
 * sends NTX frames on transmitq1 (queue 1), then receives NRX frames of
 * ethertype ETHERTYPE (other frames, e.g. from the host's own stack, are
 * counted and ignored; every consumed buffer is posted again). Reports, as
 * 32-bit values on REPORT_PORT, in this order:
 *
 *   BOOT_MAGIC, DeviceID, DeviceFeatures word 0, word 1,
 *   status after FEATURES_OK,
 *   config mac bytes 0-3 (little-endian), mac bytes 4-5, config status,
 *   status after DRIVER_OK,
 *   TX used idx (NTX unless the device timed out),
 *   per received frame (NRX of them): frame length (used len - 12),
 *   header check (num_buffers | OR of the other 10 header bytes << 16),
 *   FNV-1a of the frame;
 *   frames ignored, END_MAGIC.
 *
 * With `vtest=mrg` on the command line it also accepts MRG_RXBUF, posts
 * MRG_RXBUF_LEN-byte receive buffers and joins the num_buffers buffers of each
 * frame (the header check then reports that count).
 *   If FEATURES_OK was refused or the TX wait timed out: END_MAGIC right away.
 *
 * TX frame i (NTX of them) is tx_len(i) bytes: broadcast destination, the
 * config MAC as source, ETHERTYPE, then payload byte j = i*31 + j*7 + 1; odd
 * frames go out as a header descriptor plus a frame descriptor, even ones as
 * one descriptor.
 */
#define QSZ 16
#include "virtio_guest.h"

#define NTX 8
#define NRX 6
#define RXBUF 2048
#define HDR 12
#define ETHERTYPE 0x88b5
#define POLL_LIMIT 400000000UL

#define F_MAC (1u << 5)
#define F_STATUS (1u << 16)
#define F_MRG_RXBUF (1u << 15)
#define MRG_RXBUF_LEN 512

struct vq {
	struct desc desc[QSZ];
	struct avail avail __attribute__((aligned(64)));
	struct used used __attribute__((aligned(64)));
};

static struct vq vqs[2] __attribute__((aligned(4096)));
static uint8_t txbuf[NTX][RXBUF];
static uint8_t rxbuf[QSZ][RXBUF];

static uint32_t tx_len(int i)
{
	return 60 + (uint32_t)i * 190;
}

static void publish(struct vq *q, uint16_t head)
{
	q->avail.ring[q->avail.idx % QSZ] = head;
	barrier();
	q->avail.idx++;
	barrier();
}

static void setup_queue(uint32_t i)
{
	struct vq *q = &vqs[i];
	wr(R_QUEUE_SEL, i);
	queue_activate(QSZ, q->desc, &q->avail, &q->used);
}

void guest_main(const uint8_t *zero_page)
{
	uint64_t size, irq;
	const char *cmdline = guest_start(zero_page, &size, &irq);
	int mrg = find(cmdline, "vtest=mrg") != 0;
	uint32_t rxlen = mrg ? MRG_RXBUF_LEN : RXBUF;
	if (!base)
		end();
	uint32_t f0, f1;
	driver_begin(&f0, &f1);
	uint32_t st = driver_features(f0 & (F_MAC | F_STATUS | (mrg ? F_MRG_RXBUF : 0)),
				      f1 & F_VERSION_1_HI);
	report(st);
	if (!(st & S_FEATURES_OK))
		end();
	uint8_t mac[6];
	for (int i = 0; i < 6; i++)
		mac[i] = *(volatile uint8_t *)(base + R_CONFIG + i);
	report(mac[0] | mac[1] << 8 | mac[2] << 16 | (uint32_t)mac[3] << 24);
	report(mac[4] | mac[5] << 8);
	report(*(volatile uint16_t *)(base + R_CONFIG + 6));

	setup_queue(0);
	setup_queue(1);
	wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	report(rd(R_STATUS));

	struct vq *rx = &vqs[0], *tx = &vqs[1];
	for (int i = 0; i < QSZ; i++) {
		rx->desc[i].addr = (uint64_t)(uintptr_t)rxbuf[i];
		rx->desc[i].len = rxlen;
		rx->desc[i].flags = DESC_F_WRITE;
		rx->desc[i].next = 0;
		publish(rx, (uint16_t)i);
	}
	wr(R_QUEUE_NOTIFY, 0);

	/* TX: descriptors 2i (header, or the whole buffer) and 2i+1 (frame). */
	for (int i = 0; i < NTX; i++) {
		uint8_t *b = txbuf[i];
		uint32_t len = tx_len(i);
		for (int j = 0; j < HDR; j++)
			b[j] = 0;
		uint8_t *f = b + HDR;
		for (int j = 0; j < 6; j++) {
			f[j] = 0xff;
			f[6 + j] = mac[j];
		}
		f[12] = ETHERTYPE >> 8;
		f[13] = ETHERTYPE & 0xff;
		for (uint32_t j = 14; j < len; j++)
			f[j] = (uint8_t)(i * 31 + (int)j * 7 + 1);
		struct desc *d = &tx->desc[2 * i];
		d[0].addr = (uint64_t)(uintptr_t)b;
		if (i & 1) {
			d[0].len = HDR;
			d[0].flags = DESC_F_NEXT;
			d[0].next = (uint16_t)(2 * i + 1);
			d[1].addr = (uint64_t)(uintptr_t)f;
			d[1].len = len;
			d[1].flags = 0;
			d[1].next = 0;
		} else {
			d[0].len = HDR + len;
			d[0].flags = 0;
			d[0].next = 0;
		}
		publish(tx, (uint16_t)(2 * i));
	}
	wr(R_QUEUE_NOTIFY, 1);
	volatile struct used *tu = &tx->used;
	for (unsigned long n = 0; n < POLL_LIMIT && tu->idx != NTX; n++)
		__asm__ volatile("pause");
	report(tu->idx);
	if (tu->idx != NTX)
		end();

	volatile struct used *ru = &rx->used;
	uint16_t seen = 0;
	uint32_t matched = 0, ignored = 0;
	unsigned long n = 0;
	while (n < POLL_LIMIT && matched < NRX) {
		/* The first buffer of a frame, then its num_buffers - 1 others. */
		uint32_t ids[QSZ], lens[QSZ], nb = 1;
		for (uint32_t k = 0; k < nb && n < POLL_LIMIT; n++) {
			if (ru->idx == seen) {
				__asm__ volatile("pause");
				continue;
			}
			barrier();
			ids[k] = ru->ring[seen % QSZ].id;
			lens[k] = ru->ring[seen % QSZ].len;
			seen++;
			if (ids[k] >= QSZ || lens[k] > rxlen)
				end();
			if (k == 0 && mrg && lens[0] >= HDR) {
				nb = rxbuf[ids[0]][10] | rxbuf[ids[0]][11] << 8;
				if (nb == 0 || nb > QSZ)
					end();
			}
			k++;
		}
		if (n >= POLL_LIMIT)
			break;
		const uint8_t *b = rxbuf[ids[0]];
		if (lens[0] < HDR + 14 || b[HDR + 12] != (ETHERTYPE >> 8) ||
		    b[HDR + 13] != (ETHERTYPE & 0xff)) {
			ignored++;
		} else {
			uint32_t other = 0, fnv = 0x811c9dc5, total = 0;
			for (int j = 0; j < 10; j++)
				other |= b[j];
			for (uint32_t k = 0; k < nb; k++) {
				for (uint32_t j = k ? 0 : HDR; j < lens[k]; j++)
					fnv = (fnv ^ rxbuf[ids[k]][j]) * 0x01000193;
				total += lens[k];
			}
			report(total - HDR);
			report((uint32_t)(b[10] | b[11] << 8) | other << 16);
			report(fnv);
			matched++;
		}
		for (uint32_t k = 0; k < nb; k++)
			publish(rx, (uint16_t)ids[k]);
		wr(R_QUEUE_NOTIFY, 0);
	}
	report(ignored);
	end();
}
