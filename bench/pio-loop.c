/*
 * The peer for vireo's PIO exit benchmark: a minimal VMM in C that talks to /dev/kvm directly.
 * It builds the same VM vireo builds by default (TSS address, in-kernel irqchip and PIT, one
 * memory slot, supported CPUID), loads the same ELF64 guest, enters it in the same 64-bit long-mode
 * state (vireo's GDT at 0x500, empty IDT at 0x520, identity page tables at 0x9000..0xefff in
 * 2 MiB pages, RSP 0x8ff0, RSI 0x7000), then runs the loop a minimal VMM runs: KVM_RUN, check the
 * exit reason, handle port I/O, re-enter. A write to port 0xf4 (isa-debug-exit) ends the run.
 *
 * Usage: pio-loop <guest.elf> [mem MiB]
 * Prints one JSON line: {"exits":<IO exits>,"ns":<ns from the first KVM_RUN to the debug exit>,"status":<n>}
 */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "pio-loop: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void fail(const char *what) {
  fprintf(stderr, "pio-loop: %s\n", what);
  exit(2);
}

/* Same descriptors as src/arch/x86_64/gdt.ts GDT_64. */
static uint64_t gdt_entry(uint64_t flags, uint64_t base, uint64_t limit) {
  return ((base & 0xff000000ULL) << 32) | ((flags & 0x0000f0ffULL) << 40) | ((limit & 0x000f0000ULL) << 32) |
         ((base & 0x00ffffffULL) << 16) | (limit & 0x0000ffffULL);
}

static struct kvm_segment seg_from_gdt(uint64_t e, int index) {
  struct kvm_segment s;
  memset(&s, 0, sizeof s);
  uint32_t limit_raw = (uint32_t)((e & 0xffff) | (((e >> 48) & 0xf) << 16));
  s.base = ((e >> 16) & 0xffffff) | (((e >> 56) & 0xff) << 24);
  s.g = (e >> 55) & 1;
  s.limit = s.g ? limit_raw * 4096u + 0xfff : limit_raw;
  s.selector = (uint16_t)(index * 8);
  s.type = (e >> 40) & 0xf;
  s.present = (e >> 47) & 1;
  s.dpl = (e >> 45) & 3;
  s.db = (e >> 54) & 1;
  s.s = (e >> 44) & 1;
  s.l = (e >> 53) & 1;
  s.avl = (e >> 52) & 1;
  s.unusable = !s.present;
  return s;
}

int main(int argc, char **argv) {
  if (argc < 2) fail("usage: pio-loop <guest.elf> [mem MiB]");
  size_t mem_size = (size_t)(argc > 2 ? atoi(argv[2]) : 128) << 20;

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("open /dev/kvm");
  if (ioctl(kvm, KVM_GET_API_VERSION, 0) != 12) fail("KVM API version is not 12");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0) die("KVM_SET_TSS_ADDR");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  struct kvm_pit_config pit;
  memset(&pit, 0, sizeof pit);
  pit.flags = KVM_PIT_SPEAKER_DUMMY; /* as vireo */
  if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");

  uint8_t *mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) die("mmap guest memory");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = mem_size, .userspace_addr = (uint64_t)(uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int nent = 256;
  struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + nent * sizeof(struct kvm_cpuid_entry2));
  cpuid->nent = nent;
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid) < 0) die("KVM_GET_SUPPORTED_CPUID");
  if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
  struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");

  /* Load the ELF64 guest's PT_LOAD segments. */
  int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open guest");
  struct stat st;
  if (fstat(fd, &st) < 0) die("fstat guest");
  uint8_t *img = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (img == MAP_FAILED) die("mmap guest");
  Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
  if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64) fail("guest is not ELF64");
  for (int i = 0; i < eh->e_phnum; i++) {
    Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff + (size_t)i * eh->e_phentsize);
    if (ph->p_type != PT_LOAD) continue;
    if (ph->p_paddr + ph->p_memsz > mem_size) fail("guest segment outside memory");
    memcpy(mem + ph->p_paddr, img + ph->p_offset, ph->p_filesz);
    memset(mem + ph->p_paddr + ph->p_filesz, 0, ph->p_memsz - ph->p_filesz);
  }

  /* GDT, IDT and identity page tables exactly where vireo puts them. */
  uint64_t gdt[4] = {0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)};
  memcpy(mem + 0x500, gdt, sizeof gdt);
  memset(mem + 0x520, 0, 8);
  uint64_t *pml4 = (uint64_t *)(mem + 0x9000), *pdpt = (uint64_t *)(mem + 0xa000);
  memset(pml4, 0, 0x1000);
  memset(pdpt, 0, 0x1000);
  pml4[0] = 0xa000 | 3;
  for (uint64_t d = 0; d < 4; d++) {
    uint64_t *pd = (uint64_t *)(mem + 0xb000 + d * 0x1000);
    pdpt[d] = (0xb000 + d * 0x1000) | 3;
    for (uint64_t i = 0; i < 512; i++) pd[i] = ((d * 512 + i) << 21) | 3 | 0x80;
  }

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  sregs.gdt.base = 0x500;
  sregs.gdt.limit = sizeof gdt - 1;
  sregs.idt.base = 0x520;
  sregs.idt.limit = 7;
  sregs.cs = seg_from_gdt(gdt[1], 1);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg_from_gdt(gdt[2], 2);
  sregs.tr = seg_from_gdt(gdt[3], 3);
  sregs.cr3 = 0x9000;
  sregs.cr4 |= 0x20;                       /* PAE */
  sregs.cr0 |= 0x1 | 0x10 | 0x80000000UL;  /* PE, ET, PG */
  sregs.efer |= 0x100 | 0x400;             /* LME, LMA */
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = eh->e_entry;
  regs.rsp = regs.rbp = 0x8ff0;
  regs.rsi = 0x7000;
  regs.rflags = 2;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

  /* The measured loop. */
  uint64_t exits = 0;
  int status = -1;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      die("KVM_RUN");
    }
    if (run->exit_reason == KVM_EXIT_IO) {
      exits++;
      if (run->io.port == 0xf4 && run->io.direction == KVM_EXIT_IO_OUT) {
        uint8_t v = *((uint8_t *)run + run->io.data_offset);
        status = ((v << 1) | 1) & 0xff;
        break;
      }
      continue; /* Nothing else is claimed: writes are dropped, reads see what KVM left. */
    }
    fprintf(stderr, "pio-loop: unexpected exit reason %u\n", run->exit_reason);
    return 2;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
  printf("{\"exits\":%llu,\"ns\":%lld,\"status\":%d}\n", (unsigned long long)exits, ns, status);
  return 0;
}
