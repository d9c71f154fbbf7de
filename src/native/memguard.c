/*
 * memguard: survive SIGBUS on guest RAM mapped from a file.
 *
 * A restored VM's RAM is a MAP_PRIVATE mapping of its memory snapshot file. When that file is truncated
 * while the VM runs, every page not yet copied reads past the end of the file, and the kernel answers
 * an access from the VMM (a device on the I/O thread, a disk thread, the main thread reading guest RAM)
 * with SIGBUS, which Node cannot catch in JavaScript: the process died. This handler, for a fault inside
 * a registered range, maps a fresh zero page over the faulting page (mmap is async-signal-safe), counts
 * the fault for that range and returns, so the access retries and reads zeros; the VMM polls the
 * counters and stops that VM with a clear message. Faults elsewhere go to the previous handler (or the
 * default action, which ends the process as before).
 *
 * Loaded with koffi (src/os/memguard.ts); built by `npm run build` into dist/native/memguard.so. One copy
 * per process: every thread's dlopen returns the same library, so the table is process-wide.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_RANGES 1024
#define PAGE 4096UL

/* A slot is free when start is 0. start is written last on add and cleared first on remove, so the
   handler never sees a half-written range. */
static uintptr_t range_start[MAX_RANGES];
static uintptr_t range_end[MAX_RANGES];
static int range_used[MAX_RANGES];
static uint64_t range_faults[MAX_RANGES];

static struct sigaction previous;
static int installed;

static void chain(int sig, siginfo_t *info, void *ctx) {
  if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction != NULL) {
    previous.sa_sigaction(sig, info, ctx);
    return;
  }
  if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN && previous.sa_handler != NULL) {
    previous.sa_handler(sig);
    return;
  }
  /* Default action (an ignored SIGBUS from a fault would only fault again forever): put it back. A
     fault then happens again on return and ends the process as it would have; a signal sent with
     kill() is raised again (it is blocked until this handler returns). */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, NULL);
  if (info == NULL || info->si_code <= 0) raise(sig);
}

static void handler(int sig, siginfo_t *info, void *ctx) {
  /* BUS_ADRERR: a page beyond the end of the mapped file. Hardware memory errors (BUS_MCEERR_*) and
     anything else are not ours to paper over. */
  if (info != NULL && info->si_code == BUS_ADRERR) {
    uintptr_t a = (uintptr_t)info->si_addr;
    for (int i = 0; i < MAX_RANGES; i++) {
      uintptr_t s = __atomic_load_n(&range_start[i], __ATOMIC_ACQUIRE);
      if (s == 0 || a < s) continue;
      if (a >= __atomic_load_n(&range_end[i], __ATOMIC_ACQUIRE)) continue;
      void *page = (void *)(a & ~(PAGE - 1));
      void *p = mmap(page, PAGE, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) break;
      __atomic_add_fetch(&range_faults[i], 1, __ATOMIC_RELEASE);
      return;
    }
  }
  chain(sig, info, ctx);
}

/* Installs the handler once per process. 0 on success, -1 (errno set) on failure. */
int memguard_install(void) {
  if (__atomic_load_n(&installed, __ATOMIC_ACQUIRE)) return 0;
  static int lock;
  while (__atomic_exchange_n(&lock, 1, __ATOMIC_ACQUIRE)) usleep(100);
  int r = 0;
  if (!installed) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    r = sigaction(SIGBUS, &sa, &previous);
    if (r == 0) __atomic_store_n(&installed, 1, __ATOMIC_RELEASE);
  }
  __atomic_store_n(&lock, 0, __ATOMIC_RELEASE);
  return r;
}

/* Registers [start, start+len) as guest RAM to guard; returns its slot, or -1 when the table is full. */
int memguard_add(uintptr_t start, size_t len) {
  if (start == 0 || len == 0) return -1;
  for (int i = 0; i < MAX_RANGES; i++) {
    int expected = 0;
    if (!__atomic_compare_exchange_n(&range_used[i], &expected, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
    __atomic_store_n(&range_faults[i], 0, __ATOMIC_RELEASE);
    __atomic_store_n(&range_end[i], start + len, __ATOMIC_RELEASE);
    __atomic_store_n(&range_start[i], start, __ATOMIC_RELEASE);
    return i;
  }
  return -1;
}

/* Unregisters a slot (before its memory is unmapped). */
void memguard_remove(int slot) {
  if (slot < 0 || slot >= MAX_RANGES) return;
  __atomic_store_n(&range_start[slot], 0, __ATOMIC_RELEASE);
  __atomic_store_n(&range_end[slot], 0, __ATOMIC_RELEASE);
  __atomic_store_n(&range_used[slot], 0, __ATOMIC_RELEASE);
}

/* Faults the handler has answered in a slot since it was added. */
uint64_t memguard_faults(int slot) {
  if (slot < 0 || slot >= MAX_RANGES) return 0;
  return __atomic_load_n(&range_faults[slot], __ATOMIC_ACQUIRE);
}
