/* A PVH guest: no Multiboot header, only Xen's XEN_ELFNOTE_PHYS32_ENTRY note, so vireo enters it the
   way it enters a Linux kernel built with CONFIG_PVH: flat 32-bit protected mode, paging off,
   EBX -> hvm_start_info. It checks the start_info magic, prints "pvh ok", the command line, the
   number of modules and memory map entries, and exits with value 0x2c (status 0x59); a bad magic
   exits with 0x7b (status 0xf7). */
.code32
.text
.global pvh_start
pvh_start:
  mov $stack_top, %esp          /* PVH gives no stack */
  cmpl $0x336ec578, (%ebx)      /* XEN_HVM_START_MAGIC_VALUE */
  jne bad
  mov %ebx, %ebp
  mov $msg_ok, %esi
  call puts
  mov 24(%ebp), %esi            /* cmdline_paddr (low half) */
  call puts
  mov $msg_mods, %esi
  call puts
  mov 12(%ebp), %eax            /* nr_modules */
  call putdigit
  mov $msg_map, %esi
  call puts
  mov 48(%ebp), %eax            /* memmap_entries */
  call putdigit
  mov $'\n', %al
  call putc
  mov $0x2c, %al
  out %al, $0xf4
bad:
  mov $0x7b, %al
  out %al, $0xf4

putdigit:                       /* %eax < 10 */
  add $'0', %al
  jmp putc
puts:
  lodsb
  test %al, %al
  jz 2f
  call putc
  jmp puts
2:
  ret
putc:
  mov %al, %bl
1:
  mov $0x3fd, %dx
  in %dx, %al
  test $0x20, %al
  jz 1b
  mov %bl, %al
  mov $0x3f8, %dx
  out %al, %dx
  ret
msg_ok: .asciz "pvh ok cmdline="
msg_mods: .asciz " modules="
msg_map: .asciz " memmap="
.bss
.align 16
.skip 4096
stack_top:

.section .note.Xen, "a"
.align 4
.long 4                         /* namesz */
.long 4                         /* descsz */
.long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.align 4
.long pvh_start
