/*
 * blkbench: a tiny block-device benchmark that runs inside a Linux guest (static, no libraries
 * beyond libc and pthreads). On one device (default /dev/vda), all with O_DIRECT so that the guest's
 * page cache is out of the picture:
 *
 *   1. sequential read:  MIB MiB from offset 0 in 1 MiB requests, queue depth 1;
 *   2. sequential write: the same range in 1 MiB requests, then fsync (a virtio-blk FLUSH);
 *      each 4 KiB block starts with a tag (its byte offset and a magic) for step 3 to check;
 *   3. 4 KiB random reads, queue depth 1, for SECS seconds over the written range (fixed seed),
 *      with each request's latency (timed with the TSC, see rdtsc());
 *   4. the same with QD threads, each with its own fixed seed (queue depth QD), when QD > 1.
 *
 * Parameters come from the kernel command line (so the same initramfs serves every run):
 * blkbench.mib=256 blkbench.secs=5 blkbench.qd=4 blkbench.dev=/dev/vda. Arguments override them:
 * `blkbench [DEVICE] [mib=N] [secs=S] [qd=N]` (a regular file works as DEVICE too, for trying it out
 * on a host: its first MIB MiB are overwritten).
 * Prints "@blkbench-start" when the measurements are about to start and then one line
 * "@blkbench {json}" on stdout (on failure: "@blkbench {"error":...}"), and exits 0
 * (1 on failure); powering off is left to whoever started it (the kit's /init with vireo.exit=).
 *
 * Build: gcc -static -O2 -pthread -o blkbench blkbench.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define MiB (1024UL * 1024UL)
#define BLK 4096UL
#define TAG_MAGIC 0x68636e65626b6c62ULL /* "blkbench" */
#define MAX_LAT 1000000

static char dev[128] = "/dev/vda";
static unsigned long mib = 256;
static double secs = 5;
static unsigned qd = 4;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * Per-request timing uses the TSC, calibrated against CLOCK_MONOTONIC: reading the clock can cost a
 * VM exit when the guest's clocksource is not the TSC or kvm-clock (acpi_pm is a port read), and
 * that would be charged to the device under test. Phases are still timed with CLOCK_MONOTONIC.
 */
static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static double tsc_hz;

static void calibrate_tsc(void) {
  double t0 = now();
  uint64_t c0 = rdtsc();
  usleep(200000);
  double t1 = now();
  uint64_t c1 = rdtsc();
  tsc_hz = (double)(c1 - c0) / (t1 - t0);
}

/*
 * Waits (at most 3 s) until the console has sent what was written to it: a UART sends byte by byte,
 * each one a VM exit, in the background after write() returns. (Not tcdrain(): it has no time limit.)
 */
static void drain(void) {
  fflush(stdout);
  for (int i = 0; i < 300; i++) {
    int queued = 0;
    if (ioctl(STDOUT_FILENO, TIOCOUTQ, &queued) != 0 || queued == 0) break;
    usleep(10000);
  }
}

static void fail(const char *what) {
  printf("@blkbench {\"error\":\"%s: %s\"}\n", what, strerror(errno));
  drain();
  exit(1);
}

/* One "blkbench.KEY=VALUE" (the prefix may be left out on the program's own command line). */
static void param(const char *tok) {
  if (!strncmp(tok, "blkbench.", 9)) tok += 9;
  if (!strncmp(tok, "mib=", 4)) mib = strtoul(tok + 4, NULL, 10);
  else if (!strncmp(tok, "secs=", 5)) secs = strtod(tok + 5, NULL);
  else if (!strncmp(tok, "qd=", 3)) qd = (unsigned)strtoul(tok + 3, NULL, 10);
  else if (!strncmp(tok, "dev=", 4)) snprintf(dev, sizeof dev, "%s", tok + 4);
}

static void params(int argc, char **argv) {
  char buf[4096];
  int fd = open("/proc/cmdline", O_RDONLY);
  ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
  if (fd >= 0) close(fd);
  if (n > 0) {
    buf[n] = 0;
    for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n"))
      if (!strncmp(tok, "blkbench.", 9)) param(tok);
  }
  for (int i = 1; i < argc; i++) {
    if (strchr(argv[i], '=')) param(argv[i]);
    else snprintf(dev, sizeof dev, "%s", argv[i]);
  }
}

static void *aligned(size_t size) {
  void *p;
  if (posix_memalign(&p, BLK, size) != 0) fail("posix_memalign");
  memset(p, 0, size);
  return p;
}

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* --- random reads --- */

struct rand_job {
  int fd;
  uint64_t seed;
  uint64_t blocks; /* range in 4 KiB blocks */
  /* results */
  uint64_t until_tsc;
  uint64_t ops;
  uint64_t bad;     /* blocks whose tag did not match */
  uint32_t *lat_ns; /* per-op latency, up to MAX_LAT entries (NULL: not recorded) */
  uint64_t nlat;
  int err;
};

static void *rand_reader(void *arg) {
  struct rand_job *j = arg;
  uint8_t *buf = aligned(BLK);
  uint64_t s = j->seed;
  uint64_t t = rdtsc();
  while (t < j->until_tsc) {
    uint64_t blk = xorshift(&s) % j->blocks;
    if (pread(j->fd, buf, BLK, (off_t)(blk * BLK)) != (ssize_t)BLK) {
      j->err = errno ? errno : EIO;
      break;
    }
    uint64_t t2 = rdtsc();
    uint64_t tag[2];
    memcpy(tag, buf, sizeof tag);
    if (tag[0] != blk * BLK || tag[1] != TAG_MAGIC) j->bad++;
    if (j->lat_ns && j->nlat < MAX_LAT) j->lat_ns[j->nlat++] = (uint32_t)((double)(t2 - t) / tsc_hz * 1e9);
    j->ops++;
    t = t2;
  }
  free(buf);
  return NULL;
}

/* A one-line sysfs value of the device (trailing newline removed), or "" when absent. */
static void sysfs(const char *rel, char *out, size_t size) {
  const char *base = strrchr(dev, '/');
  char path[256];
  snprintf(path, sizeof path, "/sys/block/%s/%s", base ? base + 1 : dev, rel);
  out[0] = 0;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return;
  ssize_t n = read(fd, out, size - 1);
  close(fd);
  out[n > 0 ? n : 0] = 0;
  for (char *p = out; *p; p++)
    if (*p == '\n' || *p == '"' || *p == '\\') *p = 0;
}

/*
 * Kernel log lines about the guest's clocks and timers: a clocksource switch (away from kvm-clock/tsc
 * a clock read can cost an exit) and the APIC timer (without the TSC deadline timer Linux calibrates
 * the LAPIC timer against the PIT; if that fails it programs the PIT for every timer event).
 */
static void clock_log(char *out, size_t size) {
  static char log[1 << 17];
  out[0] = 0;
  int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, sizeof log - 1);
  if (n <= 0) return;
  log[n] = 0;
  size_t used = 0;
  for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n")) {
    if (!strstr(line, "Switched to clocksource") && !strstr(line, "unstable") && !strstr(line, "APIC timer") &&
        !strstr(line, "TSC deadline") && !strstr(line, "verification"))
      continue;
    char *msg = strchr(line, ']');
    msg = msg ? msg + 1 : line;
    while (*msg == ' ') msg++;
    for (char *p = msg; *p && used + 2 < size; p++)
      if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) out[used++] = *p;
    if (used + 3 < size) {
      out[used++] = ';';
      out[used++] = ' ';
    }
    out[used] = 0;
  }
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  params(argc, argv);
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (mib == 0 || secs <= 0) {
    errno = EINVAL;
    fail("parameters");
  }
  /* The device node may appear a moment after the driver probed it. */
  struct stat st;
  for (int i = 0; stat(dev, &st) != 0; i++) {
    if (i >= 150) fail(dev);
    usleep(100000);
  }
  int fd = open(dev, O_RDWR | O_DIRECT);
  if (fd < 0) fail("open");
  uint64_t devbytes = 0;
  if (S_ISREG(st.st_mode)) devbytes = (uint64_t)st.st_size; /* an image file, for trying it out on a host */
  else if (ioctl(fd, BLKGETSIZE64, &devbytes) != 0) fail("BLKGETSIZE64");
  if (devbytes < mib * MiB) {
    errno = ENOSPC;
    fail("device smaller than blkbench.mib");
  }
  uint8_t *buf = aligned(MiB);
  /*
   * Let what init printed go out, say that the measurements start (a VMM-side harness can take its
   * readings then), let that line go out too, and settle: console output is not measured.
   */
  drain();
  printf("@blkbench-start\n");
  drain();
  sleep(1);
  calibrate_tsc();
  if (!(tsc_hz > 1e6)) {
    errno = EINVAL;
    fail("TSC calibration");
  }

  /* 1. sequential read */
  double t0 = now();
  for (unsigned long i = 0; i < mib; i++)
    if (pread(fd, buf, MiB, (off_t)(i * MiB)) != (ssize_t)MiB) fail("sequential read");
  double seq_read = now() - t0;

  /* 2. sequential write, then fsync */
  t0 = now();
  for (unsigned long i = 0; i < mib; i++) {
    for (unsigned long b = 0; b < MiB / BLK; b++) {
      uint64_t tag[2] = {i * MiB + b * BLK, TAG_MAGIC};
      memcpy(buf + b * BLK, tag, sizeof tag);
    }
    if (pwrite(fd, buf, MiB, (off_t)(i * MiB)) != (ssize_t)MiB) fail("sequential write");
  }
  double t1 = now();
  if (fsync(fd) != 0) fail("fsync");
  double seq_write = now() - t0;
  double fsync_s = now() - t1;

  /* 3. random 4 KiB reads, queue depth 1 */
  uint64_t blocks = mib * MiB / BLK;
  struct rand_job r1 = {.fd = fd, .seed = 0x9e3779b97f4a7c15ULL, .blocks = blocks};
  r1.lat_ns = malloc(sizeof(uint32_t) * MAX_LAT);
  if (!r1.lat_ns) fail("malloc");
  double r1_t0 = now();
  r1.until_tsc = rdtsc() + (uint64_t)(secs * tsc_hz);
  rand_reader(&r1);
  double r1_s = now() - r1_t0;
  if (r1.err) {
    errno = r1.err;
    fail("random read");
  }
  qsort(r1.lat_ns, r1.nlat, sizeof(uint32_t), cmp_u32);
  double p50 = r1.nlat ? r1.lat_ns[r1.nlat / 2] / 1e3 : 0;
  double p99 = r1.nlat ? r1.lat_ns[(r1.nlat * 99) / 100] / 1e3 : 0;

  /* 4. random 4 KiB reads, queue depth qd (one thread per request in flight) */
  uint64_t rq_ops = 0, rq_bad = 0;
  double rq_s = 0;
  if (qd > 1) {
    struct rand_job *jobs = calloc(qd, sizeof *jobs);
    pthread_t *th = calloc(qd, sizeof *th);
    if (!jobs || !th) fail("calloc");
    double start = now();
    uint64_t until = rdtsc() + (uint64_t)(secs * tsc_hz);
    for (unsigned i = 0; i < qd; i++) {
      jobs[i] = (struct rand_job){.fd = fd, .seed = 0x2545f4914f6cdd1dULL * (i + 1), .blocks = blocks};
      jobs[i].until_tsc = until;
      if (pthread_create(&th[i], NULL, rand_reader, &jobs[i]) != 0) fail("pthread_create");
    }
    for (unsigned i = 0; i < qd; i++) pthread_join(th[i], NULL);
    rq_s = now() - start;
    for (unsigned i = 0; i < qd; i++) {
      if (jobs[i].err) {
        errno = jobs[i].err;
        fail("random read (threads)");
      }
      rq_ops += jobs[i].ops;
      rq_bad += jobs[i].bad;
    }
  }
  close(fd);

  /* How the guest's block layer sees the device: request size limits and the virtio features. */
  char max_kb[32], hw_kb[32], segs[32], seg_size[32], features[80], clocksource[64], clocklog[1024];
  clock_log(clocklog, sizeof clocklog);
  sysfs("queue/max_sectors_kb", max_kb, sizeof max_kb);
  sysfs("queue/max_hw_sectors_kb", hw_kb, sizeof hw_kb);
  sysfs("queue/max_segments", segs, sizeof segs);
  sysfs("queue/max_segment_size", seg_size, sizeof seg_size);
  sysfs("device/features", features, sizeof features);
  {
    int cfd = open("/sys/devices/system/clocksource/clocksource0/current_clocksource", O_RDONLY);
    ssize_t n = cfd < 0 ? 0 : read(cfd, clocksource, sizeof clocksource - 1);
    if (cfd >= 0) close(cfd);
    clocksource[n > 0 ? n : 0] = 0;
    char *nl = strchr(clocksource, '\n');
    if (nl) *nl = 0;
  }

  printf("@blkbench {\"dev\":\"%s\",\"devMiB\":%llu,\"mib\":%lu,\"secs\":%g,"
         "\"seqReadMiBs\":%.3f,\"seqReadS\":%.4f,"
         "\"seqWriteMiBs\":%.3f,\"seqWriteS\":%.4f,\"fsyncS\":%.4f,"
         "\"randReadIops\":%.2f,\"randReadOps\":%llu,\"randReadS\":%.4f,\"randReadP50Us\":%.1f,\"randReadP99Us\":%.1f,"
         "\"qd\":%u,\"randReadQdIops\":%.2f,\"randReadQdOps\":%llu,\"randReadQdS\":%.4f,"
         "\"verifyErrors\":%llu,\"maxSectorsKb\":\"%s\",\"maxHwSectorsKb\":\"%s\",\"maxSegments\":\"%s\","
         "\"maxSegmentSize\":\"%s\",\"features\":\"%s\",\"clocksource\":\"%s\",\"tscMHz\":%.1f,\"clockLog\":\"%s\"}\n",
         dev, (unsigned long long)(devbytes / MiB), mib, secs, mib / seq_read, seq_read, mib / seq_write, seq_write,
         fsync_s, r1.ops / r1_s, (unsigned long long)r1.ops, r1_s, p50, p99, qd, qd > 1 ? rq_ops / rq_s : 0.0,
         (unsigned long long)rq_ops, rq_s, (unsigned long long)(r1.bad + rq_bad), max_kb, hw_kb, segs, seg_size,
         features, clocksource, tsc_hz / 1e6, clocklog);
  drain(); /* all of it out before whoever started us powers off */
  return 0;
}
