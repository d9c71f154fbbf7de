/*
 * jail-exec: the system-call half of vireo-jailer (src/cli/jailer.ts). The TypeScript front end parses
 * and validates Firecracker's jailer command line, decides what the jail holds, writes the cgroups and
 * then execve()s this program in place of itself (same PID). This program is single-threaded, which is
 * what these steps need and a Node process is not: unshare(CLONE_NEWNS) and setns() change only the
 * calling thread, a capability drop is per thread, and CLONE_NEWPID only takes effect in a child made
 * with fork(), which Node cannot do. So: close inherited descriptors, join the network namespace,
 * set rlimits, build the root in a new mount namespace (read-only binds), pivot_root into it, create
 * the device nodes, optionally fork into a new PID namespace, 
 * daemonize, drop to uid/gid with no supplementary groups and no capabilities (bounding set emptied,
 * no_new_privs set), then execve the VMM. Every failure prints one line and exits 1; the mounts live
 * in the new namespace only, so they vanish with the process.
 *
 * Usage (internal; built by `npm run build` into dist/native/jail-exec):
 *   jail-exec --root DIR --uid N --gid N [--netns PATH] [--rlimit fsize|nofile N]... [--ro SRC DST]...
 *             [--dir PATH]... [--dev PATH MAJOR MINOR]... [--new-pid-ns PIDFILE] [--daemonize]
 *             -- PROGRAM [ARG]...
 * DST, --dir, --dev and PIDFILE are paths inside the jail.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <grp.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_ITEMS 256

struct bind { const char *src, *dst; };
struct dev { const char *path; unsigned major, minor; };

static const char *prog = "vireo-jailer";

static void die(const char *fmt, ...) {
  int e = errno;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (e) dprintf(2, "%s: %s: %s\n", prog, msg, strerror(e));
  else dprintf(2, "%s: %s\n", prog, msg);
  _exit(1);
}

static unsigned long long num(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-') {
    errno = 0;
    die("%s: not a number: '%s'", what, s);
  }
  return v;
}

/* A uid or gid: (uid_t)-1 is refused, as setresuid() and setresgid() read it as "leave unchanged". */
static long long id_arg(const char *s, const char *what) {
  unsigned long long v = num(s, what);
  if (v >= 0xffffffffULL) {
    errno = 0;
    die("%s %s is out of range (at most 4294967294)", what, s);
  }
  return (long long)v;
}

/* mkdir -p of every parent of PATH (not PATH itself), mode 0755. */
static void mkparents(const char *path) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
    errno = ENAMETOOLONG;
    die("path %s", path);
  }
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(buf, 0755) && errno != EEXIST) die("cannot create directory %s", buf);
    *p = '/';
  }
  errno = 0;
}

/* Paths inside the jail are absolute and never climb out of it. */
static void jail_path(const char *p) {
  size_t n = strlen(p);
  if (p[0] != '/' || strstr(p, "/../") || (n >= 3 && !strcmp(p + n - 3, "/.."))) {
    errno = 0;
    die("jail-exec: %s is not an absolute path inside the jail", p);
  }
}

static void bind_ro(const char *root, const struct bind *b) {
  char dst[4096];
  struct stat st;
  if (snprintf(dst, sizeof dst, "%s%s", root, b->dst) >= (int)sizeof dst) {
    errno = ENAMETOOLONG;
    die("path %s%s", root, b->dst);
  }
  if (stat(b->src, &st)) die("cannot bind %s into the jail", b->src);
  mkparents(dst);
  if (S_ISDIR(st.st_mode)) {
    if (mkdir(dst, 0755) && errno != EEXIST) die("cannot create mount point %s", dst);
  } else {
    int fd = open(dst, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) die("cannot create mount point %s", dst);
    close(fd);
  }
  if (mount(b->src, dst, NULL, MS_BIND, NULL)) die("cannot bind %s at %s", b->src, dst);
  /* A bind takes the flags of the mount it comes from; read-only needs a remount of the bind. */
  if (mount(NULL, dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL))
    die("cannot make %s read-only", dst);
}

static void build_root(const char *root, const struct bind *binds, int nbinds) {
  if (unshare(CLONE_NEWNS)) die("Failed to unshare into new mount namespace");
  if (mount(NULL, "/", NULL, MS_PRIVATE | MS_REC, NULL)) die("cannot make the mounts private");
  if (mount(root, root, NULL, MS_BIND, NULL)) die("Failed to bind mount the jail root directory %s", root);
  /* Writable (the VMM's socket goes there) and not nodev (the device nodes live there), but no set-uid. */
  if (mount(NULL, root, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID, NULL)) die("cannot remount %s nosuid", root);
  for (int i = 0; i < nbinds; i++) bind_ro(root, &binds[i]);
  if (chdir(root)) die("Failed to chdir into chroot directory %s", root);
  if (mkdir("old_root", 0700) && errno != EEXIST) die("Failed to create the jail root directory before pivoting root");
  if (syscall(SYS_pivot_root, ".", "old_root")) die("Failed to pivot root");
  if (umount2("old_root", MNT_DETACH)) die("Failed to unmount the old jail root");
  if (rmdir("old_root")) die("Failed to remove old jail root directory");
  if (chroot(".")) die("chroot");
  if (chdir("/")) die("chdir /");
}

static void own_dir(const char *path, uid_t uid, gid_t gid) {
  mkparents(path);
  if (mkdir(path, 0700) && errno != EEXIST) die("Failed to create directory %s", path);
  if (chmod(path, 0700)) die("Failed to change permissions on %s", path);
  if (chown(path, uid, gid)) die("Failed to change owner for %s", path);
}

static void make_dev(const struct dev *d, uid_t uid, gid_t gid) {
  mkparents(d->path);
  if (mknod(d->path, S_IFCHR | S_IRUSR | S_IWUSR, makedev(d->major, d->minor)))
    die("Failed to create %s via mknod inside the jail", d->path);
  if (chown(d->path, uid, gid)) die("Failed to change owner for %s", d->path);
}

static void drop_privileges(uid_t uid, gid_t gid) {
  /* The bounding set first (it needs CAP_SETPCAP): then not even an exec as uid 0 regains a capability. */
  for (int cap = 0; cap < 64; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0) continue;
    if (errno == EINVAL) break; /* past the kernel's last capability */
    die("cannot drop capability %d from the bounding set", cap);
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) && errno != EINVAL) die("cannot clear ambient capabilities");
  if (setgroups(0, NULL)) die("setgroups");
  if (setresgid(gid, gid, gid)) die("cannot switch to gid %u", gid);
  if (setresuid(uid, uid, uid)) die("cannot switch to uid %u", uid);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &hdr, data)) die("cannot clear capabilities");
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  if (getresuid(&ru, &eu, &su) || getresgid(&rg, &eg, &sg) || ru != uid || eu != uid || su != uid || rg != gid ||
      eg != gid || sg != gid || getgroups(0, NULL) != 0) {
    errno = 0;
    die("the switch to uid %u gid %u did not take", uid, gid);
  }
  if (uid != 0 && setuid(0) == 0) {
    errno = 0;
    die("root could be regained after the switch to uid %u", uid);
  }
  errno = 0;
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("cannot set no_new_privs");
}

int main(int argc, char **argv) {
  const char *root = NULL, *netns = NULL, *pidfile = NULL;
  long long uid = -1, gid = -1;
  int daemonize = 0, nbinds = 0, ndirs = 0, ndevs = 0, i;
  struct bind binds[MAX_ITEMS];
  const char *dirs[MAX_ITEMS];
  struct dev devs[MAX_ITEMS];
  long long rl_fsize = -1, rl_nofile = -1;

  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    int left = argc - i - 1;
#define NEED(n) do { if (left < (n)) { errno = 0; die("jail-exec: %s needs %d value(s)", a, (n)); } } while (0)
#define ROOM(c) do { if ((c) >= MAX_ITEMS) { errno = 0; die("jail-exec: too many %s", a); } } while (0)
    if (!strcmp(a, "--")) { i++; break; }
    else if (!strcmp(a, "--root")) { NEED(1); root = argv[++i]; }
    else if (!strcmp(a, "--uid")) { NEED(1); uid = id_arg(argv[++i], "uid"); }
    else if (!strcmp(a, "--gid")) { NEED(1); gid = id_arg(argv[++i], "gid"); }
    else if (!strcmp(a, "--netns")) { NEED(1); netns = argv[++i]; }
    else if (!strcmp(a, "--rlimit")) {
      NEED(2);
      const char *name = argv[++i];
      long long v = (long long)num(argv[++i], name);
      if (!strcmp(name, "fsize")) rl_fsize = v;
      else if (!strcmp(name, "nofile")) rl_nofile = v;
      else { errno = 0; die("jail-exec: unknown rlimit %s", name); }
    }
    else if (!strcmp(a, "--ro")) { NEED(2); ROOM(nbinds); binds[nbinds].src = argv[i + 1]; binds[nbinds].dst = argv[i + 2]; nbinds++; i += 2; }
    else if (!strcmp(a, "--dir")) { NEED(1); ROOM(ndirs); dirs[ndirs++] = argv[++i]; }
    else if (!strcmp(a, "--dev")) {
      NEED(3); ROOM(ndevs);
      devs[ndevs].path = argv[i + 1];
      devs[ndevs].major = (unsigned)num(argv[i + 2], "major");
      devs[ndevs].minor = (unsigned)num(argv[i + 3], "minor");
      ndevs++; i += 3;
    }
    else if (!strcmp(a, "--new-pid-ns")) { NEED(1); pidfile = argv[++i]; }
    else if (!strcmp(a, "--daemonize")) daemonize = 1;
    else { errno = 0; die("jail-exec: unknown option %s", a); }
  }
  errno = 0;
  if (!root || uid < 0 || gid < 0 || i >= argc) die("jail-exec: --root, --uid, --gid and -- PROGRAM are required");
  for (int k = 0; k < nbinds; k++) jail_path(binds[k].dst);
  for (int k = 0; k < ndirs; k++) jail_path(dirs[k]);
  for (int k = 0; k < ndevs; k++) jail_path(devs[k].path);
  if (pidfile) jail_path(pidfile);
  char **exec_argv = &argv[i];

  /* Nothing inherited but stdin, stdout and stderr; a closed one of those becomes the host's /dev/null
   * now, as Node would otherwise open /dev/null at start-up and the jail has none (Node needs no
   * other device node, and no /proc: it runs without both). */
  if (syscall(SYS_close_range, 3U, ~0U, 0U)) die("close_range");
  for (int fd = 0; fd < 3; fd++) {
    if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
    if (open("/dev/null", O_RDWR) != fd) die("cannot open /dev/null for descriptor %d", fd);
  }
  errno = 0;

  if (netns) {
    int fd = open(netns, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("Failed to open file %s", netns);
    if (setns(fd, CLONE_NEWNET)) die("Failed to join network namespace %s", netns);
    close(fd);
  }
  struct rlimit r;
  if (rl_nofile >= 0) {
    r.rlim_cur = r.rlim_max = (rlim_t)rl_nofile;
    if (setrlimit(RLIMIT_NOFILE, &r)) die("Failed to set limit for resource no-file");
  }
  if (rl_fsize >= 0) {
    r.rlim_cur = r.rlim_max = (rlim_t)rl_fsize;
    if (setrlimit(RLIMIT_FSIZE, &r)) die("Failed to set limit for resource fsize");
  }
  int dev_null = -1;
  if (daemonize && (dev_null = open("/dev/null", O_RDWR | O_CLOEXEC)) < 0) die("Failed to open /dev/null");

  build_root(root, binds, nbinds);
  for (int d = 0; d < ndirs; d++) own_dir(dirs[d], (uid_t)uid, (gid_t)gid);
  for (int d = 0; d < ndevs; d++) make_dev(&devs[d], (uid_t)uid, (gid_t)gid);

  if (daemonize) {
    if (setsid() < 0) die("Failed to daemonize: setsid");
    if (dup2(dev_null, 0) < 0 || dup2(dev_null, 1) < 0 || dup2(dev_null, 2) < 0) die("Failed to duplicate fd");
    close(dev_null);
  }

  if (pidfile) {
    if (unshare(CLONE_NEWPID)) die("Failed to unshare into a new PID namespace");
    pid_t child = fork();
    if (child < 0) die("Failed cloning into a new child process");
    if (child > 0) {
      int fd = open(pidfile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0) die("Failed to open file %s", pidfile);
      if (dprintf(fd, "%d", (int)child) < 0) die("Failed to write to %s", pidfile);
      close(fd);
      _exit(0);
    }
    /* The child is init (PID 1) of the new namespace and goes on to become the VMM. */
  }

  drop_privileges((uid_t)uid, (gid_t)gid);
  char *envp[] = {NULL};
  execve(exec_argv[0], exec_argv, envp);
  die("Failed to exec into %s", exec_argv[0]);
  return 1;
}
