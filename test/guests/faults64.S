/* Guest failures on purpose, chosen by the first byte of the command line (zero page in RSI):
   't' triple fault (empty IDT, then ud2); 'h' cli; hlt; anything else exits with value 0x7e. */
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
  mov $0x7e, %al
  out %al, $0xf4
triple:
  lidt idtr(%rip)
  ud2
halt:
  cli
  hlt
  jmp halt
.section .rodata
.align 8
idtr:
  .word 0
  .quad 0
