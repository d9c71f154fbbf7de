/* A hostile driver (issue 16, item 1): through real MMIO and port exits it writes selector values with
   bit 31 set, all ones and just past the end to two real virtio-mmio devices, checks what virtio 1.2
   §4.2.2 says they read back, then hammers the legacy ports with wide and straddling accesses.
   Run with `--rng --balloon 0`: virtio-rng at 0xd0000000, virtio-balloon at 0xd0001000.
   Each check bumps %r15d; a failed check prints "hostile fail NNN" (the check's number, in hex) and exits
   with value 0x7f (status 0xff). Success prints "hostile ok" and exits with value 0x31 (status 0x63). */
#include "serial64.inc"
#define RNG 0xd0000000
#define BALLOON 0xd0001000

/* Compare a 32-bit register with an expected value; jump to fail when they differ. */
.macro EXPECT got, want
  inc %r15d
  cmp \want, \got
  jne fail
.endm

.code64
.section .text.start, "ax"
.global _start
_start:
  xor %r15d, %r15d
  mov $RNG, %rdi
  call virtio_checks
  mov $BALLOON, %rdi
  call virtio_checks
  call legacy_checks
  lea okmsg(%rip), %rsi
  call puts
  mov $0x31, %al
  out %al, $0xf4
  hlt

fail:
  lea failmsg(%rip), %rsi
  call puts
  mov %r15d, %eax
  shr $8, %eax
  call hexdigit
  mov %r15d, %eax
  shr $4, %eax
  call hexdigit
  mov %r15d, %eax
  call hexdigit
  mov $'\n', %al
  call putc
  mov $0x7f, %al
  out %al, $0xf4
  hlt

/* putc the low nibble of %eax as a hex digit. */
hexdigit:
  and $0xf, %eax
  lea hexchars(%rip), %rsi
  mov (%rsi,%rax), %al
  jmp putc

/* %rdi: the device's MMIO window. */
virtio_checks:
  movl (%rdi), %eax
  EXPECT %eax, $0x74726976          /* MagicValue: a real device is there */
  movl 0x04(%rdi), %eax
  EXPECT %eax, $2
  movl $0, 0x70(%rdi)               /* reset */
  /* Negotiate VERSION_1 so that queue registers are open for writing (FEATURES_OK, no DRIVER_OK). */
  movl $3, 0x70(%rdi)
  movl $1, 0x24(%rdi)
  movl $1, 0x20(%rdi)
  movl $0, 0x24(%rdi)
  movl $0, 0x20(%rdi)
  movl $0xb, 0x70(%rdi)
  movl 0x70(%rdi), %eax
  EXPECT %eax, $0xb
  movl $0, 0x30(%rdi)
  movl 0x34(%rdi), %eax
  inc %r15d
  test %eax, %eax                   /* queue 0 exists: QueueNumMax is its size */
  jz fail

  lea hostile(%rip), %rsi
  mov $NHOSTILE, %ecx
1:
  lodsl
  mov %eax, %ebx
  movl %ebx, 0x30(%rdi)             /* QueueSel */
  movl 0x34(%rdi), %eax
  EXPECT %eax, $0                   /* QueueNumMax: not available */
  movl 0x44(%rdi), %eax
  EXPECT %eax, $0                   /* QueueReady */
  movl %ebx, 0x38(%rdi)             /* QueueNum, addresses, ready: a queue that does not exist */
  movl %ebx, 0x80(%rdi)
  movl %ebx, 0x84(%rdi)
  movl %ebx, 0x90(%rdi)
  movl %ebx, 0x94(%rdi)
  movl %ebx, 0xa0(%rdi)
  movl %ebx, 0xa4(%rdi)
  movl $1, 0x44(%rdi)
  movl 0x44(%rdi), %eax
  EXPECT %eax, $0                   /* still not ready: the write changed nothing */
  movl %ebx, 0x50(%rdi)             /* QueueNotify */
  movl %ebx, 0x14(%rdi)             /* DeviceFeaturesSel */
  movl 0x10(%rdi), %eax
  EXPECT %eax, $0                   /* no feature bits past the second word */
  movl %ebx, 0x24(%rdi)             /* DriverFeaturesSel */
  movl %ebx, 0x20(%rdi)
  movl %ebx, 0xac(%rdi)             /* SHMSel: no region exists */
  movl 0xb0(%rdi), %eax
  EXPECT %eax, $0xffffffff
  movl 0xb4(%rdi), %eax
  EXPECT %eax, $0xffffffff
  movl 0xb8(%rdi), %eax
  EXPECT %eax, $0xffffffff
  movl 0xbc(%rdi), %eax
  EXPECT %eax, $0xffffffff
  movl %ebx, 0x64(%rdi)             /* InterruptACK */
  movl %ebx, 0xfc(%rdi)             /* ConfigGeneration is read-only */
  movzbl 0x31(%rdi), %eax           /* registers at odd sizes and offsets read 0 */
  EXPECT %eax, $0
  movzwl 0x36(%rdi), %eax
  EXPECT %eax, $0
  mov 0x30(%rdi), %rax
  inc %r15d
  test %rax, %rax
  jnz fail
  movw %bx, 0x32(%rdi)
  mov %rbx, 0x14(%rdi)
  movl %ebx, 0x31(%rdi)
  mov %rbx, 0xff8(%rdi)             /* configuration space: the last 8 bytes of the window */
  movw %bx, 0x101(%rdi)
  movl %ebx, 0x103(%rdi)
  mov 0xff8(%rdi), %rax
  dec %ecx
  jnz 1b

  /* The device is unharmed: queue 0 is still there, FEATURES_OK kept, no DEVICE_NEEDS_RESET. */
  movl $0, 0x30(%rdi)
  movl 0x34(%rdi), %eax
  inc %r15d
  test %eax, %eax
  jz fail
  movl 0x70(%rdi), %eax
  EXPECT %eax, $0xb
  movl $0xffffffff, 0x70(%rdi)      /* Status all ones: only the status byte counts */
  movl 0x70(%rdi), %eax
  inc %r15d
  test $0xffffff00, %eax
  jnz fail
  movl $0, 0x70(%rdi)               /* and a reset still works */
  movl 0x70(%rdi), %eax
  EXPECT %eax, $0
  ret

legacy_checks:
  /* CMOS: the index with the NMI bit selects byte 0x7f. */
  mov $0xff, %al
  out %al, $0x70
  mov $0x5a, %al
  out %al, $0x71
  mov $0x7f, %al
  out %al, $0x70
  xor %eax, %eax
  in $0x71, %al
  EXPECT %eax, $0x5a
  /* A dword across 0x70-0x73: the RTC answers its two ports, 0x72-0x73 are unclaimed. */
  mov $0xffffffff, %eax
  out %eax, $0x70
  in $0x70, %eax
  EXPECT %eax, $0xffff00ff
  /* COM1's scratch register by a dword that runs past the UART. */
  mov $0x3ff, %dx
  mov $0x11223344, %eax
  out %eax, %dx
  in %dx, %eax
  EXPECT %eax, $0xffffff44
  /* ACPI PM1 event block: byte lanes at every width. */
  mov $0x600, %dx
  mov $0x0120ffff, %eax
  out %eax, %dx
  in %dx, %eax
  EXPECT %eax, $0x01200000
  mov $0x602, %dx
  xor %eax, %eax
  out %ax, %dx
  mov $0x600, %dx
  in %dx, %eax
  EXPECT %eax, $0
  /* i8042: ports 0x62-0x63 are not registers (KVM's PIT takes 0x61); an unknown command, then a data
     byte, is acknowledged. A dword from 0x63 is cut at the end of the controller's range. */
  xor %eax, %eax
  in $0x62, %al
  EXPECT %eax, $0xff
  in $0x63, %eax
  EXPECT %eax, $0xffffffff
  mov $0xff, %al
  out %al, $0x64
  out %al, $0x60
  xor %eax, %eax
  in $0x60, %al
  EXPECT %eax, $0xfa
  /* pvpanic by a word: its event bits, then an unclaimed port. */
  mov $0x505, %dx
  xor %eax, %eax
  in %dx, %ax
  EXPECT %eax, $0xff03
  ret

  PUTC_FN

.section .rodata
.balign 4
hostile: .long 0x80000000, 0xffffffff, 0x7fffffff, 0xfffffffe, 0x80000001, 8, 9, 0x100
.set NHOSTILE, (. - hostile) / 4
okmsg: .asciz "hostile ok\n"
failmsg: .asciz "hostile fail "
hexchars: .ascii "0123456789abcdef"
