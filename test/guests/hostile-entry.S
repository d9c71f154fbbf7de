/* Entry of the seeded hostile guest (hostile-guest.c). Supervisor part, kept short (PVM emulates it):
   build identity page tables for the low 4 GiB in .bss with the user bit on every level (so that
   ring 3 reaches RAM, the virtio-mmio windows and the zero page, and no device write to low memory
   can take the page tables away), load a GDT with ring-3 segments and a TSS whose I/O bitmap allows
   every port (PVM runs ring 3 with IOPL 0 whatever RFLAGS says, so each in/out is checked against
   the bitmap: vireo's boot TSS has base 0, and low memory as a bitmap forbids ports at random),
   iretq to ring 3 with interrupts off, and call hg_main(zero page). Ring-3 code runs natively on every KVM, PVM included;
   no interrupt or fault is ever taken. */
.code64
.section .text.start, "ax"
.global _start
_start:
  mov %rsi, %r12                 /* the zero page vireo passes (Linux 64-bit boot protocol) */
  lea pt_pml4(%rip), %rdi
  lea pt_pdpt(%rip), %rax
  or $7, %rax                    /* present, writable, user */
  mov %rax, (%rdi)
  lea pt_pdpt(%rip), %rdi
  lea pt_pd(%rip), %rax
  or $7, %rax
  mov $4, %ecx
1:
  mov %rax, (%rdi)
  add $8, %rdi
  add $0x1000, %rax
  dec %ecx
  jnz 1b
  lea pt_pd(%rip), %rdi
  mov $0x87, %eax                /* 2 MiB page: present, writable, user, PS */
  mov $2048, %ecx
1:
  mov %rax, (%rdi)
  add $8, %rdi
  add $0x200000, %rax
  dec %ecx
  jnz 1b
  lea pt_pml4(%rip), %rax
  mov %rax, %cr3
  lea tss(%rip), %rax            /* the TSS descriptor's base, at run time */
  lea gdt_tss(%rip), %rdi
  mov %ax, 2(%rdi)
  shr $16, %rax
  mov %al, 4(%rdi)
  mov %ah, 7(%rdi)
  lgdt gdtr(%rip)
  mov $0x28, %ax
  ltr %ax
  lea user_stack_top(%rip), %rax
  pushq $0x23                    /* SS: user data, RPL 3 */
  push %rax                      /* RSP */
  pushq $0x3002                  /* RFLAGS: IOPL 3, IF off */
  pushq $0x1b                    /* CS: user code, RPL 3 */
  lea user_entry(%rip), %rax
  push %rax
  iretq

user_entry:
  mov $0x23, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %r12, %rdi
  call hg_main
1:
  jmp 1b

.section .data
.align 8
gdt:
  .quad 0
  .quad 0x00af9b000000ffff       /* 0x08 kernel code 64 */
  .quad 0x00cf93000000ffff       /* 0x10 kernel data */
  .quad 0x00affb000000ffff       /* 0x18 user code 64, DPL 3 */
  .quad 0x00cff3000000ffff       /* 0x20 user data, DPL 3 */
gdt_tss:                         /* 0x28 64-bit TSS, available; base filled in at run time */
  .word tss_end - tss - 1
  .word 0
  .byte 0, 0x89, 0, 0
  .quad 0
gdt_end:
gdtr:
  .word gdt_end - gdt - 1
  .quad gdt

.align 16
tss:
  .skip 0x66
  .word tss_iomap - tss          /* I/O map base */
tss_iomap:
  .skip 8192                     /* every port allowed */
  .byte 0xff
tss_end:

.section .bss
.align 4096
pt_pml4: .skip 4096
pt_pdpt: .skip 4096
pt_pd: .skip 4 * 4096
.align 16
  .skip 65536
user_stack_top:
