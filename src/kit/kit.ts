/**
 * vireo's default Linux guest, built from Debian's packages: the cloud kernel (its virtio drivers
 * are modules) and an initramfs with busybox, those modules and an /init that prints a banner and
 * starts a shell on the console. Cached by kernel version under ${XDG_CACHE_HOME:-~/.cache}/vireo/kit/.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { cacheRoot } from '../common/paths.js';
import { AGENT_GUEST_PATH, AGENT_KIT_LOG, AGENT_VSOCK_PORT, initrdWithAgent } from './agent.js';
import {
  aptUpdate,
  busyboxApplets,
  downloadPackages,
  extractDeb,
  findOne,
  type KernelModule,
  ModuleIndex,
  type PackageInfo,
  refreshAptListsIfOld,
  resolveKernelPackages,
  withSizes,
} from './debian.js';
import { InitramfsBuilder, outbElf } from './initramfs.js';
import { KitError, type ProgressFn, publishDir, readJson, scratchDirFor } from './util.js';

/** The guest kit's modules (their dependency closure is added, dependencies first). */
export const KIT_MODULES = [
  'virtio',
  'virtio_ring',
  'virtio_mmio',
  // virtio over PCI too, so that the kit also boots under QEMU's pc/q35 machines (vireo itself uses MMIO).
  'virtio_pci',
  'virtio_blk',
  'virtio_net',
  'failover',
  'net_failover',
  'virtio_console',
  'virtio-rng',
  // pvpanic: the kernel reports a panic to the VMM (ACPI QEMU0001 at an I/O port), so a panic is not
  // mistaken for a clean reboot.
  'pvpanic',
  'pvpanic-mmio',
  // A root file system on a virtio disk (root=/dev/vda) needs ext4, which Debian's cloud kernel has
  // built in (with jbd2, mbcache and crc32c), so it is not listed.
  // vsock (AF_VSOCK over virtio) and the memory balloon, for the devices that come next.
  'vsock',
  'vmw_vsock_virtio_transport',
  'virtio_balloon',
  // virtio-fs (a host directory the guest mounts by tag: mount -t virtiofs TAG DIR) over FUSE.
  'fuse',
  'virtiofs',
] as const;

/** Written to port 0x80 by the kit's /init: when it starts, and with the banner. */
export const KIT_POST_INIT = 0x69;
export const KIT_POST_READY = 0x76;
/** The banner's fixed part; the line goes on with kernel=, cpus=, mem=<kB>kB, modules=<loaded>/<all>, uptime=, date=. */
export const KIT_BANNER = 'vireo guest ready';
/** /init's line before it switches to a root file system (root=): `<this> <device> (ro|rw), init <path>`. */
export const KIT_ROOT_SWITCH = 'vireo: switching to root';
/** /init's line when it cannot (`<this>: <why>; starting a shell`); the guest then goes on as without root=. */
export const KIT_ROOT_FAILED = 'vireo: no root file system';

export interface Kit {
  /** The kernel (bzImage). */
  kernel: string;
  /** The initramfs (uncompressed cpio newc): the kit's archive with the guest agent's laid over it. */
  initrd: string;
  /** The kit's own archive, without the agent. */
  baseInitrd: string;
  /** `uname -r` of the kernel, e.g. 6.1.0-56-cloud-amd64. */
  kernelVersion: string;
  /** The kernel's whole lib/modules/<version> tree. */
  modulesDir: string;
  /** The cache directory holding all of the above, kit.json and the kernel's config. */
  dir: string;
  /** Modules /init loads, in order (names). */
  modules: string[];
  /** The Debian packages it was built from. */
  packages: { name: string; version: string }[];
  /** False when this call built it. */
  cached: boolean;
}

export interface KitOptions {
  onProgress?: ProgressFn;
  /** Use the newest cached kit without asking apt (also VIREO_KIT_OFFLINE=1). */
  offline?: boolean;
  /** Instead of cacheRoot(). */
  cacheDir?: string;
}

// --- the cache, shared with the nested lane ---------------------------------------------------

/** What a cached kernel build records in its manifest. */
export interface KernelBuildManifest {
  format: number;
  kernelVersion: string;
  packages: { name: string; version: string }[];
  modules: string[];
  created: string;
}

/** What a concrete build (the kit, the nested lane) puts into its scratch directory. */
export interface KernelBuildSpec {
  /** Cache area: kit/, nested/. */
  area: string;
  /** Manifest file name inside each version's directory. */
  manifest: string;
  format: number;
  /** The metapackage whose dependency names the current ABI package (linux-image-cloud-amd64). */
  metaPackage: string;
  /** Keep the kernel's lib/modules/<version> tree as modules/. */
  keepModules: boolean;
  /** Writes initramfs.cpio into `out`; returns the module names it loads. */
  build(ctx: {
    out: string;
    kernelVersion: string;
    modules: ModuleIndex;
    busybox: string;
    onProgress?: ProgressFn;
  }): Promise<string[]>;
}

export interface CachedBuild {
  dir: string;
  manifest: KernelBuildManifest;
  cached: boolean;
}

const sameVersions = (m: KernelBuildManifest, pkgs: readonly PackageInfo[]): boolean =>
  pkgs.every((p) => m.packages.some((q) => q.name === p.name && q.version === p.version));

function validBuild(spec: KernelBuildSpec, dir: string): KernelBuildManifest | undefined {
  const m = readJson<KernelBuildManifest>(join(dir, spec.manifest));
  if (!m || m.format !== spec.format) return undefined;
  if (!existsSync(join(dir, 'vmlinuz')) || !existsSync(join(dir, 'initramfs.cpio'))) return undefined;
  return m;
}

/** Scratch and set-aside directories left by killed builds (over an hour old) are removed. */
function removeStaleScratch(areaDir: string): void {
  for (const n of readdirSync(areaDir)) {
    if (!n.includes('.tmp-') && !n.includes('.old-')) continue;
    const p = join(areaDir, n);
    try {
      if (Date.now() - statSync(p).mtimeMs > 3600_000) rmSync(p, { recursive: true, force: true });
    } catch {
      // gone already
    }
  }
}

function newestCached(spec: KernelBuildSpec, areaDir: string): CachedBuild | undefined {
  let best: CachedBuild | undefined;
  let names: string[] = [];
  try {
    names = readdirSync(areaDir).filter((n) => !n.includes('.tmp-') && !n.includes('.old-'));
  } catch {
    return undefined;
  }
  for (const n of names) {
    const dir = join(areaDir, n);
    const manifest = validBuild(spec, dir);
    if (manifest && (!best || manifest.created > best.manifest.created)) best = { dir, manifest, cached: true };
  }
  return best;
}

/**
 * The cached build for the current Debian kernel, building it first if it is missing or was made
 * from other package versions. Falls back to the newest cached build when apt cannot answer.
 */
export async function prepareKernelBuild(spec: KernelBuildSpec, opts: KitOptions = {}): Promise<CachedBuild> {
  const { onProgress } = opts;
  const areaDir = join(opts.cacheDir ?? cacheRoot(), spec.area);
  const what = `${spec.area} (${spec.metaPackage})`;
  if (opts.offline || process.env.VIREO_KIT_OFFLINE === '1') {
    const hit = newestCached(spec, areaDir);
    if (!hit) throw new KitError(`no cached ${what} in ${areaDir} and offline: run 'vireo kit' with network access`);
    onProgress?.({ step: 'cached', message: `using cached ${hit.manifest.kernelVersion} (offline)` });
    return hit;
  }
  let updated = false;
  let pkgs: PackageInfo[];
  try {
    updated = await refreshAptListsIfOld(onProgress);
    onProgress?.({ step: 'resolve', message: `resolving ${spec.metaPackage}` });
    pkgs = await resolveKernelPackages(spec.metaPackage, ['busybox-static']);
  } catch (e) {
    const hit = newestCached(spec, areaDir);
    if (!hit) throw e;
    onProgress?.({
      step: 'cached',
      message: `apt cannot resolve ${spec.metaPackage} (${(e as Error).message}); using cached ${hit.manifest.kernelVersion}`,
    });
    return hit;
  }
  const kernelPkg = pkgs[0]!;
  const version = kernelPkg.name.replace(/^linux-image-/, '');
  const finalDir = join(areaDir, version);
  const existing = validBuild(spec, finalDir);
  if (existing && sameVersions(existing, pkgs)) {
    onProgress?.({ step: 'cached', message: `${spec.area} ${version} is cached in ${finalDir}` });
    return { dir: finalDir, manifest: existing, cached: true };
  }

  mkdirSync(areaDir, { recursive: true });
  removeStaleScratch(areaDir);
  const scratch = scratchDirFor(finalDir);
  try {
    const debDir = join(scratch, 'debs');
    mkdirSync(debDir);
    let debs: Map<string, string>;
    try {
      debs = await downloadPackages(await withSizes(pkgs), debDir, onProgress);
    } catch (e) {
      // Lists that name a version the mirror no longer has: refresh once and start over.
      if (updated || process.getuid?.() !== 0) throw e;
      rmSync(scratch, { recursive: true, force: true });
      await aptUpdate(onProgress);
      return prepareKernelBuild(spec, opts);
    }
    onProgress?.({ step: 'extract', message: `unpacking ${kernelPkg.name}` });
    const kroot = join(scratch, 'kernel-deb');
    const broot = join(scratch, 'busybox-deb');
    await extractDeb(debs.get(kernelPkg.name)!, kroot);
    await extractDeb(debs.get('busybox-static')!, broot);
    const vmlinuz = findOne(join(kroot, 'boot'), 'vmlinuz-');
    const kernelVersion = basename(vmlinuz).slice('vmlinuz-'.length);
    renameSync(vmlinuz, join(scratch, 'vmlinuz'));
    const config = join(kroot, 'boot', `config-${kernelVersion}`);
    if (existsSync(config)) renameSync(config, join(scratch, 'config'));
    const modulesPath = join(kroot, 'lib', 'modules', kernelVersion);
    const modules = await spec.build({
      out: scratch,
      kernelVersion,
      modules: new ModuleIndex(modulesPath),
      busybox: join(broot, 'bin', 'busybox'),
      onProgress,
    });
    if (spec.keepModules) renameSync(modulesPath, join(scratch, 'modules'));
    for (const d of [debDir, kroot, broot]) rmSync(d, { recursive: true, force: true });
    const manifest: KernelBuildManifest = {
      format: spec.format,
      kernelVersion,
      packages: pkgs.map((p) => ({ name: p.name, version: p.version })),
      modules,
      created: new Date().toISOString(),
    };
    writeFileSync(join(scratch, spec.manifest), `${JSON.stringify(manifest, null, 2)}\n`);
    publishDir(scratch, finalDir, (d) => {
      const m = validBuild(spec, d);
      return m !== undefined && sameVersions(m, pkgs);
    });
    return { dir: finalDir, manifest, cached: false };
  } catch (e) {
    rmSync(scratch, { recursive: true, force: true });
    throw e;
  }
}

// --- the guest kit ---------------------------------------------------------------------------

/** /init's line once it started the guest agent in the background: `<this> (pid N)`. */
export const KIT_AGENT_STARTED = 'vireo: agent started';

/** The kit's /init (busybox sh). */
export function kitInitScript(kernelVersion: string, modules: readonly KernelModule[]): string {
  return `#!/bin/sh
# /init of vireo's guest kit (generated by vireo, src/kit/kit.ts) for Linux ${kernelVersion}.
# Before the shell it starts the guest agent, when the initramfs has it, in the background on vsock
# port ${AGENT_VSOCK_PORT} (its log: ${AGENT_KIT_LOG}); a root file system (root=) starts its own.
# Kernel command line: vireo.exit=poweroff|reboot|N ends the guest after the banner instead of
# starting a shell; N (0-255) is first written to the debug-exit port 0xf4.
# root=DEV (a path such as /dev/vda, or LABEL=/UUID=) switches to that root file system after the
# banner: it waits up to rootdelay= seconds (default 10) for the device, mounts it with rootfstype=
# (default: probed), rootflags= and ro (the default) or rw, and runs init= (default /sbin/init)
# there. If that fails, one line says why and the guest goes on as without root=.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=linux
outb 128 ${KIT_POST_INIT} 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# Dependencies first; a module whose device is absent still loads, failures are only logged.
m=/lib/modules/${kernelVersion}
n=0
for k in ${modules.map((x) => x.path).join(' ')}; do
  if insmod "$m/$k" 2>>/run/vireo-insmod.log; then n=$((n + 1)); else echo "$k" >>/run/vireo-insmod.failed; fi
done
hostname vireo
ip link set lo up 2>/dev/null
mem=$(sed -n 's/^MemTotal: *\\([0-9]*\\) kB$/\\1/p' /proc/meminfo)
echo "${KIT_BANNER}: kernel=$(uname -r) cpus=$(nproc) mem=\${mem}kB modules=$n/${modules.length} uptime=$(cut -d' ' -f1 /proc/uptime)s date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
outb 128 ${KIT_POST_READY} 2>/dev/null
how= root= rootfstype= rootflags= rootmode=ro rootinit=/sbin/init rootdelay=10
for a in $(cat /proc/cmdline); do
  case "$a" in
    vireo.exit=*) how=\${a#vireo.exit=} ;;
    root=*) root=\${a#root=} ;;
    rootfstype=*) rootfstype=\${a#rootfstype=} ;;
    rootflags=*) rootflags=\${a#rootflags=} ;;
    rootdelay=*) rootdelay=\${a#rootdelay=} ;;
    ro | rw) rootmode=$a ;;
    init=*) rootinit=\${a#init=} ;;
  esac
done
case "$rootdelay" in '' | *[!0-9]*) rootdelay=10 ;; esac
switch_to_root() {
  i=0
  while :; do
    case "$root" in
      LABEL=* | UUID=*) dev=$(findfs "$root" 2>/dev/null) ;;
      *) dev=$root ;;
    esac
    [ -n "$dev" ] && [ -b "$dev" ] && break
    if [ "$i" -ge $((rootdelay * 10)) ]; then
      echo "${KIT_ROOT_FAILED}: device $root did not appear in \${rootdelay}s; starting a shell"
      return 1
    fi
    sleep 0.1
    i=$((i + 1))
  done
  mkdir -p /newroot
  if ! mount \${rootfstype:+-t "$rootfstype"} -o "$rootmode\${rootflags:+,$rootflags}" "$dev" /newroot 2>/run/vireo-mount.log; then
    echo "${KIT_ROOT_FAILED}: cannot mount $dev ($(tail -n 1 /run/vireo-mount.log)); starting a shell"
    return 1
  fi
  if [ ! -e "/newroot$rootinit" ] && [ ! -L "/newroot$rootinit" ]; then
    echo "${KIT_ROOT_FAILED}: $root has no $rootinit; starting a shell"
    umount /newroot
    return 1
  fi
  echo "${KIT_ROOT_SWITCH} $dev ($rootmode), init $rootinit"
  umount /tmp
  for d in dev proc sys run; do
    mount -o move /$d /newroot/$d 2>/dev/null || umount -l /$d 2>/dev/null
  done
  exec switch_root /newroot "$rootinit"
}
[ -n "$root" ] && switch_to_root
case "$how" in
  '') ;;
  poweroff) poweroff -f ;;
  reboot) reboot -f ;;
  *[!0-9]*) echo "vireo: unknown vireo.exit=$how (use poweroff, reboot or 0-255)" ;;
  *) outb 244 "$how"; poweroff -f ;;
esac
if [ -x ${AGENT_GUEST_PATH} ]; then
  ${AGENT_GUEST_PATH} --listen vsock:${AGENT_VSOCK_PORT} --set-clock </dev/null >${AGENT_KIT_LOG} 2>&1 &
  echo "${KIT_AGENT_STARTED} (pid $!)"
fi
setsid cttyhack sh
poweroff -f
`;
}

/** Adds busybox with a symlink per applet, /dev/console, the outb tool and a minimal /etc. */
export async function addBusyboxBase(img: InitramfsBuilder, busybox: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'mnt', 'root', 'etc'])
    img.dir(d, d === 'tmp' ? 0o1777 : d === 'root' ? 0o700 : 0o755);
  img.charDevice('dev/console', 5, 1, 0o600);
  img.file('bin/busybox', readFileSync(busybox), 0o755);
  for (const a of await busyboxApplets(busybox)) if (!img.has(a)) img.symlink(a, '/bin/busybox');
  img.file('bin/outb', outbElf(), 0o755);
  img.file('etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  img.file('etc/group', 'root:x:0:\n');
}

export const KIT_SPEC: KernelBuildSpec = {
  area: 'kit',
  manifest: 'kit.json',
  // 5: virtio_pci, vsock and virtio_balloon modules; /init can switch to a root file system (root=).
  format: 5,
  metaPackage: 'linux-image-cloud-amd64',
  keepModules: true,
  async build({ out, kernelVersion, modules, busybox, onProgress }) {
    onProgress?.({ step: 'modules', message: 'resolving module dependencies' });
    const mods = modules.closure(KIT_MODULES);
    onProgress?.({ step: 'initramfs', message: `building initramfs (busybox, ${mods.length} modules)` });
    const img = new InitramfsBuilder();
    await addBusyboxBase(img, busybox);
    for (const m of mods) img.file(`lib/modules/${kernelVersion}/${m.path}`, readFileSync(join(modules.dir, m.path)));
    img.file('etc/vireo-kit', `kernel=${kernelVersion}\nmodules=${mods.map((m) => m.name).join(',')}\n`);
    img.file('init', kitInitScript(kernelVersion, mods), 0o755);
    writeFileSync(join(out, 'initramfs.cpio'), img.build());
    return mods.map((m) => m.name);
  },
};

/**
 * Builds (or finds cached) vireo's default Linux guest. Its initrd carries the guest agent (built
 * from guest/agent/ when missing or stale) and an /init that starts it, laid over the cached archive.
 */
export async function prepareKit(opts: KitOptions = {}): Promise<Kit> {
  const r = await prepareKernelBuild(KIT_SPEC, opts);
  const baseInitrd = join(r.dir, 'initramfs.cpio');
  const mods = new ModuleIndex(join(r.dir, 'modules')).closure(KIT_MODULES);
  // A kit built before a module joined KIT_MODULES lacks its file: it travels in the agent's overlay
  // (from the kept modules/ tree), so adding a module does not rebuild every cached kit.
  const missing = mods
    .filter((m) => !r.manifest.modules.includes(m.name))
    .map((m) => ({
      path: `lib/modules/${r.manifest.kernelVersion}/${m.path}`,
      data: readFileSync(join(r.dir, 'modules', m.path)),
    }));
  const kit: Kit = {
    kernel: join(r.dir, 'vmlinuz'),
    initrd: initrdWithAgent(baseInitrd, kitInitScript(r.manifest.kernelVersion, mods), missing),
    baseInitrd,
    kernelVersion: r.manifest.kernelVersion,
    modulesDir: join(r.dir, 'modules'),
    dir: r.dir,
    modules: mods.map((m) => m.name),
    packages: r.manifest.packages,
    cached: r.cached,
  };
  if (!r.cached) opts.onProgress?.({ step: 'ready', message: `kit ${kit.kernelVersion} ready in ${kit.dir}` });
  return kit;
}
