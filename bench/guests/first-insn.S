/* Start-up benchmark guest: a Multiboot 1 ELF32 whose first instruction writes AL to
   isa-debug-exit (port 0xf4). A Multiboot loader enters with EAX = 0x2BADB002, so AL = 0x02 and
   the VMM exits with status (2 << 1) | 1 = 5. Booted unchanged by vireo and by QEMU's -kernel. */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000000
.section .multiboot, "a"
.align 4
.long MB_MAGIC
.long MB_FLAGS
.long -(MB_MAGIC + MB_FLAGS)
.code32
.text
.global _start
_start:
  out %al, $0xf4
1:
  cli
  hlt
  jmp 1b
