/* An exit storm: N port writes and reads on an unclaimed port, N MMIO writes and reads in the
   MMIO hole (unclaimed), then one 16-byte `rep outsb` to the POST-code port. Unclaimed reads must
   return all ones; any other value makes the guest exit with value 0x7f (status 0xff).
   Success prints "storm ok" and exits with value 0x11 (status 0x23). */
#include "serial64.inc"
#define N 20000
#define PORT 0x510
#define MMIO 0xd0000000
.code64
.section .text.start, "ax"
.global _start
_start:
  mov $N, %ecx
  mov $PORT, %dx
1:
  out %al, %dx
  in %dx, %al
  cmp $0xff, %al
  jne fail
  dec %ecx
  jnz 1b
  mov $N, %ecx
  mov $MMIO, %rdi
2:
  movl $0x12345678, (%rdi)
  mov (%rdi), %eax
  cmp $0xffffffff, %eax
  jne fail
  dec %ecx
  jnz 2b
  lea codes(%rip), %rsi
  mov $16, %ecx
  mov $0x80, %dx
  rep outsb
  lea msg(%rip), %rsi
  call puts
  mov $0x11, %al
  out %al, $0xf4
fail:
  mov $0x7f, %al
  out %al, $0xf4
  PUTC_FN
.section .rodata
codes: .byte 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
msg: .asciz "storm ok\n"
