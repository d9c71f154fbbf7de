/* Multiboot 1 header and entry for the C test guest: checks nothing, sets a stack, calls
   mb_main(eax, ebx). */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* page-align modules, memory info */
.section .multiboot, "a"
.align 4
.long MB_MAGIC
.long MB_FLAGS
.long -(MB_MAGIC + MB_FLAGS)
.code32
.text
.global _start
_start:
  mov $stack_top, %esp
  push %ebx
  push %eax
  call mb_main
1:
  jmp 1b
.bss
.align 16
.skip 16384
stack_top:
