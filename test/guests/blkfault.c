/* blkfault: a Multiboot test guest in C with a small virtio-mmio (version 2) block driver, for
   what a guest sees when the host's disk fails. It finds the first virtio-blk device in the window
   at 0xd0000000, negotiates VERSION_1 and FLUSH, and with one split queue (polled, no interrupts):

     1. writes CHUNKS chunks of KIB KiB each (chunk i at byte i * KIB KiB, every 32-bit word a
        function of i and its place), BATCH requests made available before each notify;
     2. FLUSH, twice;
     3. reads every chunk back and checks those whose write was answered OK;
     4. writes chunk 0 again (in place).

   With `swap=1` it does none of that: it prints `blkswap before cap=SECTORS word=W gen=G` (W: the
   first 32-bit word of sector 0), polls InterruptStatus for a configuration change (`wait=POLLS`),
   acknowledges it and prints `blkswap after cap=… word=… gen=…` from the drive's new file (the host
   replaced it: PATCH /drives/{id} path_on_host), then a read of the last sector's status as `last=S`,
   and halts for good (the host ends the VM).

   With `reads=N` it does N reads of K KiB (B at a time) and prints `blkread n=N ok=N` (read_mode).

   Parameters from the command line: `chunks=N kib=K batch=B`. Prints one line
     blkfault cap=SECTORS ok=N ioerr=N other=N flush=S,S readerr=N bad=N rewrite=S map=OOE...
   (S: 0 OK, 1 IOERR, 2 UNSUPP; map: O or E per chunk's write) and exits through isa-debug-exit
   with 0x2a (status 0x55); 0x7d when there is no device or it misbehaves. */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

static inline void outb(unsigned short port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(unsigned short port) {
  u8 v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static void putc(char c) {
  while (!(inb(0x3fd) & 0x20)) {
  }
  outb(0x3f8, (u8)c);
}
static void puts(const char *s) {
  while (*s) putc(*s++);
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
static void fail(const char *why) {
  puts("blkfault error: ");
  puts(why);
  putc('\n');
  outb(0xf4, 0x7d);
  for (;;) {
  }
}

#define MMIO(off) (*(volatile u32 *)(base + (off)))
static u32 base;

struct desc {
  u64 addr;
  u32 len;
  u16 flags, next;
};
#define QSIZE 64
#define MAX_BATCH 8
#define MAX_KIB 64
#define MAX_CHUNKS 512
static struct desc descs[QSIZE] __attribute__((aligned(4096)));
static struct {
  u16 flags, idx, ring[QSIZE], used_event;
} avail __attribute__((aligned(4096)));
static struct {
  u16 flags, idx;
  struct {
    u32 id, len;
  } ring[QSIZE];
  u16 avail_event;
} used __attribute__((aligned(4096)));
static struct {
  u32 type, reserved;
  u64 sector;
} hdrs[MAX_BATCH];
static volatile u8 statuses[MAX_BATCH];
static u32 data[MAX_BATCH][MAX_KIB * 256] __attribute__((aligned(4096)));
static char map[MAX_CHUNKS + 1];
static u16 last_used;

/* Makes request slot s available: header, optional data (`in`: the device writes it), status. */
static void post(u32 s, u32 type, u64 sector, u32 len, int in) {
  u32 d = s * 3;
  hdrs[s].type = type;
  hdrs[s].reserved = 0;
  hdrs[s].sector = sector;
  statuses[s] = 0xee;
  descs[d].addr = (u32)&hdrs[s];
  descs[d].len = 16;
  descs[d].flags = 1; /* NEXT */
  u32 st = d + 1;
  if (len) {
    descs[d].next = (u16)(d + 1);
    descs[d + 1].addr = (u32)data[s];
    descs[d + 1].len = len;
    descs[d + 1].flags = (u16)(1 | (in ? 2 : 0));
    descs[d + 1].next = (u16)(d + 2);
    st = d + 2;
  } else
    descs[d].next = (u16)st;
  descs[st].addr = (u32)&statuses[s];
  descs[st].len = 1;
  descs[st].flags = 2; /* WRITE */
  avail.ring[avail.idx % QSIZE] = (u16)d;
  __asm__ volatile("" ::: "memory");
  avail.idx++;
}

/* Notifies and waits for `n` answers. */
static void kick(u32 n) {
  __asm__ volatile("mfence" ::: "memory");
  MMIO(0x50) = 0;
  for (u32 spins = 0; (u16)(*(volatile u16 *)&used.idx - last_used) < n; spins++)
    if (spins > 400000000u) fail("no answer from the device");
  last_used = (u16)(last_used + n);
}

static u32 word(u32 chunk, u32 i) { return (chunk * 0x01000193u) ^ (i * 2654435761u) ^ 0x5a5a0000u; }

static u32 param(const char *cmdline, const char *key, u32 dflt) {
  for (const char *p = cmdline; p && *p; p++) {
    const char *k = key;
    const char *q = p;
    while (*k && *q == *k) {
      k++;
      q++;
    }
    if (*k || *q != '=' || (p != cmdline && p[-1] != ' ')) continue;
    u32 v = 0;
    for (q++; *q >= '0' && *q <= '9'; q++) v = v * 10 + (u32)(*q - '0');
    return v;
  }
  return dflt;
}

/* The first word of sector `sector` (a one-sector read into slot 0); its status in *st. */
static u32 read_word(u64 sector, u8 *st) {
  post(0, 0 /* IN */, sector, 512, 1);
  kick(1);
  *st = statuses[0];
  return data[0][0];
}

static void report(const char *when, u32 cap, u32 word) {
  puts("blkswap ");
  puts(when);
  puts(" cap=");
  putu(cap);
  puts(" word=");
  putu(word);
  puts(" gen=");
  putu(MMIO(0xfc));
  putc('\n');
}

static void swap_mode(u32 cap, u32 polls) {
  u8 st;
  u32 w = read_word(0, &st);
  if (st != 0) fail("read before the change");
  report("before", cap, w);
  u32 i = 0;
  for (; i < polls; i++)
    if (MMIO(0x60) & 2) break;
  if (i == polls) fail("no configuration change");
  MMIO(0x64) = 2;
  u32 cap2 = MMIO(0x100);
  w = read_word(0, &st);
  if (st != 0) fail("read after the change");
  report("after", cap2, w);
  read_word((u64)cap2 - 1, &st);
  puts("blkswap last=");
  putu(st);
  putc('\n');
  /* Stays (halted) for the host to look at the VM; it ends the VM. */
  for (;;) __asm__ volatile("cli; hlt");
}

/* `reads=N`: N reads of `kib` KiB, `batch` at a time, cycling over the disk, nothing computed or
   checked (what a rate limiter's measurement wants: the guest's own work is negligible); prints
   `blkread n=N ok=N` and exits as the main mode does. */
static void read_mode(u32 cap, u32 n, u32 kib, u32 batch) {
  u32 ok = 0, span = cap / (kib * 2);
  if (span == 0) fail("the disk is smaller than one read");
  for (u32 i = 0; i < n; i += batch) {
    u32 k = n - i < batch ? n - i : batch;
    for (u32 s = 0; s < k; s++) post(s, 0 /* IN */, (u64)((i + s) % span) * kib * 2, kib * 1024, 1);
    kick(k);
    for (u32 s = 0; s < k; s++) ok += statuses[s] == 0;
  }
  puts("blkread n=");
  putu(n);
  puts(" ok=");
  putu(ok);
  putc('\n');
  outb(0xf4, 0x2a);
  for (;;) {
  }
}

struct mb_info {
  u32 flags, mem_lower, mem_upper, boot_device, cmdline;
};

void mb_main(u32 magic, struct mb_info *info) {
  if (magic != 0x2BADB002) fail("bad multiboot magic");
  const char *cmdline = (info->flags & 4) ? (const char *)info->cmdline : "";
  u32 chunks = param(cmdline, "chunks", 32);
  u32 kib = param(cmdline, "kib", 64);
  u32 batch = param(cmdline, "batch", 4);
  if (chunks > MAX_CHUNKS || kib > MAX_KIB || kib == 0 || batch > MAX_BATCH || batch == 0) fail("bad parameters");

  for (base = 0xd0000000u; base < 0xd0000000u + 32 * 0x1000; base += 0x1000)
    if (MMIO(0) == 0x74726976 && MMIO(4) == 2 && MMIO(8) == 2) break;
  if (base >= 0xd0000000u + 32 * 0x1000) fail("no virtio-blk device");
  MMIO(0x70) = 0;
  MMIO(0x70) = 1 | 2; /* ACKNOWLEDGE, DRIVER */
  MMIO(0x14) = 1;
  if (!(MMIO(0x10) & 1)) fail("no VERSION_1");
  MMIO(0x14) = 0;
  if (!(MMIO(0x10) & (1u << 9))) fail("no FLUSH");
  MMIO(0x24) = 1;
  MMIO(0x20) = 1; /* VERSION_1 */
  MMIO(0x24) = 0;
  MMIO(0x20) = 1u << 9; /* FLUSH */
  MMIO(0x70) = 1 | 2 | 8;
  if (!(MMIO(0x70) & 8)) fail("FEATURES_OK refused");
  MMIO(0x30) = 0;
  if (MMIO(0x34) < QSIZE) fail("queue too small");
  MMIO(0x38) = QSIZE;
  MMIO(0x80) = (u32)descs;
  MMIO(0x84) = 0;
  MMIO(0x90) = (u32)&avail;
  MMIO(0x94) = 0;
  MMIO(0xa0) = (u32)&used;
  MMIO(0xa4) = 0;
  MMIO(0x44) = 1;
  MMIO(0x70) = 1 | 2 | 8 | 4; /* DRIVER_OK */
  u32 cap = MMIO(0x100);
  if (param(cmdline, "swap", 0)) swap_mode(cap, param(cmdline, "wait", 3000000));
  if (param(cmdline, "reads", 0)) read_mode(cap, param(cmdline, "reads", 0), kib, batch);
  u32 words = kib * 256;
  if ((u64)chunks * kib * 2 > cap) fail("the disk is smaller than the chunks");

  u32 ok = 0, ioerr = 0, other = 0;
  for (u32 c = 0; c < chunks; c += batch) {
    u32 n = chunks - c < batch ? chunks - c : batch;
    for (u32 s = 0; s < n; s++) {
      for (u32 i = 0; i < words; i++) data[s][i] = word(c + s, i);
      post(s, 1 /* OUT */, (u64)(c + s) * kib * 2, kib * 1024, 0);
    }
    kick(n);
    for (u32 s = 0; s < n; s++) {
      u8 st = statuses[s];
      map[c + s] = st == 0 ? 'O' : st == 1 ? 'E' : '?';
      if (st == 0)
        ok++;
      else if (st == 1)
        ioerr++;
      else
        other++;
    }
  }
  map[chunks] = 0;
  u8 flush[2];
  for (u32 k = 0; k < 2; k++) {
    post(0, 4 /* FLUSH */, 0, 0, 0);
    kick(1);
    flush[k] = statuses[0];
  }
  u32 readerr = 0, bad = 0;
  for (u32 c = 0; c < chunks; c++) {
    post(0, 0 /* IN */, (u64)c * kib * 2, kib * 1024, 1);
    kick(1);
    if (statuses[0] != 0) {
      readerr++;
      continue;
    }
    if (map[c] != 'O') continue;
    for (u32 i = 0; i < words; i++)
      if (data[0][i] != word(c, i)) {
        bad++;
        break;
      }
  }
  for (u32 i = 0; i < words; i++) data[0][i] = word(0, i);
  post(0, 1, 0, kib * 1024, 0);
  kick(1);
  u8 rewrite = statuses[0];

  puts("blkfault cap=");
  putu(cap);
  puts(" ok=");
  putu(ok);
  puts(" ioerr=");
  putu(ioerr);
  puts(" other=");
  putu(other);
  puts(" flush=");
  putu(flush[0]);
  putc(',');
  putu(flush[1]);
  puts(" readerr=");
  putu(readerr);
  puts(" bad=");
  putu(bad);
  puts(" rewrite=");
  putu(rewrite);
  puts(" map=");
  puts(map);
  putc('\n');
  outb(0xf4, 0x2a);
}
