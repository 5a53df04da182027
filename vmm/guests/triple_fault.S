/* Loads an empty IDT and raises #UD: no handler -> #GP -> #DF -> triple fault,
 * which KVM reports as KVM_EXIT_SHUTDOWN. */
#include "abi.h"
	.code64
	.text
	.globl _start
_start:
	report $BOOT_MAGIC
	lidt empty_idt(%rip)
	ud2
	report $END_MAGIC               /* never reached */
	reset_vm
	.data
empty_idt:
	.word 0
	.quad 0
