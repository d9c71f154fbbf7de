/* A guest of several behaviours, chosen by the first byte of the command line (zero page in RSI):
     't'  triple fault (empty IDT, then ud2)
     'h'  cli; hlt (with --no-irqchip this is a HLT exit)
     'c'  count forever: increment the 64-bit word at 0x1ff000 (stays in KVM_RUN, no exits)
     'e'  echo: poll COM1 for input, print each byte upper-cased; 'q' exits with value 0x12 (status 0x25)
     else exit with value 0x7e (status 0xfd). */
#include "serial64.inc"
#define COUNTER 0x1ff000
.code64
.section .text.start, "ax"
.global _start
_start:
  mov 0x228(%rsi), %eax      /* boot_params.hdr.cmd_line_ptr */
  movzbl (%rax), %eax
  cmp $'t', %al
  je triple
  cmp $'h', %al
  je halt
  cmp $'c', %al
  je count
  cmp $'e', %al
  je echo
  mov $0x7e, %al
  out %al, $0xf4
triple:
  lidt idtr(%rip)
  ud2
halt:
  cli
  hlt
  jmp halt
count:
  mov $COUNTER, %rdi
  movq $0, (%rdi)
1:
  incq (%rdi)
  jmp 1b
echo:
  lea ready(%rip), %rsi
  call puts
1:
  mov $0x3fd, %dx
  in %dx, %al
  test $1, %al
  jz 1b
  mov $0x3f8, %dx
  in %dx, %al
  cmp $'q', %al
  je 3f
  cmp $'a', %al
  jb 2f
  cmp $'z', %al
  ja 2f
  sub $0x20, %al
2:
  call putc
  jmp 1b
3:
  mov $0x12, %al
  out %al, $0xf4
  PUTC_FN
.section .rodata
ready: .asciz "echo ready\n"
.align 8
idtr:
  .word 0
  .quad 0
