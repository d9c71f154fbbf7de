/**
 * `vireo-jailer` (bin/jailer.js): Firecracker's jailer command line (docs/jailer.md), so orchestrators
 * that jail Firecracker jail vireo-firecracker the same way. This front end validates the whole command
 * line against the host, works out what the jail must hold (contents.ts), builds
 * `<chroot_base>/<exec_file_name>/<id>/root`, writes the cgroups (cgroup.ts), then execve()s
 * dist/native/jail-exec in its own place (same PID), which makes the mount namespace, pivots into the
 * root, creates the device nodes, joins the network namespace, sets the rlimits, forks into a new PID
 * namespace when asked, drops to uid/gid with no capabilities and execs the VMM as Firecracker's
 * jailer does: `<exec_file> --id <id> --start-time-us … --start-time-cpu-us … --parent-cpu-time-us …`
 * and the arguments after `--`. Paths the VMM is given (the API socket, kernels, drives) are inside
 * the jail. Bad input: one line on stderr, exit status 1, nothing created.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VireoError } from '../common/errors.js';
import { execve } from '../os/exec.js';
import { helpText, type JailerConfig, JailerError, jailerConfig } from './jail/args.js';
import { applyCgroups, planCgroups } from './jail/cgroup.js';
import { type JailContents, jailContents } from './jail/contents.js';

const VERSION = '0.1.0';
export const JAIL_EXEC = fileURLToPath(new URL('../../native/jail-exec', import.meta.url));

/** Character devices made inside every jail (major and minor are the kernel's, Documentation/admin-guide/devices.txt). */
export const JAIL_DEVICES: readonly [string, number, number][] = [
  ['/dev/kvm', 10, 232],
  ['/dev/net/tun', 10, 200],
  ['/dev/urandom', 1, 9],
];

/** Folders inside the jail owned by uid:gid, mode 0700, as Firecracker's jailer makes them. */
const JAIL_FOLDERS = ['/', '/dev', '/dev/net', '/run'];

/** jail-exec's command line for `cfg` (exported for tests). */
export function jailExecArgv(cfg: JailerConfig, contents: JailContents): string[] {
  const a = ['--root', cfg.chrootDir, '--uid', String(cfg.uid), '--gid', String(cfg.gid)];
  if (cfg.netns !== undefined) a.push('--netns', cfg.netns);
  a.push('--rlimit', 'nofile', String(cfg.resourceLimits.noFile));
  if (cfg.resourceLimits.fsize !== undefined) a.push('--rlimit', 'fsize', String(cfg.resourceLimits.fsize));
  for (const b of contents.binds) a.push('--ro', b.src, b.dst);
  for (const d of JAIL_FOLDERS) a.push('--dir', d);
  for (const [path, major, minor] of JAIL_DEVICES) a.push('--dev', path, String(major), String(minor));
  if (cfg.newPidNs) a.push('--new-pid-ns', `/${cfg.execFileName}.pid`);
  if (cfg.daemonize) a.push('--daemonize');
  return [...a, '--', ...contents.program];
}

/** The per-mount options (mountinfo's sixth field) of the mount that holds `path` (canonical). */
export function mountOptionsOf(path: string, mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')): string[] {
  let best: { point: string; opts: string[] } | undefined;
  for (const line of mountinfo.split('\n')) {
    const f = line.split(' ');
    const point = (f[4] ?? '').replace(/\\040/g, ' ');
    if (!point || !(path === point || path.startsWith(point === '/' ? '/' : `${point}/`))) continue;
    if (!best || point.length >= best.point.length) best = { point, opts: (f[5] ?? '').split(',') };
  }
  return best?.opts ?? [];
}

/** Creates `dir` and its missing parents; returns the folders it created, deepest last. */
function mkdirs(dir: string): string[] {
  const missing: string[] = [];
  for (let d = dir; !existsSync(d); d = dirname(d)) missing.unshift(d);
  mkdirSync(dir, { recursive: true });
  return missing;
}

export function jailerMain(argv: readonly string[]): number {
  const startUs = process.hrtime.bigint() / 1000n;
  const startCpu = process.cpuUsage();
  const fail = (message: string): number => {
    process.stderr.write(`vireo-jailer: ${message}\n`);
    return 1;
  };
  if (argv.includes('--help') && !argv.slice(0, argv.indexOf('--help')).includes('--')) {
    process.stdout.write(helpText());
    return 0;
  }
  if (argv.includes('--version') && !argv.slice(0, argv.indexOf('--version')).includes('--')) {
    process.stdout.write(`Jailer v${VERSION} (vireo-jailer)\n`);
    return 0;
  }
  /** What this run made, to remove again when a later step fails (deepest last). */
  const created: { path: string; file: boolean }[] = [];
  try {
    const cfg = jailerConfig(argv);
    if (process.getuid?.() !== 0)
      throw new JailerError(
        'vireo-jailer must run as root: it mounts, pivots root, creates device nodes and changes uid',
      );
    if (!existsSync(JAIL_EXEC)) throw new JailerError(`${JAIL_EXEC} does not exist: run npm run build`);
    const cpu = process.cpuUsage(startCpu);
    const vmmArgs = [
      '--id',
      cfg.id,
      '--start-time-us',
      String(startUs),
      '--start-time-cpu-us',
      String(startCpu.user + startCpu.system),
      '--parent-cpu-time-us',
      String(cpu.user + cpu.system),
      ...cfg.extraArgs,
    ];
    const contents = jailContents(cfg.execFileReal, cfg.execFileName, vmmArgs);
    if (existsSync(cfg.chrootDir) && readdirSync(cfg.chrootDir).length > 0)
      throw new JailerError(
        `the jail ${cfg.chrootDir} already exists (a jail id is used once): remove it or pick another id`,
      );
    const mountOpts = mountOptionsOf(cfg.chrootBaseDir);
    if (mountOpts.includes('nodev'))
      throw new JailerError(
        `${cfg.chrootBaseDir} is on a nodev mount: the jail's /dev/kvm would not open; pick a --chroot-base-dir elsewhere`,
      );
    if (contents.copy && mountOpts.includes('noexec'))
      throw new JailerError(`${cfg.chrootBaseDir} is on a noexec mount: the exec file copied there would not run`);
    const cgroups = planCgroups(cfg.cgroups, cfg.cgroupVersion, cfg.parentCgroup, cfg.id);
    created.push(...mkdirs(cfg.chrootDir).map((path) => ({ path, file: false })));
    if (contents.copy) {
      const dst = cfg.chrootDir + contents.copy.dst;
      copyFileSync(contents.copy.src, dst);
      created.push({ path: dst, file: true });
    }
    if (cgroups) applyCgroups(cgroups, process.pid);
    created.length = 0; // from here on the jail is jail-exec's
    execve(JAIL_EXEC, [JAIL_EXEC, ...jailExecArgv(cfg, contents)], []);
  } catch (e) {
    for (const { path, file } of created.reverse()) {
      try {
        if (file) unlinkSync(path);
        else rmdirSync(path);
      } catch {
        // leave what cannot be removed
      }
    }
    if (e instanceof VireoError) return fail(e.message);
    return fail(e instanceof Error ? e.message : String(e));
  }
}
