/**
 * A Debian root file system image (ext4) for vireo's guests: `debootstrap --variant=minbase` with
 * systemd and a few tools, the guest kit kernel's modules, a serial console with autologin, a marker
 * line on the console once systemd reaches multi-user.target, and the guest agent (src/kit/agent.ts)
 * with a systemd unit. The image is written by `mke2fs -d` from a directory tree: no loop device,
 * nothing is mounted on the host (debootstrap itself mounts /proc and /sys inside its target while it
 * installs). Boot it with the kit's kernel
 * and initramfs and `root=/dev/vda` on a virtio disk. Cached under cacheRoot()/rootfs/<key>/.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  accessSync,
  chmodSync,
  constants,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { cacheRoot } from '../common/paths.js';
import { AGENT_GUEST_PATH, agentBinary } from './agent.js';
import { type KitOptions, prepareKit } from './kit.js';
import { rootfsFiles } from './rootfs-config.js';
import { KitError, type ProgressFn, publishDir, readJson, runTool, scratchDirFor } from './util.js';

export const ROOTFS_SUITE = 'bookworm';
/** Bump when what a build produces changes, so cached images are rebuilt. 2: the guest agent and its unit. */
export const ROOTFS_FORMAT = 2;
export const ROOTFS_DEFAULT_MIB = 1024;
export const ROOTFS_LABEL = 'vireo-root';
/** Added to minbase (their dependencies come along). fio is left out: it pulls in python3 and ceph's libraries. */
export const ROOTFS_PACKAGES = [
  'systemd',
  'systemd-sysv',
  'udev',
  'dbus',
  'kmod',
  'iproute2',
  'iputils-ping',
  'procps',
  'netcat-openbsd',
  'socat',
  'iperf3',
] as const;
export { ROOTFS_HOSTNAME, ROOTFS_MARKER } from './rootfs-config.js';

export interface Rootfs {
  /** The ext4 image (sparse). Boot a copy, or open it read-only: it is the cached original. */
  image: string;
  /** The kit kernel whose modules it carries, its initramfs, and `uname -r`. */
  kernel: string;
  initrd: string;
  kernelVersion: string;
  /** The cache directory holding the image and rootfs.json. */
  dir: string;
  key: string;
  suite: string;
  sizeMiB: number;
  /** Every installed Debian package. */
  packages: { name: string; version: string }[];
  /** False when this call built it. */
  cached: boolean;
}

export interface RootfsOptions extends KitOptions {
  /** Rebuild even when a cached image exists. */
  force?: boolean;
  /** Size of the file system (default 1024 MiB; the file is sparse). */
  sizeMiB?: number;
}

interface RootfsManifest {
  format: number;
  key: string;
  suite: string;
  mirror: string;
  kernelVersion: string;
  sizeMiB: number;
  packages: { name: string; version: string }[];
  created: string;
  buildSeconds: number;
}

const IMAGE = 'rootfs.ext4';
const MANIFEST = 'rootfs.json';
const MiB = 1048576;

function validRootfs(dir: string, key: string): RootfsManifest | undefined {
  const m = readJson<RootfsManifest>(join(dir, MANIFEST));
  if (!m || m.format !== ROOTFS_FORMAT || m.key !== key) return undefined;
  try {
    return statSync(join(dir, IMAGE)).size === m.sizeMiB * MiB ? m : undefined;
  } catch {
    return undefined;
  }
}

/** The Debian mirror apt uses for the suite (deb822 .sources or one-line lists), else deb.debian.org. */
export function debianMirror(suite = ROOTFS_SUITE): string {
  const files = ['/etc/apt/sources.list'];
  try {
    for (const f of readdirSync('/etc/apt/sources.list.d').sort()) files.push(join('/etc/apt/sources.list.d', f));
  } catch {
    // no directory
  }
  for (const f of files) {
    let text: string;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const field = (k: string) =>
          stanza
            .match(new RegExp(`^${k}:\\s*(.+)$`, 'mi'))?.[1]
            ?.trim()
            .split(/\s+/) ?? [];
        if (!field('Types').includes('deb') || !field('Suites').includes(suite)) continue;
        if (!field('Components').includes('main')) continue;
        const uri = field('URIs').find((u) => /^https?:\/\//.test(u));
        if (uri) return uri.replace(/\/+$/, '');
      }
    } else if (f.endsWith('.list')) {
      for (const line of text.split('\n')) {
        const m = line.match(/^\s*deb\s+(?:\[[^\]]*\]\s+)?(https?:\/\/\S+)\s+(\S+)\s+(.*)$/);
        if (m && m[2] === suite && m[3]!.split(/\s+/).includes('main')) return m[1]!.replace(/\/+$/, '');
      }
    }
  }
  return 'http://deb.debian.org/debian';
}

/** A tool's path on PATH or in the sbin directories (which a non-login root shell may lack), else the bare name. */
function toolPath(tool: string): string {
  for (const d of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']) {
    if (!d.startsWith('/')) continue;
    try {
      accessSync(join(d, tool), constants.X_OK);
      return join(d, tool);
    } catch {
      // not here
    }
  }
  return tool;
}
const onPath = (tool: string): boolean => toolPath(tool) !== tool;
const sbinPath = (): string => [process.env.PATH ?? '/usr/bin:/bin', '/usr/sbin', '/sbin'].join(':');

/** Installs debootstrap and e2fsprogs when missing, as scripts/setup.sh installs Debian packages. */
async function ensureTools(onProgress?: ProgressFn): Promise<void> {
  const need: string[] = [];
  if (!onPath('debootstrap')) need.push('debootstrap');
  if (!onPath('mke2fs') || !onPath('e2fsck') || !onPath('debugfs')) need.push('e2fsprogs');
  if (process.getuid?.() !== 0)
    throw new KitError('building the root file system needs root: debootstrap installs packages into a chroot');
  if (need.length === 0) return;
  onProgress?.({ step: 'update', message: `installing ${need.join(', ')}` });
  await runTool('apt-get', ['update', '-qq'], { install: 'apt' });
  await runTool('apt-get', ['install', '-y', '-qq', ...need], {
    env: { DEBIAN_FRONTEND: 'noninteractive' },
    install: 'apt',
  });
}

/** Unmounts whatever a killed debootstrap left mounted under `dir` (proc, sys), so it can be removed. */
async function unmountUnder(dir: string): Promise<void> {
  const mounts = readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => (l.split(' ')[1] ?? '').replace(/\\040/g, ' '))
    .filter((p) => p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await runTool('umount', ['-l', m], { install: 'mount' });
}

async function removeTree(dir: string): Promise<void> {
  await unmountUnder(dir);
  rmSync(dir, { recursive: true, force: true });
}

/** debootstrap, its lines summarised as progress (a line per phase and every 25 packages). */
function debootstrap(args: readonly string[], log: string, onProgress?: ProgressFn): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(toolPath('debootstrap'), args, {
      // debootstrap runs chroot and friends from the sbin directories.
      env: { ...process.env, PATH: sbinPath(), LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    const counts = new Map<string, number>();
    let total = 0;
    let rest = '';
    const onData = (b: Buffer): void => {
      const parts = (rest + b.toString('utf8')).split('\n');
      rest = parts.pop() ?? '';
      for (const l of parts) {
        lines.push(l);
        // Package lines name a package and its version ("I: Retrieving libc6 2.36-9+deb12u10").
        const m = l.match(
          /^I: (Retrieving|Extracting|Unpacking|Configuring) \S+ \S+$|^I: (Extracting|Unpacking|Configuring) \S+\.\.\.$/,
        );
        if (!m) {
          if (/^I: (Resolving|Checking|Installing|Base system)/.test(l))
            onProgress?.({ step: 'extract', message: `debootstrap: ${l.slice(3).replace(/\.\.\.$/, '')}` });
          continue;
        }
        const phase = (m[1] ?? m[2])!;
        const n = (counts.get(phase) ?? 0) + 1;
        counts.set(phase, n);
        if (phase === 'Retrieving') total = n;
        if (n === 1 || n % 25 === 0)
          onProgress?.({
            step: phase === 'Retrieving' ? 'download' : 'extract',
            message: `debootstrap: ${phase.toLowerCase()} packages (${phase === 'Retrieving' ? n : `${n} of ~${total}`})`,
          });
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => reject(new KitError(`debootstrap: ${e.message}`, { cause: e })));
    child.on('close', (code, signal) => {
      writeFileSync(log, `${lines.join('\n')}\n${rest}`);
      if (code === 0) return resolve();
      const why = [...lines, rest].filter((l) => /^E: |^W: Failure/.test(l)).pop() ?? lines.at(-1) ?? '';
      reject(new KitError(`debootstrap failed (${signal ?? `exit ${code}`}): ${why.trim()} (log: ${log})`));
    });
  });
}

/** The kit kernel's modules into the tree, with depmod's indexes made inside it. */
async function installModules(root: string, modulesDir: string, kernelVersion: string): Promise<void> {
  const lib = lstatSync(join(root, 'lib')).isSymbolicLink() ? join(root, 'usr', 'lib') : join(root, 'lib');
  const dest = join(lib, 'modules', kernelVersion);
  rmSync(dest, { recursive: true, force: true });
  cpSync(modulesDir, dest, { recursive: true });
  await runTool(toolPath('chroot'), [root, '/sbin/depmod', '-a', kernelVersion], { install: 'coreutils' });
  if (!existsSync(join(dest, 'modules.dep'))) throw new KitError(`depmod made no modules.dep in ${dest}`);
}

/** Writes the files of rootfs-config.ts and the links that enable or mask units. */
function configure(root: string, info: Record<string, string>): void {
  for (const f of rootfsFiles(info)) {
    const p = join(root, f.path);
    mkdirSync(join(p, '..'), { recursive: true });
    rmSync(p, { force: true });
    if ('link' in f) symlinkSync(f.link, p);
    else writeFileSync(p, f.text, { mode: f.mode ?? 0o644 });
  }
  // root: no password (the consoles log in by themselves; this also allows a login at a prompt).
  const shadow = join(root, 'etc', 'shadow');
  writeFileSync(shadow, readFileSync(shadow, 'utf8').replace(/^root:[^:]*:/m, 'root::'), { mode: 0o640 });
  // No package files or lists in the image.
  for (const d of ['var/cache/apt/archives', 'var/lib/apt/lists'])
    for (const f of readdirSync(join(root, d)))
      if (f !== 'partial' && f !== 'lock') rmSync(join(root, d, f), { recursive: true, force: true });
}

async function installedPackages(root: string): Promise<{ name: string; version: string }[]> {
  const { stdout } = await runTool(
    'dpkg-query',
    ['--admindir', join(root, 'var/lib/dpkg'), '-W', '-f', `\${Package}\t\${Version}\n`],
    { install: 'dpkg' },
  );
  return stdout
    .split('\n')
    .filter((l) => l.includes('\t'))
    .map((l) => {
      const [name, version] = l.split('\t');
      return { name: name!, version: version! };
    });
}

/** Builds (or finds cached) the Debian root file system image for the kit's kernel. */
export async function prepareRootfs(opts: RootfsOptions = {}): Promise<Rootfs> {
  const { onProgress } = opts;
  const sizeMiB = opts.sizeMiB ?? ROOTFS_DEFAULT_MIB;
  if (!Number.isSafeInteger(sizeMiB) || sizeMiB < 512 || sizeMiB > 1048576)
    throw new KitError(`root file system size ${sizeMiB} MiB: use an integer from 512 to 1048576`);
  const kit = await prepareKit(opts);
  const kernelPackage = kit.packages.find((p) => p.name.startsWith('linux-image-'));
  const packages = [...ROOTFS_PACKAGES].sort();
  const agent = agentBinary();
  const agentHash = createHash('sha256').update(readFileSync(agent)).digest('hex');
  const key = createHash('sha256')
    .update(
      JSON.stringify([ROOTFS_FORMAT, ROOTFS_SUITE, packages, kit.kernelVersion, kernelPackage, sizeMiB, agentHash]),
    )
    .digest('hex')
    .slice(0, 12);
  const areaDir = join(opts.cacheDir ?? cacheRoot(), 'rootfs');
  const finalDir = join(areaDir, `${ROOTFS_SUITE}-${kit.kernelVersion}-${key}`);
  const result = (m: RootfsManifest, cached: boolean): Rootfs => ({
    image: join(finalDir, IMAGE),
    kernel: kit.kernel,
    initrd: kit.initrd,
    kernelVersion: kit.kernelVersion,
    dir: finalDir,
    key,
    suite: m.suite,
    sizeMiB: m.sizeMiB,
    packages: m.packages,
    cached,
  });
  const existing = validRootfs(finalDir, key);
  if (existing && !opts.force) {
    onProgress?.({ step: 'cached', message: `root file system ${key} is cached in ${finalDir}` });
    return result(existing, true);
  }

  const t0 = Date.now();
  await ensureTools(onProgress);
  mkdirSync(areaDir, { recursive: true });
  // Scratch and set-aside directories of killed builds (over an hour old).
  for (const n of readdirSync(areaDir)) {
    if (!n.includes('.tmp-') && !n.includes('.old-')) continue;
    const age = Date.now() - (statSync(join(areaDir, n), { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
    if (age > 3600_000) await removeTree(join(areaDir, n));
  }
  const mirror = debianMirror();
  const scratch = scratchDirFor(finalDir);
  const root = join(scratch, 'root');
  const image = join(scratch, IMAGE);
  try {
    onProgress?.({
      step: 'resolve',
      message: `debootstrap ${ROOTFS_SUITE} (minbase + ${packages.length}) from ${mirror}`,
    });
    const args = [`--variant=minbase`, `--include=${packages.join(',')}`, ROOTFS_SUITE, root, mirror];
    await debootstrap(args, join(areaDir, 'debootstrap.log'), onProgress);
    onProgress?.({ step: 'modules', message: `installing the modules of Linux ${kit.kernelVersion} (depmod)` });
    await installModules(root, kit.modulesDir, kit.kernelVersion);
    onProgress?.({ step: 'extract', message: 'configuring: hostname, fstab, serial autologin, marker unit' });
    const created = new Date().toISOString();
    configure(root, { key, suite: ROOTFS_SUITE, kernel: kit.kernelVersion, format: String(ROOTFS_FORMAT), created });
    cpSync(agent, join(root, AGENT_GUEST_PATH));
    chmodSync(join(root, AGENT_GUEST_PATH), 0o755);
    const installed = await installedPackages(root);
    await unmountUnder(root);
    const used = Number((await runTool('du', ['-sxm', root])).stdout.split('\t')[0]);
    if (used > sizeMiB * 0.9)
      throw new KitError(`the root file system holds ${used} MiB: too much for ${sizeMiB} MiB (use a larger size)`);
    onProgress?.({ step: 'extract', message: `creating ${sizeMiB} MiB ext4 image from ${used} MiB (mke2fs -d)` });
    await runTool(
      toolPath('mke2fs'),
      ['-q', '-F', '-t', 'ext4', '-L', ROOTFS_LABEL, '-E', 'root_owner=0:0', '-d', root, image, `${sizeMiB}M`],
      { install: 'e2fsprogs' },
    );
    onProgress?.({ step: 'extract', message: 'checking the image (e2fsck -fn)' });
    await runTool(toolPath('e2fsck'), ['-fn', image], { install: 'e2fsprogs' });
    rmSync(root, { recursive: true, force: true });
    const manifest: RootfsManifest = {
      format: ROOTFS_FORMAT,
      key,
      suite: ROOTFS_SUITE,
      mirror,
      kernelVersion: kit.kernelVersion,
      sizeMiB,
      packages: installed,
      created,
      buildSeconds: Math.round((Date.now() - t0) / 1000),
    };
    writeFileSync(join(scratch, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
    publishDir(scratch, finalDir, (d) =>
      opts.force ? readJson<RootfsManifest>(join(d, MANIFEST))?.created === created : !!validRootfs(d, key),
    );
    onProgress?.({ step: 'ready', message: `root file system ready: ${join(finalDir, IMAGE)}` });
    return result(validRootfs(finalDir, key) ?? manifest, false);
  } catch (e) {
    await removeTree(scratch);
    throw e;
  }
}
