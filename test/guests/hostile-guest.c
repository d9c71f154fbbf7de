/* A seeded hostile guest (issue 12 item 5): through real MMIO and port exits it attacks every
   virtio-mmio device vireo gave it and the legacy ports, for a fixed number of rounds driven by a
   PRNG from the seed on its command line ("seed=N rounds=N"), then resets each device, does one
   real operation on it as a well-behaved driver and prints one verdict line per device:
     verdict NAME ok DETAIL          the operation worked after the attacks
     verdict NAME needs-reset DETAIL the device refused the well-behaved driver with DEVICE_NEEDS_RESET
     verdict NAME FAIL DETAIL        anything else (a timeout, a wrong answer)
   and leaves through isa-debug-exit: value 0x31 (status 0x63) when no verdict is FAIL, 0x7e otherwise.
   It runs at CPL 3 (hostile-entry.S), natively even on PVM; it takes no interrupt and polls the rings.

   What a device may write is kept away from the guest's own code, stack and page tables (below
   SAFE_START): every address the guest hands a device (ring registers, descriptors) is either in
   the device's own 1 MiB area at SAFE_START and above, or not RAM at all (past the end of RAM, the
   MMIO hole, the device windows, the LAPIC, above 4 GiB, 2^52, 2^64 - x). Balloon page numbers are
   never below SAFE_START's. Writes of the ports that end the VM (debug-exit, i8042 reset, ACPI
   sleep/reset, pvpanic) and of COM1 (the guest's own output) are left out of the port storms. */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define SAFE_START 0x1000000ULL /* 16 MiB: areas for the devices start here */
#define AREA_SIZE 0x100000ULL
#define MMIO_BASE 0xd0000000ULL
#define MAX_DEVS 16
#define MAGIC 0x74726976

/* ---- port and MMIO access: explicit widths, no SSE, one instruction each ---- */
static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) {
  u8 v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p));
  return v;
}
static inline u16 inw(u16 p) {
  u16 v;
  __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p));
  return v;
}
static inline u32 inl(u16 p) {
  u32 v;
  __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p));
  return v;
}
static inline u32 mr32(u64 a) {
  u32 v;
  __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(a) : "memory");
  return v;
}
static inline void mw32(u64 a, u32 v) { __asm__ volatile("movl %0, (%1)" ::"r"(v), "r"(a) : "memory"); }
static inline u8 mr8(u64 a) {
  u8 v;
  __asm__ volatile("movb (%1), %0" : "=q"(v) : "r"(a) : "memory");
  return v;
}
static inline void mw8(u64 a, u8 v) { __asm__ volatile("movb %0, (%1)" ::"q"(v), "r"(a) : "memory"); }
static inline u16 mr16(u64 a) {
  u16 v;
  __asm__ volatile("movw (%1), %0" : "=r"(v) : "r"(a) : "memory");
  return v;
}
static inline void mw16(u64 a, u16 v) { __asm__ volatile("movw %0, (%1)" ::"r"(v), "r"(a) : "memory"); }
static inline u64 mr64(u64 a) {
  u64 v;
  __asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(a) : "memory");
  return v;
}
static inline void mw64(u64 a, u64 v) { __asm__ volatile("movq %0, (%1)" ::"r"(v), "r"(a) : "memory"); }
static inline u64 rdtsc(void) {
  u32 lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((u64)hi << 32) | lo;
}
static inline void barrier(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }

/* RAM the guest owns and hands to devices, by pointer. */
#define P8(a) ((volatile u8 *)(unsigned long)(a))
#define P16(a) ((volatile u16 *)(unsigned long)(a))
#define P32(a) ((volatile u32 *)(unsigned long)(a))
#define P64(a) ((volatile u64 *)(unsigned long)(a))

static void zero(u64 a, u64 n) {
  for (u64 i = 0; i < n; i += 8) *P64(a + i) = 0;
}
/* gcc may emit calls to these for struct copies; freestanding, so they are ours. */
void *memset(void *d, int c, unsigned long n) {
  volatile u8 *p = d;
  for (unsigned long i = 0; i < n; i++) p[i] = (u8)c;
  return d;
}
void *memcpy(void *d, const void *s, unsigned long n) {
  volatile u8 *p = d;
  const u8 *q = s;
  for (unsigned long i = 0; i < n; i++) p[i] = q[i];
  return d;
}

/* ---- output on COM1 ---- */
static void putc(char c) {
  for (int i = 0; i < 100000 && !(inb(0x3fd) & 0x20); i++) {
  }
  outb(0x3f8, (u8)c);
}
static void puts(const char *s) {
  while (*s) putc(*s++);
}
static void putx(u64 v) {
  char b[17];
  int i = 16;
  b[i] = 0;
  do {
    b[--i] = "0123456789abcdef"[v & 15];
    v >>= 4;
  } while (v);
  puts("0x");
  puts(&b[i]);
}
static void putu(u64 v) {
  char b[21];
  int i = 20;
  b[i] = 0;
  do {
    b[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  puts(&b[i]);
}

/* ---- the PRNG: splitmix64 to seed xorshift64* ---- */
static u64 rs;
static u64 rnd(void) {
  rs ^= rs >> 12;
  rs ^= rs << 25;
  rs ^= rs >> 27;
  return rs * 0x2545F4914F6CDD1DULL;
}
static u32 below(u32 n) { return n ? (u32)(rnd() % n) : 0; }

/* ---- what vireo told us ---- */
static u64 ram_end; /* end of the RAM block that holds SAFE_START */
static u64 seed;
static u32 rounds = 40;

static u64 parse_num(const char *s) {
  u64 v = 0;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    for (s += 2;; s++) {
      char c = *s;
      u32 d = c >= '0' && c <= '9' ? (u32)(c - '0') : c >= 'a' && c <= 'f' ? (u32)(c - 'a' + 10) : 99;
      if (d == 99) break;
      v = v * 16 + d;
    }
  } else {
    for (; *s >= '0' && *s <= '9'; s++) v = v * 10 + (u64)(*s - '0');
  }
  return v;
}
static const char *find(const char *hay, const char *key) {
  for (const char *h = hay; *h; h++) {
    if (h != hay && h[-1] != ' ') continue;
    const char *a = h, *b = key;
    while (*b && *a == *b) a++, b++;
    if (!*b) return a;
  }
  return 0;
}

/* ---- devices ---- */
enum { ID_NET = 1, ID_BLK = 2, ID_CONSOLE = 3, ID_RNG = 4, ID_BALLOON = 5, ID_VSOCK = 19, ID_FS = 26 };
/* One device: its window, type, queues; its area of RAM (rings first, payloads after). */
struct dev {
  u64 base;
  u32 id;
  u32 nq;
  u32 qmax[8];
  u64 area;
  u64 features; /* offered */
  /* the layout the last well-formed set-up gave each queue */
  u32 qsize[8];
  u64 desc[8], avail[8], used[8];
  u16 last_used[8];
  u16 avail_idx[8];
  u32 needs_reset_seen;
};
static struct dev devs[MAX_DEVS];
static u32 ndevs;

static const char *dev_name(u32 id) {
  switch (id) {
  case ID_NET: return "net";
  case ID_BLK: return "blk";
  case ID_CONSOLE: return "console";
  case ID_RNG: return "rng";
  case ID_BALLOON: return "balloon";
  case ID_VSOCK: return "vsock";
  case ID_FS: return "fs";
  }
  return "unknown";
}

enum {
  R_MAGIC = 0x00, R_VERSION = 0x04, R_DEVICE_ID = 0x08, R_DEV_FEAT = 0x10, R_DEV_FEAT_SEL = 0x14,
  R_DRV_FEAT = 0x20, R_DRV_FEAT_SEL = 0x24, R_QSEL = 0x30, R_QNUM_MAX = 0x34, R_QNUM = 0x38, R_QREADY = 0x44,
  R_QNOTIFY = 0x50, R_ISR = 0x60, R_IACK = 0x64, R_STATUS = 0x70, R_QDESC = 0x80, R_QAVAIL = 0x90,
  R_QUSED = 0xa0, R_SHM_SEL = 0xac, R_CFG_GEN = 0xfc, R_CONFIG = 0x100
};
enum { S_ACK = 1, S_DRIVER = 2, S_DRIVER_OK = 4, S_FEATURES_OK = 8, S_NEEDS_RESET = 0x40, S_FAILED = 0x80 };
#define F_VERSION_1 (1ULL << 32)
#define F_INDIRECT (1ULL << 28)
#define F_EVENT_IDX (1ULL << 29)
#define DESC_NEXT 1
#define DESC_WRITE 2
#define DESC_INDIRECT 4

static u32 rd(struct dev *d, u32 off) { return mr32(d->base + off); }
static void wr(struct dev *d, u32 off, u32 v) { mw32(d->base + off, v); }

static void note_status(struct dev *d) {
  if (rd(d, R_STATUS) & S_NEEDS_RESET) d->needs_reset_seen++;
}

static void scan(void) {
  for (u32 i = 0; i < MAX_DEVS; i++) {
    u64 b = MMIO_BASE + (u64)i * 0x1000;
    if (mr32(b + R_MAGIC) != MAGIC || mr32(b + R_DEVICE_ID) == 0) continue;
    struct dev *d = &devs[ndevs++];
    d->base = b;
    d->id = mr32(b + R_DEVICE_ID);
    mw32(b + R_STATUS, 0);
    for (u32 q = 0; q < 8; q++) {
      mw32(b + R_QSEL, q);
      u32 m = mr32(b + R_QNUM_MAX);
      if (m == 0) break;
      d->qmax[q] = m;
      d->nq = q + 1;
    }
    mw32(b + R_DEV_FEAT_SEL, 0);
    u64 lo = mr32(b + R_DEV_FEAT);
    mw32(b + R_DEV_FEAT_SEL, 1);
    d->features = lo | ((u64)mr32(b + R_DEV_FEAT) << 32);
  }
  /* The balloon's area is the lowest: a device writing past its own area only ever goes up, and
     the balloon is the one device that takes RAM away (the pages it is told of). */
  u32 k = 1;
  for (u32 i = 0; i < ndevs; i++) devs[i].area = devs[i].id == ID_BALLOON ? SAFE_START : SAFE_START + AREA_SIZE * k++;
}

/* Area layout: queue q's rings at area + q*0x4000 (desc, avail +0x1000, used +0x2000); payloads
   (hostile request bodies, PFN lists) at +0x40000..+0x60000; balloon victim pages +0x60000..+0x80000;
   well-behaved buffers at +0x80000. */
#define RING(d, q) ((d)->area + (u64)(q) * 0x4000)
#define PAYLOAD(d) ((d)->area + 0x40000)
#define PAYLOAD_SIZE 0x20000
#define VICTIMS(d) ((d)->area + 0x60000)
#define GOOD(d) ((d)->area + 0x80000)

/* ---- hostile values ---- */
static const u32 nasty32[] = {0, 1, 2, 3, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000,
                              0x7fffffff, 0x80000000, 0x80000001, 0xfffffffe, 0xffffffff};
#define NNASTY (sizeof(nasty32) / sizeof(nasty32[0]))
static u32 nasty(void) { return below(4) ? nasty32[below(NNASTY)] : (u32)rnd(); }

/* A guest-physical address to hand device `d` for rings or buffers: its own area, its own rings
   (`rings`), or no RAM at all. */
static u64 pick_addr(struct dev *d, int rings) {
  switch (below(rings ? 11 : 10)) {
  case 0:
  case 1: return d->area + (rnd() % 0x80000);
  case 2: return d->area + (rnd() % 0x80000 & ~0xfULL);
  case 3: return ram_end - 1 - below(64); /* straddles the end of RAM */
  case 4: return ram_end + below(1 << 24);
  case 5: return MMIO_BASE + (u64)below(MAX_DEVS + 2) * 0x1000 + below(0x1000); /* device windows */
  case 6: {
    static const u64 special[] = {0xfec00000, 0xfee00000, 0xfffff000, 0xffffffff, 0xe0000000, 0xc0000000};
    return special[below(6)] + below(16);
  }
  case 7: return 0x100000000ULL + below(1 << 20); /* above 4 GiB: no RAM in a small guest */
  case 8: {
    static const u64 huge[] = {1ULL << 52, (1ULL << 53) - 16, 1ULL << 63, 0xfffffffffffff000ULL, 0xfffffffffffffff0ULL};
    return huge[below(5)] - below(64);
  }
  case 9: return rnd() | (1ULL << 40); /* random, far from RAM */
  default: { /* a ring of this device */
    u32 q = below(d->nq ? d->nq : 1);
    u64 r = RING(d, q);
    return r + (u64)below(3) * 0x1000 + below(4) * 2;
  }
  }
}

/* A length for a descriptor at `addr`: capped where a device could write far into RAM it may not. */
static u32 pick_len(struct dev *d, u64 addr) {
  u32 l = below(3) ? nasty32[below(NNASTY)] : (u32)rnd();
  if (below(4) == 0) l = (u32)below(4096);
  /* Inside RAM only the device's own area and what is above it: no length reaches below. The
     console writes what it reads to vireo's output: keep that small (128 bytes). */
  if (addr >= d->area && addr < ram_end && d->id == ID_CONSOLE && l > 128) l = below(128);
  return l;
}

/* ---- a well-behaved set-up (used by attacks to get to the rings, and by the final checks) ---- */
static void q_setup(struct dev *d, u32 q, u32 size, u64 desc, u64 avail, u64 used) {
  wr(d, R_QSEL, q);
  wr(d, R_QNUM, size);
  wr(d, R_QDESC, (u32)desc);
  wr(d, R_QDESC + 4, (u32)(desc >> 32));
  wr(d, R_QAVAIL, (u32)avail);
  wr(d, R_QAVAIL + 4, (u32)(avail >> 32));
  wr(d, R_QUSED, (u32)used);
  wr(d, R_QUSED + 4, (u32)(used >> 32));
  wr(d, R_QREADY, 1);
}

/* Reset, negotiate `want` (& offered), lay every queue out in the area, DRIVER_OK. Returns the status. */
static u32 setup(struct dev *d, u64 want, u32 maxsize) {
  wr(d, R_STATUS, 0);
  wr(d, R_STATUS, S_ACK);
  wr(d, R_STATUS, S_ACK | S_DRIVER);
  u64 f = (want & d->features) | F_VERSION_1;
  wr(d, R_DRV_FEAT_SEL, 0);
  wr(d, R_DRV_FEAT, (u32)f);
  wr(d, R_DRV_FEAT_SEL, 1);
  wr(d, R_DRV_FEAT, (u32)(f >> 32));
  wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
  if (!(rd(d, R_STATUS) & S_FEATURES_OK)) return rd(d, R_STATUS);
  for (u32 q = 0; q < d->nq; q++) {
    u32 size = d->qmax[q] < maxsize ? d->qmax[q] : maxsize;
    u64 r = RING(d, q);
    zero(r, 0x3000);
    d->qsize[q] = size;
    d->desc[q] = r;
    d->avail[q] = r + 0x1000;
    d->used[q] = r + 0x2000;
    d->last_used[q] = 0;
    d->avail_idx[q] = 0;
    q_setup(d, q, size, r, r + 0x1000, r + 0x2000);
  }
  wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
  return rd(d, R_STATUS);
}

static void set_desc(u64 table, u32 i, u64 addr, u32 len, u16 flags, u16 next) {
  u64 e = table + (u64)i * 16;
  *P64(e) = addr;
  *P32(e + 8) = len;
  *P16(e + 12) = flags;
  *P16(e + 14) = next;
}

/* Puts head on queue q's avail ring and notifies. */
static void post(struct dev *d, u32 q, u16 head) {
  u64 a = d->avail[q];
  u16 idx = d->avail_idx[q];
  *P16(a + 4 + 2 * (idx % d->qsize[q])) = head;
  barrier();
  d->avail_idx[q] = (u16)(idx + 1);
  *P16(a + 2) = d->avail_idx[q];
  barrier();
  wr(d, R_QNOTIFY, q);
}

/* Waits for the next used element of queue q; returns its length, or -1 after about a second (or
   -2 when the device set DEVICE_NEEDS_RESET). */
static long wait_used(struct dev *d, u32 q) {
  u64 u = d->used[q];
  u64 start = rdtsc();
  for (u32 n = 0;; n++) {
    barrier();
    if (*P16(u + 2) != d->last_used[q]) break;
    if ((n & 1023) == 1023 && (rd(d, R_STATUS) & S_NEEDS_RESET)) return -2;
    if (rdtsc() - start > 6000000000ULL) return -1;
    pause();
  }
  u32 slot = d->last_used[q] % d->qsize[q];
  d->last_used[q]++;
  return *P32(u + 4 + 8 * slot + 4);
}

/* ---- device-shaped payloads: requests a device will parse, with hostile fields ---- */
static void fill_payload(struct dev *d) {
  u64 p = PAYLOAD(d);
  if (d->id == ID_BALLOON) {
    /* Page numbers: past RAM, huge, or pages at SAFE_START and above (never the guest's own). */
    for (u64 o = 0; o < PAYLOAD_SIZE; o += 4) {
      u32 v;
      switch (below(5)) {
      case 0: v = (u32)(VICTIMS(d) >> 12) + below(0x20); break;
      case 1: v = (u32)(ram_end >> 12) + below(16); break;
      case 2: v = 0xffffffff - below(16); break;
      case 3: v = (u32)(SAFE_START >> 12) + below((u32)((ram_end - SAFE_START) >> 12)); break;
      default: v = 0x100000 + (u32)(rnd() % 0xfff00000u); break;
      }
      *P32(p + o) = v;
    }
    return;
  }
  for (u64 o = 0; o < PAYLOAD_SIZE; o += 8) *P64(p + o) = rnd();
  /* A request at the start of each 256-byte slot (descriptors point at slots more often than not). */
  for (u64 s = p; s < p + PAYLOAD_SIZE; s += 0x100) {
    switch (d->id) {
    case ID_BLK: {
      static const u32 types[] = {0, 1, 4, 8, 11, 13, 0xffffffff};
      static const u64 sectors[] = {0, 1, 2047, 2048, 2049, 0x7fffffffffffffffULL, 0xffffffffffffffffULL,
                                    0x8000000000000000ULL, 1ULL << 55};
      *P32(s) = below(8) ? types[below(7)] : (u32)rnd();
      *P32(s + 4) = nasty();
      *P64(s + 8) = below(8) ? sectors[below(9)] : rnd();
      /* a discard/write-zeroes segment right after */
      *P64(s + 16) = below(2) ? sectors[below(9)] : rnd();
      *P32(s + 24) = nasty();
      *P32(s + 28) = nasty();
      break;
    }
    case ID_VSOCK: {
      static const u64 cids[] = {0, 1, 2, 3, 0xffffffff, 0xffffffffffffffffULL};
      *P64(s) = below(3) ? 3 : cids[below(6)];                 /* src_cid */
      *P64(s + 8) = below(3) ? 2 : cids[below(6)];             /* dst_cid */
      *P32(s + 16) = below(2) ? 1024 + below(8) : nasty();      /* src_port */
      *P32(s + 20) = below(2) ? 5000 + below(4) : nasty();      /* dst_port */
      *P32(s + 24) = below(2) ? below(256) : nasty();           /* len */
      *P16(s + 28) = below(4) ? 1 : (u16)nasty();               /* type: stream */
      *P16(s + 30) = (u16)(below(4) ? below(9) : nasty());      /* op */
      *P32(s + 32) = nasty();                                    /* flags */
      *P32(s + 36) = nasty();                                    /* buf_alloc */
      *P32(s + 40) = nasty();                                    /* fwd_cnt */
      break;
    }
    case ID_FS: {
      static const u32 ops[] = {26, 1, 3, 4, 14, 15, 16, 17, 18, 20, 22, 27, 28, 29, 35, 36, 38, 42, 44, 46, 0, 0xffffffff};
      u32 len = below(2) ? 40 + below(200) : nasty();
      *P32(s) = len;                                                /* len */
      *P32(s + 4) = below(8) ? ops[below(22)] : below(64);          /* opcode */
      *P64(s + 8) = rnd();                                          /* unique */
      *P64(s + 16) = below(2) ? 1 : below(3) ? below(8) : rnd();   /* nodeid */
      *P32(s + 24) = nasty();                                       /* uid */
      *P32(s + 28) = nasty();                                       /* gid */
      *P32(s + 32) = nasty();                                       /* pid */
      *P16(s + 36) = (u16)(below(2) ? 0 : nasty());                 /* total_extlen */
      *P16(s + 38) = 0;
      /* INIT's body, a name ("..", "/", "a\0"), or nothing */
      *P32(s + 40) = below(2) ? 7 : nasty();
      *P32(s + 44) = below(2) ? 31 : nasty();
      if (below(2)) *P32(s + 56) = below(2) ? 0x2e2e : below(2) ? 0x2f : 0x61;
      break;
    }
    case ID_NET: {
      *P8(s) = (u8)nasty();          /* flags */
      *P8(s + 1) = (u8)below(8);     /* gso_type */
      *P16(s + 2) = (u16)nasty();    /* hdr_len */
      *P16(s + 4) = (u16)nasty();    /* gso_size */
      *P16(s + 6) = (u16)nasty();    /* csum_start */
      *P16(s + 8) = (u16)nasty();    /* csum_offset */
      *P16(s + 10) = (u16)nasty();   /* num_buffers */
      if (below(2)) *P16(s + 12 + 12) = below(2) ? 0x0008 : 0x0608; /* an IPv4 or ARP ethertype */
      break;
    }
    default: break; /* rng and console take any bytes */
    }
  }
}

/* ---- the attacks ---- */

/* Random register writes (and reads), every width, every offset of the window; ring addresses
   always as a consistent pair from pick_addr. */
static void attack_registers(struct dev *d) {
  for (u32 i = 0; i < 12; i++) {
    u32 off = below(0x200);
    u32 reg = off & ~3u;
    if (reg == 0x80 || reg == 0x84 || reg == 0x90 || reg == 0x94 || reg == 0xa0 || reg == 0xa4) {
      u64 a = pick_addr(d, d->id != ID_BALLOON);
      if (d->id == ID_BALLOON && a >= d->area && a < d->area + AREA_SIZE) a = RING(d, below(d->nq)) + below(3) * 0x1000;
      u32 pair = reg & ~7u;
      wr(d, pair, (u32)a);
      wr(d, pair + 4, (u32)(a >> 32));
      continue;
    }
    if (reg == R_QNOTIFY || reg == R_STATUS) {
      wr(d, reg, nasty());
      continue;
    }
    u64 a = d->base + off;
    switch (below(5)) {
    case 0: mw8(a, (u8)rnd()); break;
    case 1: mw16(a & ~1ULL, (u16)rnd()); break;
    case 2: mw32(a, nasty()); break; /* unaligned too */
    case 3: mw32(d->base + reg, nasty()); break;
    default: (void)mr64(a & ~7ULL); (void)mr8(a); (void)mr16(a); (void)mr32(a); break;
    }
  }
  note_status(d);
}

/* The status byte written out of order: DRIVER_OK first, FEATURES_OK without DRIVER, FAILED, all ones. */
static void attack_status(struct dev *d) {
  static const u32 vals[] = {S_DRIVER_OK, S_FEATURES_OK, S_ACK | S_DRIVER_OK, S_FEATURES_OK | S_DRIVER_OK,
                             S_NEEDS_RESET, S_FAILED, 0xff, 0x0f, 0x100, 0xffffff00, 0x8f, 0};
  for (u32 i = 0; i < 6; i++) {
    wr(d, R_STATUS, below(4) ? vals[below(12)] : nasty());
    if (below(3) == 0) wr(d, R_QNOTIFY, below(d->nq + 2));
    note_status(d);
  }
}

/* Feature negotiation nonsense: bits not offered, words past the second, FEATURES_OK then more writes. */
static void attack_features(struct dev *d) {
  wr(d, R_STATUS, 0);
  wr(d, R_STATUS, S_ACK | S_DRIVER);
  for (u32 i = 0; i < 6; i++) {
    wr(d, R_DEV_FEAT_SEL, below(2) ? below(4) : nasty());
    (void)rd(d, R_DEV_FEAT);
    wr(d, R_DRV_FEAT_SEL, below(2) ? below(3) : nasty());
    wr(d, R_DRV_FEAT, below(2) ? 0xffffffff : nasty());
    if (below(2)) wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
  }
  (void)rd(d, R_STATUS);
  wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
  note_status(d);
  if (below(2)) wr(d, R_QNOTIFY, below(d->nq + 1));
}

/* Queues laid out where no ring can be: outside RAM, on MMIO, straddling, misaligned, over each
   other, sizes that are not powers of two or too large; out-of-range QueueSel; then DRIVER_OK. */
static void attack_layout(struct dev *d) {
  wr(d, R_STATUS, 0);
  wr(d, R_STATUS, S_ACK | S_DRIVER);
  wr(d, R_DRV_FEAT_SEL, 1);
  wr(d, R_DRV_FEAT, 1);
  wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
  for (u32 i = 0; i < 3; i++) {
    u32 q = below(4) ? below(d->nq) : nasty();
    static const u32 sizes[] = {0, 1, 3, 7, 100, 256, 257, 0x8000, 0x10000, 0xffffffff};
    wr(d, R_QSEL, q);
    wr(d, R_QNUM, below(2) ? sizes[below(10)] : (q < 8 ? d->qmax[q] : nasty()));
    u64 a[3];
    for (u32 k = 0; k < 3; k++) {
      a[k] = pick_addr(d, 0);
      if (d->id == ID_BALLOON && a[k] >= d->area && a[k] < d->area + AREA_SIZE) a[k] = RING(d, below(d->nq)) + k * 0x1000;
    }
    if (below(4) == 0) a[1] = a[0] + below(64);      /* avail over the descriptor table */
    if (below(4) == 0) a[2] = a[1] + 2 * below(8);   /* used over avail */
    wr(d, R_QDESC, (u32)a[0]);
    wr(d, R_QDESC + 4, (u32)(a[0] >> 32));
    wr(d, R_QAVAIL, (u32)a[1]);
    wr(d, R_QAVAIL + 4, (u32)(a[1] >> 32));
    wr(d, R_QUSED, (u32)a[2]);
    wr(d, R_QUSED + 4, (u32)(a[2] >> 32));
    wr(d, R_QREADY, below(4) ? 1 : nasty());
    (void)rd(d, R_QREADY);
    (void)rd(d, R_QNUM_MAX);
  }
  wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
  note_status(d);
  wr(d, R_QNOTIFY, below(2) ? below(d->nq) : nasty());
}

/* Valid rings, hostile descriptor chains: buffers outside RAM, on MMIO, on the rings themselves,
   loops, next out of range, huge lengths, indirect tables (hostile too), avail index jumps, heads
   out of range, writes to the rings while the device reads them. */
static void attack_chains(struct dev *d) {
  if (below(2) || !(rd(d, R_STATUS) & S_DRIVER_OK) || (rd(d, R_STATUS) & S_NEEDS_RESET) || d->qsize[0] == 0) {
    u64 want = 0;
    if (below(2)) want |= F_INDIRECT;
    if (below(2)) want |= F_EVENT_IDX;
    if (below(4) == 0) want |= rnd() & 0xffffff;
    setup(d, want, below(2) ? 8 : 256);
  }
  fill_payload(d);
  for (u32 round = 0; round < 4; round++) {
    u32 q = below(d->nq);
    u32 size = d->qsize[q];
    if (size == 0) continue;
    u64 table = d->desc[q];
    u32 n = 1 + below(size < 8 ? size : 8);
    for (u32 k = 0; k < n; k++) {
      u32 i = below(size);
      u64 addr;
      u32 choice = below(8);
      if (choice < 3)
        addr = PAYLOAD(d) + (u64)below(PAYLOAD_SIZE / 0x100) * 0x100; /* a request */
      else if (choice == 3 && d->id != ID_BALLOON)
        addr = GOOD(d) + below(0x1000); /* plain buffer space */
      else {
        addr = pick_addr(d, d->id != ID_BALLOON);
        if (d->id == ID_BALLOON && addr >= d->area && addr < d->area + AREA_SIZE) addr = PAYLOAD(d) + (addr & 0xfffc);
      }
      u32 len = choice < 3 && below(2) ? 16 + below(d->id == ID_CONSOLE ? 112 : 240) : pick_len(d, addr);
      u16 flags = (u16)(below(6) ? below(8) : nasty());
      if (d->id == ID_BALLOON) flags &= (u16)~DESC_INDIRECT;
      u16 next;
      switch (below(6)) {
      case 0: next = (u16)i; break;                     /* a loop of one */
      case 1: next = (u16)((i + 1) % size); break;
      case 2: next = (u16)below(size); break;
      case 3: next = (u16)(size + below(4)); break;    /* out of range */
      case 4: next = (u16)nasty(); break;
      default: next = (u16)((i + size - 1) % size); break; /* back: loops */
      }
      if (flags & DESC_INDIRECT) {
        /* An indirect table in the payload area: its descriptors are as hostile. */
        u64 it = PAYLOAD(d) + (u64)below(PAYLOAD_SIZE / 0x100) * 0x100;
        u32 cnt = 1 + below(8);
        for (u32 j = 0; j < cnt; j++) {
          u64 ia = pick_addr(d, d->id != ID_BALLOON);
          set_desc(it, j, ia, pick_len(d, ia), (u16)below(8), (u16)(below(2) ? j + 1 : nasty()));
        }
        addr = it;
        len = below(3) ? cnt * 16 : nasty();
      }
      set_desc(table, i, addr, len, flags, next);
    }
    /* The available ring: heads in and out of range, then an index that may jump. */
    u64 av = d->avail[q];
    u32 heads = 1 + below(4);
    for (u32 k = 0; k < heads; k++) {
      u16 idx = d->avail_idx[q];
      *P16(av + 4 + 2 * (idx % size)) = (u16)(below(5) ? below(size) : nasty());
      d->avail_idx[q] = (u16)(idx + 1);
    }
    switch (below(8)) {
    case 0: d->avail_idx[q] = (u16)(d->avail_idx[q] + size); break;
    case 1: d->avail_idx[q] = (u16)(d->avail_idx[q] + size + 1); break;
    case 2: d->avail_idx[q] = (u16)(d->avail_idx[q] + 0x8000); break;
    case 3: d->avail_idx[q] = (u16)(d->avail_idx[q] - 2); break;
    default: break;
    }
    if (below(4) == 0) *P16(av) = (u16)nasty();                        /* flags */
    if (below(4) == 0) *P16(av + 4 + 2 * size) = (u16)nasty();         /* used_event */
    if (below(4) == 0) *P16(d->used[q] + 4 + 8 * size) = (u16)nasty(); /* avail_event, the device's */
    barrier();
    *P16(av + 2) = d->avail_idx[q];
    barrier();
    wr(d, R_QNOTIFY, below(5) ? q : nasty());
    /* Rewrite the table while the device may be reading it. */
    if (below(3) == 0) set_desc(table, below(size), pick_addr(d, 0) | (d->id == ID_BALLOON ? 1ULL << 50 : 0), nasty(), (u16)nasty(), (u16)nasty());
    for (u32 s = 0; s < 200; s++) pause();
    note_status(d);
  }
  (void)rd(d, R_ISR);
  wr(d, R_IACK, nasty());
}

/* Well-formed chains carrying hostile requests: a readable request from the payload area, data
   segments of odd sizes, a writable status or reply, so the device gets past the chain checks and
   parses (block: sectors at and past the end, odd lengths, writes to a read-only disk, discards;
   fs: FUSE requests; vsock: packets to the host; net: frames; balloon: page lists). */
static void attack_requests(struct dev *d) {
  if (!(rd(d, R_STATUS) & S_DRIVER_OK) || (rd(d, R_STATUS) & S_NEEDS_RESET) || d->qsize[0] == 0) setup(d, 0, 16);
  fill_payload(d);
  for (u32 k = 0; k < 4; k++) {
    u32 q = below(d->nq);
    u32 size = d->qsize[q];
    if (size < 4) continue;
    u16 head = (u16)(d->avail_idx[q] % (size / 4) * 4); /* four descriptors per request */
    u64 table = d->desc[q];
    u64 req = PAYLOAD(d) + (u64)below(PAYLOAD_SIZE / 0x100) * 0x100;
    static const u32 lens[] = {0, 1, 7, 16, 511, 512, 513, 1024, 4096, 0x10000};
    u64 data = GOOD(d) + 0x1000 + (u64)below(16) * 0x1000;
    u32 dlen = lens[below(10)];
    int wdata = below(2);
    if (d->id == ID_BALLOON) {
      set_desc(table, head, req, 4 * (1 + below(64)), 0, 0);
    } else if (d->id == ID_RNG) {
      set_desc(table, head, data, dlen, DESC_WRITE, 0);
    } else {
      u32 rlen = d->id == ID_BLK ? 16 : d->id == ID_VSOCK ? 44 : d->id == ID_FS ? *P32(req) : 12 + below(128);
      if (d->id == ID_FS && rlen > 0x100) rlen = 40 + below(200);
      if (d->id == ID_CONSOLE && rlen > 64) rlen = 64;
      set_desc(table, head, req, rlen, DESC_NEXT, (u16)(head + 1));
      set_desc(table, head + 1, data, d->id == ID_CONSOLE && dlen > 64 ? 64 : dlen,
               (u16)(DESC_NEXT | (wdata ? DESC_WRITE : 0)), (u16)(head + 2));
      set_desc(table, head + 2, GOOD(d) + 0x20000 + below(0x100), 1 + below(2) * below(300), DESC_WRITE, 0);
    }
    post(d, q, head);
  }
  for (u32 s = 0; s < 400; s++) pause();
  note_status(d);
}

/* Configuration space: every offset of the window's upper part, every width, writes before and
   after DRIVER_OK. */
static void attack_config(struct dev *d) {
  for (u32 i = 0; i < 10; i++) {
    u64 a = d->base + R_CONFIG + below(0xf00);
    switch (below(6)) {
    case 0: (void)mr8(a); break;
    case 1: (void)mr16(a); break;
    case 2: (void)mr32(a); break;
    case 3: (void)mr64(a & ~7ULL); break;
    case 4: mw8(a, (u8)rnd()); break;
    default: mw32(d->base + R_CONFIG + below(0x40), nasty()); break;
    }
  }
  /* A write straddling the end of this window into the next one (KVM splits it in two). */
  if (below(4) == 0) mw32(d->base + 0xffe, nasty());
  note_status(d);
}

/* Notifications: queues that do not exist, QueueSel far out, interrupt ACKs of every bit. */
static void attack_notify(struct dev *d) {
  for (u32 i = 0; i < 64; i++) {
    wr(d, R_QNOTIFY, below(2) ? below(d->nq + 4) : nasty());
    if ((i & 7) == 0) {
      wr(d, R_QSEL, nasty());
      (void)rd(d, R_QNUM_MAX);
      (void)rd(d, R_QREADY);
      wr(d, R_QREADY, 1);
      wr(d, R_IACK, nasty());
      (void)rd(d, R_ISR);
    }
  }
  note_status(d);
}

/* MMIO storm: unclaimed MMIO around the device windows, reads of every window, straddling accesses. */
static void mmio_storm(void) {
  for (u32 i = 0; i < 64; i++) {
    u64 a = MMIO_BASE + (u64)below(MAX_DEVS + 16) * 0x1000 + below(0x1000);
    int claimed = 0;
    for (u32 k = 0; k < ndevs; k++)
      if ((a & ~0xfffULL) == devs[k].base) claimed = 1;
    switch (below(4)) {
    case 0: (void)mr32(a & ~3ULL); break;
    case 1: (void)mr8(a); break;
    case 2:
      if (!claimed) mw32(a & ~3ULL, (u32)rnd());
      else (void)mr64(a & ~7ULL);
      break;
    default:
      if (!claimed) mw64(a & ~7ULL, rnd());
      else (void)mr16(a & ~1ULL);
      break;
    }
  }
  /* Reads of the interrupt controllers' windows (writes there could send this CPU an NMI). */
  (void)mr32(0xfee00030);
  (void)mr32(0xfec00000);
  /* Unclaimed MMIO in the hole, below the device pool. */
  mw32(0xc0000000 + (below(0x1000) & ~3u), (u32)rnd());
  (void)mr32(0xc0000000 + (below(0x1000) & ~3u));
}

/* Ports whose writes end the VM or take the guest's own output: never written. */
static int port_write_ok(u32 p) {
  if (p >= 0xf4 && p <= 0xf7) return 0;          /* isa-debug-exit */
  if (p == 0x64 || p == 0x92) return 0;          /* i8042 command (0xfe resets), fast reset */
  if (p >= 0x3f8 && p <= 0x3ff) return 0;        /* COM1: the verdicts go there */
  if (p >= 0x604 && p <= 0x605) return 0;        /* ACPI PM1a control: SLP_EN powers off */
  if (p == 0xcf9 || p == 0x505) return 0;        /* ACPI reset register, pvpanic */
  return 1;
}

/* Port storm: the legacy devices' ports and their neighbours, at every width, and random ports. */
static void port_storm(void) {
  static const u16 ports[] = {0x60, 0x61, 0x62, 0x63, 0x70, 0x71, 0x72, 0x80, 0x3f8, 0x3fb, 0x3fd, 0x3fe,
                              0x600, 0x601, 0x602, 0x603, 0x606, 0x504, 0x505, 0x506, 0xcf8, 0xcfc, 0x2f8, 0x40};
  for (u32 i = 0; i < 48; i++) {
    u32 p = below(4) ? (u32)ports[below(24)] + (below(4) == 0 ? below(4) : 0) : below(0x10000);
    p &= 0xffff;
    u32 w = 1u << below(3);
    if (p + w > 0x10000) w = 1;
    int write = below(2) && port_write_ok(p) && port_write_ok(p + w - 1);
    /* a multi-byte write that covers a forbidden port is not made */
    for (u32 k = 0; k < w && write; k++)
      if (!port_write_ok(p + k)) write = 0;
    if (write) {
      u32 v = nasty();
      if (w == 1) outb((u16)p, (u8)v);
      else if (w == 2) outw((u16)p, (u16)v);
      else outl((u16)p, v);
    } else {
      if (w == 1) (void)inb((u16)p);
      else if (w == 2) (void)inw((u16)p);
      else (void)inl((u16)p);
    }
  }
}

/* ---- the well-behaved driver: one real operation per device ---- */
static u32 failures;

static void verdict(struct dev *d, const char *what, const char *detail, u64 num) {
  puts("\nverdict ");
  puts(dev_name(d->id));
  putc(' ');
  puts(what);
  putc(' ');
  puts(detail);
  if (num != ~0ULL) {
    putc(' ');
    putu(num);
  }
  putc('\n');
  if (what[0] == 'F') failures++;
}

/* Sets the device up from reset; returns 0 when it took DRIVER_OK (else it gave its verdict). */
static int good_setup(struct dev *d, u64 want) {
  u32 st = setup(d, want, 8);
  if (st & S_NEEDS_RESET) {
    verdict(d, "needs-reset", "at DRIVER_OK", st);
    return 1;
  }
  if ((st & (S_FEATURES_OK | S_DRIVER_OK)) != (S_FEATURES_OK | S_DRIVER_OK)) {
    verdict(d, "FAIL", "set-up refused, status", st);
    return 1;
  }
  return 0;
}

static int waited(struct dev *d, long r, const char *what) {
  if (r == -2) {
    verdict(d, "needs-reset", what, rd(d, R_STATUS));
    return 1;
  }
  if (r < 0) {
    verdict(d, "FAIL", what, ~0ULL);
    return 1;
  }
  return 0;
}

static u8 blk_pattern(u64 sector, u32 i) { return (u8)(0x80 | ((sector * 13 + i * 7) & 0x7f)); }

static void good_blk(struct dev *d) {
  if (good_setup(d, 0)) return;
  u64 cap = mr64(d->base + R_CONFIG);
  if (cap == 0) {
    verdict(d, "FAIL", "capacity", 0);
    return;
  }
  u64 sector = seed % cap;
  u64 g = GOOD(d);
  zero(g, 0x1000);
  *P32(g) = 0; /* VIRTIO_BLK_T_IN */
  *P64(g + 8) = sector;
  *P8(g + 0x800) = 0xee;
  set_desc(d->desc[0], 0, g, 16, DESC_NEXT, 1);
  set_desc(d->desc[0], 1, g + 0x200, 512, DESC_NEXT | DESC_WRITE, 2);
  set_desc(d->desc[0], 2, g + 0x800, 1, DESC_WRITE, 0);
  post(d, 0, 0);
  if (waited(d, wait_used(d, 0), "read: no answer")) return;
  if (*P8(g + 0x800) != 0) {
    verdict(d, "FAIL", "read status", *P8(g + 0x800));
    return;
  }
  for (u32 i = 0; i < 512; i++)
    if (*P8(g + 0x200 + i) != blk_pattern(sector, i)) {
      verdict(d, "FAIL", "content differs at byte", i);
      return;
    }
  verdict(d, "ok", "read sector", sector);
}

static void good_rng(struct dev *d) {
  if (good_setup(d, 0)) return;
  u64 g = GOOD(d);
  zero(g, 64);
  set_desc(d->desc[0], 0, g, 64, DESC_WRITE, 0);
  post(d, 0, 0);
  long n = wait_used(d, 0);
  if (waited(d, n, "no entropy")) return;
  u64 any = 0;
  for (u32 i = 0; i < 64; i += 8) any |= *P64(g + i);
  if (n <= 0 || n > 64 || any == 0) {
    verdict(d, "FAIL", "bytes", (u64)n);
    return;
  }
  verdict(d, "ok", "bytes", (u64)n);
}

static void good_balloon(struct dev *d) {
  if (good_setup(d, 0)) return;
  u64 g = GOOD(d);
  u64 page = VICTIMS(d);
  *P32(g) = (u32)(page >> 12);
  set_desc(d->desc[0], 0, g, 4, 0, 0);
  post(d, 0, 0);
  if (waited(d, wait_used(d, 0), "inflate: no answer")) return;
  set_desc(d->desc[1], 0, g, 4, 0, 0);
  post(d, 1, 0);
  if (waited(d, wait_used(d, 1), "deflate: no answer")) return;
  verdict(d, "ok", "inflated and deflated pfn", page >> 12);
}

static void good_console(struct dev *d) {
  if (good_setup(d, 0)) return;
  static const char msg[] = "hostile-guest: virtio-console ok\n";
  u64 g = GOOD(d);
  for (u32 i = 0; i < sizeof(msg) - 1; i++) *P8(g + i) = (u8)msg[i];
  set_desc(d->desc[1], 0, g, sizeof(msg) - 1, 0, 0);
  post(d, 1, 0);
  if (waited(d, wait_used(d, 1), "transmit: no answer")) return;
  verdict(d, "ok", "transmitted bytes", sizeof(msg) - 1);
}

static void good_vsock(struct dev *d) {
  if (good_setup(d, 0)) return;
  u64 cid = mr64(d->base + R_CONFIG);
  u64 g = GOOD(d);
  zero(g, 0x2000);
  /* Two receive buffers, an event buffer. */
  set_desc(d->desc[0], 0, g + 0x1000, 0x400, DESC_WRITE, 0);
  set_desc(d->desc[0], 1, g + 0x1400, 0x400, DESC_WRITE, 0);
  post(d, 0, 0);
  post(d, 0, 1);
  if (d->nq > 2) {
    set_desc(d->desc[2], 0, g + 0x1800, 8, DESC_WRITE, 0);
    post(d, 2, 0);
  }
  /* A connection request to the host (CID 2), port 5000. */
  *P64(g) = cid;
  *P64(g + 8) = 2;
  *P32(g + 16) = 40000;
  *P32(g + 20) = 5000;
  *P32(g + 24) = 0;
  *P16(g + 28) = 1; /* stream */
  *P16(g + 30) = 1; /* REQUEST */
  *P32(g + 32) = 0;
  *P32(g + 36) = 65536;
  *P32(g + 40) = 0;
  set_desc(d->desc[1], 0, g, 44, 0, 0);
  post(d, 1, 0);
  if (waited(d, wait_used(d, 1), "request not taken")) return;
  /* The answer to this request (RESPONSE or RST); anything else the device sends first is skipped. */
  for (u32 k = 0; k < 2; k++) {
    u32 slot = d->last_used[0] % d->qsize[0];
    long n = wait_used(d, 0);
    if (waited(d, n, "no reply")) return;
    u64 r = g + 0x1000 + (u64)(*P32(d->used[0] + 4 + 8 * slot) & 1) * 0x400;
    u16 op = *P16(r + 30);
    if (n >= 44 && *P64(r) == 2 && *P64(r + 8) == cid && *P32(r + 20) == 40000 && (op == 2 || op == 3)) {
      verdict(d, "ok", op == 2 ? "connected, op" : "refused (RST), op", op);
      return;
    }
  }
  verdict(d, "FAIL", "no reply to the request", ~0ULL);
}

static void good_fs(struct dev *d) {
  if (good_setup(d, 0)) return;
  u64 g = GOOD(d);
  zero(g, 0x1000);
  /* FUSE_INIT: in-header (40 bytes), init_in (64), then a reply buffer. */
  *P32(g) = 104;
  *P32(g + 4) = 26;
  *P64(g + 8) = 1;
  *P32(g + 40) = 7;
  *P32(g + 44) = 31;
  set_desc(d->desc[1], 0, g, 104, DESC_NEXT, 1);
  set_desc(d->desc[1], 1, g + 0x400, 0x100, DESC_WRITE, 0);
  post(d, 1, 0);
  long n = wait_used(d, 1);
  if (waited(d, n, "INIT: no answer")) return;
  u32 len = *P32(g + 0x400);
  int err = (int)*P32(g + 0x404);
  u64 unique = *P64(g + 0x408);
  if (err != 0 || unique != 1 || len < 24 || *P32(g + 0x410) != 7) {
    verdict(d, "FAIL", "INIT reply error", (u64)(long)err);
    return;
  }
  verdict(d, "ok", "INIT major 7 minor", *P32(g + 0x414));
}

static void good_net(struct dev *d) {
  if (good_setup(d, 0)) return;
  u64 g = GOOD(d);
  zero(g, 0x3000);
  set_desc(d->desc[0], 0, g + 0x1000, 0x800, DESC_WRITE, 0);
  set_desc(d->desc[0], 1, g + 0x1800, 0x800, DESC_WRITE, 0);
  post(d, 0, 0);
  post(d, 0, 1);
  /* An ARP probe (sender 0.0.0.0) for 10.0.2.2: virtio-net header (12 bytes), Ethernet, ARP. */
  u64 f = g + 12;
  for (u32 i = 0; i < 6; i++) *P8(f + i) = 0xff;
  for (u32 i = 0; i < 6; i++) *P8(f + 6 + i) = mr8(d->base + R_CONFIG + i);
  *P8(f + 12) = 0x08;
  *P8(f + 13) = 0x06;
  static const u8 arp[] = {0, 1, 8, 0, 6, 4, 0, 1};
  for (u32 i = 0; i < 8; i++) *P8(f + 14 + i) = arp[i];
  for (u32 i = 0; i < 6; i++) *P8(f + 22 + i) = *P8(f + 6 + i);
  /* spa 0.0.0.0, tha 0, tpa 10.0.2.2 */
  *P8(f + 38) = 10;
  *P8(f + 39) = 0;
  *P8(f + 40) = 2;
  *P8(f + 41) = 2;
  set_desc(d->desc[1], 0, g, 12 + 42, 0, 0);
  post(d, 1, 0);
  if (waited(d, wait_used(d, 1), "transmit: no answer")) return;
  verdict(d, "ok", "transmitted frame bytes", 42);
}

/* The legacy devices still answer as they should. */
static void good_legacy(void) {
  outb(0x70, 0x7f);
  outb(0x71, 0x5a);
  outb(0x70, 0x7f);
  u8 c = inb(0x71);
  outb(0x70, 0x7e);
  outb(0x71, (u8)seed);
  outb(0x70, 0x7f);
  u8 c2 = inb(0x71);
  puts("\nverdict legacy ");
  if (c == 0x5a && c2 == 0x5a) puts("ok cmos");
  else {
    puts("FAIL cmos");
    failures++;
  }
  putc('\n');
}

void hg_main(u64 zero_page) {
  /* The command line and the e820 map first: nothing below 1 MiB is trusted after the attacks start. */
  static char cmdline[256];
  u64 cp = *P32(zero_page + 0x228);
  u32 n = 0;
  if (cp)
    for (; n < sizeof(cmdline) - 1 && *P8(cp + n); n++) cmdline[n] = (char)*P8(cp + n);
  cmdline[n] = 0;
  const char *s = find(cmdline, "seed=");
  seed = s ? parse_num(s) : 1;
  s = find(cmdline, "rounds=");
  if (s) rounds = (u32)parse_num(s);
  u32 entries = *P8(zero_page + 0x1e8);
  for (u32 i = 0; i < entries && i < 128; i++) {
    u64 e = zero_page + 0x2d0 + i * 20;
    u64 addr = *P64(e), size = *P64(e + 8);
    if (*P32(e + 16) == 1 && addr <= SAFE_START && addr + size > SAFE_START) ram_end = addr + size;
  }
  rs = seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
  rs ^= rs >> 31;
  if (rs == 0) rs = 1;
  puts("hostile-guest seed=");
  putx(seed);
  puts(" rounds=");
  putu(rounds);
  puts(" ram_end=");
  putx(ram_end);
  if (ram_end < SAFE_START + AREA_SIZE * (MAX_DEVS + 1)) {
    puts("\nhostile-guest: too little RAM (give --mem 64 or more)\n");
    outb(0xf4, 0x7e);
  }
  scan();
  puts(" devices=");
  putu(ndevs);
  for (u32 i = 0; i < ndevs; i++) {
    putc(' ');
    puts(dev_name(devs[i].id));
  }
  putc('\n');

  for (u32 r = 0; r < rounds; r++) {
    for (u32 i = 0; i < ndevs; i++) {
      struct dev *d = &devs[i];
      for (u32 k = 0; k < 3; k++) {
        switch (below(9)) {
        case 0: attack_registers(d); break;
        case 1: attack_status(d); break;
        case 2: attack_features(d); break;
        case 3: attack_layout(d); break;
        case 4: attack_config(d); break;
        case 5: attack_notify(d); break;
        case 6: attack_requests(d); break;
        default: attack_chains(d); break;
        }
      }
    }
    mmio_storm();
    port_storm();
  }
  puts("\nhostile-guest: attacks done; DEVICE_NEEDS_RESET seen:");
  for (u32 i = 0; i < ndevs; i++) {
    putc(' ');
    puts(dev_name(devs[i].id));
    putc('=');
    putu(devs[i].needs_reset_seen);
  }
  putc('\n');

  for (u32 i = 0; i < ndevs; i++) {
    struct dev *d = &devs[i];
    switch (d->id) {
    case ID_BLK: good_blk(d); break;
    case ID_RNG: good_rng(d); break;
    case ID_BALLOON: good_balloon(d); break;
    case ID_CONSOLE: good_console(d); break;
    case ID_VSOCK: good_vsock(d); break;
    case ID_FS: good_fs(d); break;
    case ID_NET: good_net(d); break;
    default: verdict(d, "FAIL", "unknown device id", d->id); break;
    }
    wr(d, R_STATUS, 0);
  }
  good_legacy();
  puts(failures ? "hostile-guest: FAIL\n" : "hostile-guest: done\n");
  outb(0xf4, failures ? 0x7e : 0x31);
}
