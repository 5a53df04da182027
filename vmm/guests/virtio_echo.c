/* virtio-mmio driver test guest for the echo device (src/devices/virtio/echo.rs).
 *
 * Polls (no interrupts under PVM). Finds the device through the
 * `virtio_mmio.device=<size>@<base>:<irq>` word the VMM appends to the kernel
 * command line, then does the virtio 1.x driver handshake (3.1.1), sets up the
 * two split virtqueues in its own memory, echoes NMSG messages and reports, as
 * 32-bit values on REPORT_PORT, in this order:
 *
 *   BOOT_MAGIC, window size, base lo, base hi, irq,
 *   MagicValue, Version, DeviceID, VendorID,
 *   status after reset (0), status after ACKNOWLEDGE|DRIVER (3),
 *   DeviceFeatures word 0, word 1,
 *   status after writing FEATURES_OK.
 *   If FEATURES_OK was refused: status after setting FAILED, END_MAGIC, reset.
 *   ConfigGeneration (g0), config max_len, config echoed, config xor_key after
 *   writing KEY (32-bit read), its low byte (8-bit read),
 *   per queue 0, 1: QueueReady before (0), QueueNumMax, QueueReady after (1),
 *   QueueNumMax of queue 2 (nonexistent: 0),
 *   status after DRIVER_OK,
 *   RX used idx (NMSG unless the device timed out), then per message:
 *   used id, used len; FNV-1a of all echoed bytes, mismatching bytes,
 *   TX used idx, InterruptStatus, InterruptStatus after ACK,
 *   ConfigGeneration - g0, config echoed,
 *   status after reset (0), QueueReady of queue 0 after reset (0), END_MAGIC.
 *
 * Command-line words steering it: `vtest=nover1` (do not accept VERSION_1),
 * `vtest=unoffered` (also accept feature bit 23, which the device does not offer).
 */
#define QSZ 16
#include "virtio_guest.h"

#define NMSG 6
#define KEY 0x5a
#define RXBUF 256
#define POLL_LIMIT 200000000UL

struct vq {
	struct desc desc[QSZ];
	struct avail avail __attribute__((aligned(64)));
	struct used used __attribute__((aligned(64)));
	uint16_t ndesc;
};

static struct vq vqs[2] __attribute__((aligned(4096)));
static uint8_t txbuf[NMSG][RXBUF];
static uint8_t rxbuf[NMSG][RXBUF];
static const uint16_t msg_len[NMSG] = {1, 16, 100, 255, 128, 200};

static uint8_t msg_byte(int i, int j)
{
	return (uint8_t)(i * 31 + j * 7 + 1);
}

/* Adds a chain of n (addr, len, flags) buffers; returns its head. */
static uint16_t add_chain(struct vq *q, int n, const uint64_t *addr, const uint32_t *len,
			  uint16_t flags)
{
	uint16_t head = q->ndesc;
	for (int k = 0; k < n; k++) {
		struct desc *d = &q->desc[q->ndesc];
		d->addr = addr[k];
		d->len = len[k];
		d->flags = flags | (k + 1 < n ? DESC_F_NEXT : 0);
		d->next = (uint16_t)(q->ndesc + 1);
		q->ndesc++;
	}
	q->avail.ring[q->avail.idx % QSZ] = head;
	barrier();
	q->avail.idx++;
	barrier();
	return head;
}

static void setup_queue(uint32_t i)
{
	struct vq *q = &vqs[i];
	wr(R_QUEUE_SEL, i);
	report(rd(R_QUEUE_READY));
	report(rd(R_QUEUE_NUM_MAX));
	queue_activate(QSZ, q->desc, &q->avail, &q->used);
	report(rd(R_QUEUE_READY));
}

void guest_main(const uint8_t *zero_page)
{
	uint64_t size, irq;
	const char *cmdline = guest_start(zero_page, &size, &irq);
	report((uint32_t)size);
	report((uint32_t)base);
	report((uint32_t)(base >> 32));
	report((uint32_t)irq);
	if (!base)
		end();
	int nover1 = find(cmdline, "vtest=nover1") != 0;
	int unoffered = find(cmdline, "vtest=unoffered") != 0;

	report(rd(R_MAGIC));
	report(rd(R_VERSION));
	report(rd(R_DEVICE_ID));
	report(rd(R_VENDOR_ID));
	wr(R_STATUS, 0);
	report(rd(R_STATUS));
	wr(R_STATUS, S_ACK);
	wr(R_STATUS, S_ACK | S_DRIVER);
	report(rd(R_STATUS));
	uint32_t f0, f1;
	device_features(&f0, &f1);
	report(f0);
	report(f1);
	uint32_t want0 = unoffered ? (1u << 23) : 0;
	uint32_t want1 = nover1 ? 0 : (f1 & F_VERSION_1_HI);
	uint32_t st = driver_features(want0, want1);
	report(st);
	if (!(st & S_FEATURES_OK)) {
		wr(R_STATUS, st | S_FAILED);
		report(rd(R_STATUS));
		end();
	}

	uint32_t gen0 = rd(R_CONFIG_GEN);
	report(gen0);
	report(rd(R_CONFIG + 0));
	report(rd(R_CONFIG + 4));
	wr(R_CONFIG + 8, KEY);
	report(rd(R_CONFIG + 8));
	report(*(volatile uint8_t *)(base + R_CONFIG + 8));

	setup_queue(0);
	setup_queue(1);
	wr(R_QUEUE_SEL, 2);
	report(rd(R_QUEUE_NUM_MAX));
	wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	report(rd(R_STATUS));

	/* RX buffers first (message 2's buffer split in two), notify queue 1. */
	struct vq *tx = &vqs[0], *rx = &vqs[1];
	for (int i = 0; i < NMSG; i++) {
		uint64_t a[2] = {(uint64_t)(uintptr_t)rxbuf[i], (uint64_t)(uintptr_t)rxbuf[i] + 60};
		uint32_t l[2] = {RXBUF, RXBUF - 60};
		if (i == 2)
			l[0] = 60, add_chain(rx, 2, a, l, DESC_F_WRITE);
		else
			add_chain(rx, 1, a, l, DESC_F_WRITE);
	}
	wr(R_QUEUE_NOTIFY, 1);
	/* TX messages (message 4 as a 40 + 88 byte chain), notify queue 0. */
	for (int i = 0; i < NMSG; i++) {
		for (int j = 0; j < msg_len[i]; j++)
			txbuf[i][j] = msg_byte(i, j);
		uint64_t a[2] = {(uint64_t)(uintptr_t)txbuf[i], (uint64_t)(uintptr_t)txbuf[i] + 40};
		uint32_t l[2] = {msg_len[i], (uint32_t)msg_len[i] - 40};
		if (i == 4)
			l[0] = 40, add_chain(tx, 2, a, l, 0);
		else
			add_chain(tx, 1, a, l, 0);
	}
	wr(R_QUEUE_NOTIFY, 0);

	volatile struct used *ru = &rx->used;
	for (unsigned long n = 0; n < POLL_LIMIT && ru->idx != NMSG; n++)
		__asm__ volatile("pause");
	barrier();
	uint16_t got = ru->idx;
	report(got);
	if (got != NMSG)
		end();
	uint32_t fnv = 0x811c9dc5, bad = 0;
	for (int i = 0; i < NMSG; i++) {
		uint32_t id = ru->ring[i].id, len = ru->ring[i].len;
		report(id);
		report(len);
		if (len > RXBUF)
			len = RXBUF, bad++;
		if (len != msg_len[i])
			bad++;
		/* Buffer i was posted i-th; its bytes are contiguous in rxbuf[i]. */
		for (uint32_t j = 0; j < len; j++) {
			uint8_t b = rxbuf[i][j];
			fnv = (fnv ^ b) * 0x01000193;
			if (b != (uint8_t)(msg_byte(i, (int)j) ^ KEY))
				bad++;
		}
	}
	report(fnv);
	report(bad);
	report(((volatile struct used *)&tx->used)->idx);
	uint32_t isr = 0;
	for (unsigned long n = 0; n < POLL_LIMIT && !((isr = rd(R_INT_STATUS)) & 1); n++)
		__asm__ volatile("pause");
	report(isr);
	wr(R_INT_ACK, isr);
	report(rd(R_INT_STATUS));
	report(rd(R_CONFIG_GEN) - gen0);
	report(rd(R_CONFIG + 4));
	wr(R_STATUS, 0);
	report(rd(R_STATUS));
	wr(R_QUEUE_SEL, 0);
	report(rd(R_QUEUE_READY));
	end();
}
