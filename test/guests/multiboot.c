/* A Multiboot 1 test guest in C: prints what the boot loader handed it (magic, memory sizes,
   command line, memory map, modules), then exits through isa-debug-exit with value 0x2a
   (status 0x55) when the magic is right, 0x7d otherwise. */
typedef unsigned int u32;
typedef unsigned long long u64;

static inline void outb(unsigned short port, unsigned char v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline unsigned char inb(unsigned short port) {
  unsigned char v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}

static void putc(char c) {
  while (!(inb(0x3fd) & 0x20)) {
  }
  outb(0x3f8, (unsigned char)c);
}
static void puts(const char *s) {
  while (*s) putc(*s++);
}
static void putn(const char *s, u32 n) {
  for (u32 i = 0; i < n; i++) putc(s[i]);
}
static void putu(u32 v) {
  char b[11];
  int i = 10;
  b[i] = 0;
  do {
    b[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  puts(&b[i]);
}

struct mb_info {
  u32 flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
  u32 syms[4];
  u32 mmap_length, mmap_addr;
  u32 drives_length, drives_addr, config_table, boot_loader_name;
};
struct mb_module {
  u32 start, end, string, reserved;
};
struct __attribute__((packed)) mb_mmap {
  u32 size;
  u64 addr, len;
  u32 type;
};

void mb_main(u32 magic, struct mb_info *info) {
  if (magic != 0x2BADB002) {
    puts("bad multiboot magic\n");
    outb(0xf4, 0x7d);
  }
  puts("multiboot ok\n");
  if (info->flags & (1u << 9)) {
    puts("loader: ");
    puts((const char *)info->boot_loader_name);
    putc('\n');
  }
  if (info->flags & 1) {
    puts("mem_lower=");
    putu(info->mem_lower);
    puts(" mem_upper=");
    putu(info->mem_upper);
    putc('\n');
  }
  if (info->flags & (1u << 2)) {
    puts("cmdline: ");
    puts((const char *)info->cmdline);
    putc('\n');
  }
  if (info->flags & (1u << 6)) {
    u32 ram = 0;
    u32 n = 0;
    for (u32 p = info->mmap_addr; p < info->mmap_addr + info->mmap_length;) {
      struct mb_mmap *e = (struct mb_mmap *)p;
      if (e->type == 1) ram += (u32)(e->len >> 10);
      n++;
      p += e->size + 4;
    }
    puts("mmap entries=");
    putu(n);
    puts(" ram_kib=");
    putu(ram);
    putc('\n');
  }
  if (info->flags & (1u << 3)) {
    puts("modules=");
    putu(info->mods_count);
    putc('\n');
    struct mb_module *m = (struct mb_module *)info->mods_addr;
    for (u32 i = 0; i < info->mods_count; i++) {
      puts("module ");
      putu(i);
      puts(" aligned=");
      putu((m[i].start & 0xfff) == 0);
      puts(" bytes=");
      putu(m[i].end - m[i].start);
      puts(" string=");
      puts((const char *)m[i].string);
      puts(" data: ");
      putn((const char *)m[i].start, m[i].end - m[i].start);
      putc('\n');
    }
  }
  outb(0xf4, 0x2a);
}
