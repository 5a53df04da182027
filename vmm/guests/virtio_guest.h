/* Shared plumbing of the polling virtio-mmio C test guests (virtio_echo.c,
 * vsock_stream.c): entry point and stack, port I/O, reports and reset, MMIO
 * register access, command-line parsing, the split-virtqueue layout and the
 * parts of the driver handshake that every guest does alike.
 *
 * Each guest is one translation unit: include this once, after defining QSZ
 * (the ring size of struct avail/used). The guest defines its own struct vq
 * (the driver's bookkeeping differs) and `void guest_main(const uint8_t *)`.
 */
#ifndef VIRTIO_GUEST_H
#define VIRTIO_GUEST_H

#include <stdint.h>
#include "abi.h"

#ifndef QSZ
#error "define QSZ (the virtqueue ring size) before including virtio_guest.h"
#endif

/* Registers (virtio 1.2, 4.2.2). */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_VENDOR_ID 0x00c
#define R_DEV_FEAT 0x010
#define R_DEV_FEAT_SEL 0x014
#define R_DRV_FEAT 0x020
#define R_DRV_FEAT_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS 0x060
#define R_INT_ACK 0x064
#define R_STATUS 0x070
#define R_DESC_LO 0x080
#define R_DESC_HI 0x084
#define R_AVAIL_LO 0x090
#define R_AVAIL_HI 0x094
#define R_USED_LO 0x0a0
#define R_USED_HI 0x0a4
#define R_CONFIG_GEN 0x0fc
#define R_CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_FAILED 0x80

#define F_VERSION_1_HI 1u /* bit 32 = bit 0 of word 1 */
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
struct avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[QSZ];
	uint16_t used_event;
};
struct used_elem {
	uint32_t id;
	uint32_t len;
};
struct used {
	uint16_t flags;
	uint16_t idx;
	struct used_elem ring[QSZ];
	uint16_t avail_event;
};

uint8_t guest_stack[16384] __attribute__((aligned(16)));

void guest_main(const uint8_t *zero_page);

__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	lea guest_stack+16384(%rip), %rsp\n"
	"	mov %rsi, %rdi\n"
	"	call guest_main\n"
	"1:	pause\n"
	"	jmp 1b\n");

static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}
static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}
static inline void report(uint32_t v)
{
	outl(REPORT_PORT, v);
}
static inline __attribute__((noreturn)) void end(void)
{
	report(END_MAGIC);
	outb(I8042_CMD, I8042_RESET);
	for (;;)
		__asm__ volatile("pause");
}
static inline void barrier(void)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* The device's register window (from the command line). */
static uint64_t base;
static inline uint32_t rd(uint32_t off)
{
	return *(volatile uint32_t *)(base + off);
}
static inline void wr(uint32_t off, uint32_t v)
{
	*(volatile uint32_t *)(base + off) = v;
}

static inline const char *find(const char *s, const char *pat)
{
	for (; *s; s++) {
		const char *a = s, *b = pat;
		while (*b && *a == *b)
			a++, b++;
		if (!*b)
			return s;
	}
	return 0;
}
static inline int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}
static inline uint64_t number(const char **p)
{
	const char *s = *p;
	uint64_t v = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		while (hexval(*s) >= 0)
			v = v * 16 + (uint64_t)hexval(*s++);
	} else {
		while (*s >= '0' && *s <= '9')
			v = v * 10 + (uint64_t)(*s++ - '0');
	}
	if (*s == 'K' || *s == 'k')
		v <<= 10, s++;
	else if (*s == 'M' || *s == 'm')
		v <<= 20, s++;
	*p = s;
	return v;
}

/* The kernel command line (boot_params.hdr.cmd_line_ptr, offset 0x228). */
static inline const char *guest_cmdline(const uint8_t *zero_page)
{
	return (const char *)(uintptr_t) * (const uint32_t *)(zero_page + 0x228);
}

/* Parses the `virtio_mmio.device=<size>@<base>:<irq>` word the VMM appends:
 * sets `base` (0 where the word has no base) and *size and *irq (0 where
 * absent). Returns 0, setting nothing, where the word is missing. */
static inline int find_virtio_mmio(const char *cmdline, uint64_t *size, uint64_t *irq)
{
	const char *p = find(cmdline, "virtio_mmio.device=");
	if (!p)
		return 0;
	p += 19;
	*size = number(&p);
	*irq = 0;
	if (*p == '@') {
		p++;
		base = number(&p);
	}
	if (*p == ':') {
		p++;
		*irq = number(&p);
	}
	return 1;
}

/* The start of every guest_main: reports BOOT_MAGIC, finds the device
 * (find_virtio_mmio; ends the VM where the word is missing) and returns the
 * command line. */
static inline const char *guest_start(const uint8_t *zero_page, uint64_t *size, uint64_t *irq)
{
	report(BOOT_MAGIC);
	const char *cmdline = guest_cmdline(zero_page);
	if (!find_virtio_mmio(cmdline, size, irq))
		end();
	return cmdline;
}

/* DeviceFeatures words 0 and 1 (read in that order). */
static inline void device_features(uint32_t *f0, uint32_t *f1)
{
	wr(R_DEV_FEAT_SEL, 0);
	*f0 = rd(R_DEV_FEAT);
	wr(R_DEV_FEAT_SEL, 1);
	*f1 = rd(R_DEV_FEAT);
}
/* Start of the driver handshake for guests that report the same way: device
 * id; reset, ACKNOWLEDGE, DRIVER; DeviceFeatures words 0 and 1 (reported). */
static inline void driver_begin(uint32_t *f0, uint32_t *f1)
{
	report(rd(R_DEVICE_ID));
	wr(R_STATUS, 0);
	wr(R_STATUS, S_ACK);
	wr(R_STATUS, S_ACK | S_DRIVER);
	device_features(f0, f1);
	report(*f0);
	report(*f1);
}
/* Writes DriverFeatures words 0 and 1, then sets FEATURES_OK (on top of
 * ACKNOWLEDGE|DRIVER); returns the status read back. */
static inline uint32_t driver_features(uint32_t w0, uint32_t w1)
{
	wr(R_DRV_FEAT_SEL, 0);
	wr(R_DRV_FEAT, w0);
	wr(R_DRV_FEAT_SEL, 1);
	wr(R_DRV_FEAT, w1);
	wr(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	return rd(R_STATUS);
}

/* For the queue QueueSel selects: sets its size and ring addresses, then
 * QueueReady. */
static inline void queue_activate(uint32_t size, const struct desc *desc, const struct avail *avail,
				  const struct used *used)
{
	wr(R_QUEUE_NUM, size);
	uint64_t d = (uint64_t)(uintptr_t)desc, a = (uint64_t)(uintptr_t)avail,
		 u = (uint64_t)(uintptr_t)used;
	wr(R_DESC_LO, (uint32_t)d);
	wr(R_DESC_HI, (uint32_t)(d >> 32));
	wr(R_AVAIL_LO, (uint32_t)a);
	wr(R_AVAIL_HI, (uint32_t)(a >> 32));
	wr(R_USED_LO, (uint32_t)u);
	wr(R_USED_HI, (uint32_t)(u >> 32));
	wr(R_QUEUE_READY, 1);
}

/* The compiler may emit calls to these even in freestanding code. */
void *memset(void *d, int c, unsigned long n)
{
	uint8_t *p = d;
	while (n--)
		*p++ = (uint8_t)c;
	return d;
}
void *memcpy(void *d, const void *s, unsigned long n)
{
	uint8_t *p = d;
	const uint8_t *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

#endif /* VIRTIO_GUEST_H */
