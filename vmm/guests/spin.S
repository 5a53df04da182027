/* Reports once, then loops forever without any exit: only a timeout ends it. */
#include "abi.h"
	.code64
	.text
	.globl _start
_start:
	report $BOOT_MAGIC
1:	jmp 1b
