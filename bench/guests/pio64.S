/* PIO exit benchmark guest: an ELF64 entered in 64-bit long mode at CPL 0 with vireo's identity
   page tables (bench/pio-loop.c sets up the same state). It writes AL to an unclaimed port N
   times, then writes 0 to isa-debug-exit (port 0xf4; exit status 1).
   The loop is unrolled 64 times so that nearly every guest instruction is an `out`: on PVM hosts
   CPL 0 code is emulated by KVM at about 1 us an instruction, and the loop's own dec/jnz would
   otherwise add to every exit. (An `out` from CPL 3 with IOPL 3 runs natively up to the trap but
   costs about 3x more per exit on PVM, so CPL 0 is the faster and more VMM-sensitive variant.)
   N comes from -DN=<count> and must be a multiple of 64. */
#ifndef N
#define N 192000
#endif
#define UNROLL 64
#define PIO_PORT 0x510 /* claimed by nothing in vireo; the C harness drops it too */
#if N % UNROLL
#error N must be a multiple of 64
#endif
.code64
.section .text.start, "ax"
.global _start
_start:
  mov $(N / UNROLL), %ecx
  mov $PIO_PORT, %dx
  xor %eax, %eax
  test %ecx, %ecx
  jz 2f
1:
  .rept UNROLL
  out %al, %dx
  .endr
  dec %ecx
  jnz 1b
2:
  xor %al, %al
  out %al, $0xf4
3:
  hlt
  jmp 3b
