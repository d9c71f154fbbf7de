/* Drops from CPL 0 to CPL 3 and runs a compute loop there, natively on every KVM (PVM included).
   Supervisor part: mark the first 2 MiB user-accessible in vireo's page tables, load a GDT with
   ring-3 segments, iretq to ring 3 with IOPL 3. User part: sum 1..N, print "cpl=3 sum=<hex>",
   leave through isa-debug-exit with value 0 (status 1). No interrupts or faults: a non-PVM guest
   cannot take them at CPL 3 on PVM hosts. */
#include "serial64.inc"
#define N 200000000
.code64
.section .text.start, "ax"
.global _start
_start:
  /* Walk CR3 -> PML4[0] -> PDPT[0] -> PD[0] and set the U/S bit on each. */
  mov %cr3, %rax
  and $~0xfff, %rax
  orq $4, (%rax)
  mov (%rax), %rbx
  and $~0xfff, %rbx
  orq $4, (%rbx)
  mov (%rbx), %rcx
  and $~0xfff, %rcx
  orq $4, (%rcx)
  mov %cr3, %rax
  mov %rax, %cr3
  lgdt gdtr(%rip)
  lea user_stack_top(%rip), %rax
  pushq $0x23          /* SS: user data, RPL 3 */
  push %rax            /* RSP */
  pushq $0x3002        /* RFLAGS: IOPL 3, IF off */
  pushq $0x1b          /* CS: user code, RPL 3 */
  lea user_entry(%rip), %rax
  push %rax
  iretq

user_entry:
  mov $N, %rcx
  xor %rax, %rax
1:
  add %rcx, %rax
  dec %rcx
  jnz 1b
  mov %rax, %r12
  lea msg_cpl(%rip), %rsi
  call puts
  mov %cs, %ax
  and $3, %al
  add $'0', %al
  call putc
  lea msg_sum(%rip), %rsi
  call puts
  mov %r12, %rax
  call puthex
  mov $'\n', %al
  call putc
  xor %al, %al
  out %al, $0xf4
1:
  jmp 1b

/* puthex: print %rax as 16 hex digits. */
puthex:
  mov %rax, %r13
  mov $16, %r14
2:
  rol $4, %r13
  mov %r13, %rax
  and $0xf, %rax
  lea hexdigits(%rip), %rbx
  mov (%rbx,%rax), %al
  call putc
  dec %r14
  jnz 2b
  ret
  PUTC_FN

.section .rodata
msg_cpl: .asciz "cpl="
msg_sum: .asciz " sum="
hexdigits: .ascii "0123456789abcdef"
.align 8
gdt:
  .quad 0
  .quad 0x00af9b000000ffff   /* 0x08 kernel code 64 */
  .quad 0x00cf93000000ffff   /* 0x10 kernel data */
  .quad 0x00affb000000ffff   /* 0x18 user code 64, DPL 3 */
  .quad 0x00cff3000000ffff   /* 0x20 user data, DPL 3 */
gdt_end:
gdtr:
  .word gdt_end - gdt - 1
  .quad gdt
.section .bss
.align 16
  .skip 8192
user_stack_top:
