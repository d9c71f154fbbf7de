/* Resident-memory benchmark guest: a Multiboot 1 ELF32 that writes "ready\n" to COM1 (polling,
   no interrupts) and then halts with interrupts off for good. It touches only its own image and
   a few bytes of stack, so nearly all of guest RAM stays untouched. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000000
#define COM1 0x3f8
.section .multiboot, "a"
.align 4
.long MB_MAGIC
.long MB_FLAGS
.long -(MB_MAGIC + MB_FLAGS)
.code32
.text
.global _start
_start:
  cli
  mov $msg, %esi
1:
  movb (%esi), %bl
  test %bl, %bl
  jz 3f
2:
  mov $COM1 + 5, %dx   /* LSR: wait for THR empty */
  in %dx, %al
  test $0x20, %al
  jz 2b
  mov $COM1, %dx
  mov %bl, %al
  out %al, %dx
  inc %esi
  jmp 1b
3:
  cli
  hlt
  jmp 3b
.section .rodata
msg: .asciz "ready\n"
