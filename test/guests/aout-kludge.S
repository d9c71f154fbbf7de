/* A flat-binary Multiboot guest using the a.out kludge (header flag 16): the header gives the load
   and entry addresses. Prints "aout kludge ok", exits with value 0x2b (status 0x57). */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00010000
.code32
.text
.global _start
base:
header:
  .long MB_MAGIC
  .long MB_FLAGS
  .long -(MB_MAGIC + MB_FLAGS)
  .long header      /* header_addr */
  .long base        /* load_addr */
  .long data_end    /* load_end_addr */
  .long bss_end     /* bss_end_addr */
  .long _start      /* entry_addr */
_start:
  cmp $0x2BADB002, %eax
  jne bad
  /* The BSS must be zero. */
  cmpl $0, bss_word
  jne bad
  mov $msg, %esi
1:
  lodsb
  test %al, %al
  jz 3f
  mov %al, %bl
2:
  mov $0x3fd, %dx
  in %dx, %al
  test $0x20, %al
  jz 2b
  mov %bl, %al
  mov $0x3f8, %dx
  out %al, %dx
  jmp 1b
3:
  mov $0x2b, %al
  out %al, $0xf4
bad:
  mov $0x7c, %al
  out %al, $0xf4
msg: .asciz "aout kludge ok\n"
.align 4
data_end:
bss_word: .skip 4096
bss_end:
