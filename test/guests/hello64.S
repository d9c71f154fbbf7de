/* The smallest useful guest: print a line on COM1, then leave through isa-debug-exit with value 0x10
   (process exit status 0x21 = 33). Entered by vireo in 64-bit long mode at CPL 0. */
#include "serial64.inc"
.code64
.section .text.start, "ax"
.global _start
_start:
  lea msg(%rip), %rsi
  call puts
  mov $0x10, %al
  out %al, $0xf4
  hlt
  PUTC_FN
.section .rodata
msg: .asciz "Hello from a vireo guest\n"
