/*
 * seccomp-trap: the SIGSYS handler behind vireo's seccomp filters (src/os/seccomp.ts).
 *
 * Every filter's default action is SECCOMP_RET_TRAP: a thread that makes a system call its kind may not
 * make gets SIGSYS before the call runs. This handler then writes one line to fd 2,
 *   vireo: seccomp: thread KIND made syscall NAME (NR) which is not allowed
 * and ends the whole process with status 159 (exit_group, the first thing every filter allows): the
 * effect of SECCOMP_RET_KILL_PROCESS, with the offending call named. Node has no SIGSYS handler of its own
 * and JavaScript cannot run in a signal handler, hence C. Only write(2) and exit_group(2) are used here,
 * both async-signal-safe and both on every allow-list.
 *
 * KIND is thread-local (each thread names itself before installing its filter); NAME comes from a table
 * the first installer hands over (the x86_64 names in src/os/seccomp-syscalls.ts), so there is one list.
 * Loaded with koffi; built by `npm run build` into dist/native/seccomp-trap.so. One copy per process.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_NR 512
#define NAMES_BYTES 8192
#define EXIT_STATUS 159

/* "node": a thread that never named itself (Node's own threads, under the process-wide filter only). */
static __thread char kind[24] = "node";
static char names[NAMES_BYTES];
static unsigned short name_at[MAX_NR]; /* offset + 1 into names; 0: no name */
static int installed;

static size_t put(char *out, size_t at, size_t cap, const char *s) {
  while (*s && at < cap) out[at++] = *s++;
  return at;
}

static size_t put_num(char *out, size_t at, size_t cap, long v) {
  char digits[24];
  int n = 0;
  unsigned long u = v < 0 ? (unsigned long)(-v) : (unsigned long)v;
  do {
    digits[n++] = (char)('0' + u % 10);
    u /= 10;
  } while (u && n < 23);
  if (v < 0 && at < cap) out[at++] = '-';
  while (n > 0 && at < cap) out[at++] = digits[--n];
  return at;
}

static void handler(int sig, siginfo_t *info, void *ctx) {
  (void)sig;
  (void)ctx;
  char line[200];
  size_t at = 0, cap = sizeof line - 1;
  long nr = info != NULL ? (long)info->si_syscall : -1;
  at = put(line, at, cap, "vireo: seccomp: thread ");
  at = put(line, at, cap, kind);
  at = put(line, at, cap, " made syscall ");
  if (nr >= 0 && nr < MAX_NR && name_at[nr] != 0) at = put(line, at, cap, names + name_at[nr] - 1);
  else at = put(line, at, cap, "unknown");
  at = put(line, at, cap, " (");
  at = put_num(line, at, cap, nr);
  at = put(line, at, cap, ") which is not allowed\n");
  line[at] = 0;
  /* The raw system calls: libc's wrappers may touch errno or locks. */
  syscall(SYS_write, 2, line, at);
  syscall(SYS_exit_group, EXIT_STATUS);
  for (;;) syscall(SYS_exit_group, EXIT_STATUS);
}

/* Names this thread in the report (at most 23 bytes kept). */
void seccomp_trap_kind(const char *k) {
  size_t n = strlen(k);
  if (n > sizeof kind - 1) n = sizeof kind - 1;
  memcpy(kind, k, n);
  kind[n] = 0;
}

/*
 * Installs the SIGSYS handler once per process, with the syscall names: `table` is "NR NAME\n" lines.
 * 0 on success, -1 on failure (sigaction failed, errno set; or the table did not fit).
 */
int seccomp_trap_install(const char *table) {
  if (__atomic_load_n(&installed, __ATOMIC_ACQUIRE)) return 0;
  static int lock;
  while (__atomic_exchange_n(&lock, 1, __ATOMIC_ACQUIRE)) usleep(100);
  int r = 0;
  if (!installed) {
    size_t used = 0;
    const char *p = table;
    while (*p) {
      long nr = 0;
      while (*p >= '0' && *p <= '9') nr = nr * 10 + (*p++ - '0');
      if (*p == ' ') p++;
      const char *name = p;
      while (*p && *p != '\n') p++;
      size_t len = (size_t)(p - name);
      if (*p == '\n') p++;
      if (nr < 0 || nr >= MAX_NR || len == 0) continue;
      if (used + len + 1 > NAMES_BYTES) {
        r = -1;
        break;
      }
      memcpy(names + used, name, len);
      names[used + len] = 0;
      name_at[nr] = (unsigned short)(used + 1);
      used += len + 1;
    }
    if (r == 0) {
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_sigaction = handler;
      sa.sa_flags = SA_SIGINFO;
      sigemptyset(&sa.sa_mask);
      r = sigaction(SIGSYS, &sa, NULL);
      if (r == 0) __atomic_store_n(&installed, 1, __ATOMIC_RELEASE);
    }
  }
  __atomic_store_n(&lock, 0, __ATOMIC_RELEASE);
  return r;
}
