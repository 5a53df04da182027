/* Port/MMIO ABI between the test guests and the tests (mirrored in src/guests.rs). */
#define REPORT_PORT   0x510       /* out %eax: one 32-bit value for the test */
#define TEXT_PORT     0x514       /* out %al: one byte of text */
#define COM1_PORT     0x3f8       /* 8250 UART data register */
#define I8042_CMD     0x64        /* i8042 command port */
#define I8042_RESET   0xfe        /* i8042 "pulse reset line" command */
#define TESTDEV_MMIO  0xd0000000  /* test MMIO device: write +0, read +8 */
#define UNCLAIMED_MMIO 0xd0100000 /* nothing registered here */
#define BOOT_MAGIC    0xb007c0de  /* first report of the boot-contract guest */
#define END_MAGIC     0xe0d0e0d0  /* last report before reset */
#define SMP_TAG       0xa0000000  /* SMP guest: SMP_TAG | apic id */

#ifdef __ASSEMBLER__
/* Write a 32-bit value in \reg to REPORT_PORT (clobbers %eax, %dx). */
.macro report reg
	mov \reg, %eax
	mov $REPORT_PORT, %dx
	out %eax, %dx
.endm

/* End the VM: i8042 reset, then spin in case it did not take. */
.macro reset_vm
	mov $I8042_RESET, %al
	out %al, $I8042_CMD
1:	pause
	jmp 1b
.endm
#endif /* __ASSEMBLER__ */
