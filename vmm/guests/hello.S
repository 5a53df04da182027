/* Smallest guest: one byte to the serial port, then reset. Used by the start-up benchmark. */
#include "abi.h"
	.code64
	.text
	.globl _start
_start:
	mov $COM1_PORT, %dx
	mov $'!', %al
	out %al, %dx
	mov $'\n', %al
	out %al, %dx
	reset_vm
