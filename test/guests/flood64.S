/* A console flood: 1200 lines of 65 bytes (76 KiB, more than a pipe's 64 KiB) on COM1, then a halt
   with interrupts off, forever: once its output is out (or dropped), the guest uses no CPU, so what
   the VMM burns while its stdout is full is the VMM's own. */
#include "serial64.inc"
.code64
.section .text.start, "ax"
.global _start
_start:
  mov $1200, %ebx
1:
  lea msg(%rip), %rsi
  call puts
  dec %ebx
  jnz 1b
  cli
2:
  hlt
  jmp 2b
  PUTC_FN
.section .rodata
msg: .asciz "flood: the guest writes faster than anybody reads its console...\n"
