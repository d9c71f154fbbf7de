/**
 * Debian's packages as the source of vireo's guest and nested-lane kernels: resolving the current
 * kernel ABI package through apt, downloading .debs with `apt-get download` (no installation),
 * unpacking them with `dpkg-deb -x`, and finding kernel modules with their dependency closure.
 *
 * Module dependencies are read from each .ko's `.modinfo` ELF section (`depends=`), which is
 * exactly what `modinfo -F depends` prints, so kmod is not needed on the host.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { KitError, type ProgressFn, runTool } from './util.js';

const APT_LISTS = '/var/lib/apt/lists';
/** Package lists older than this are refreshed (when root) before resolving a kernel. */
export const APT_LISTS_MAX_AGE_MS = 3 * 24 * 3600 * 1000;

const isRoot = (): boolean => process.getuid?.() === 0;

/** Age of the newest apt package list in ms, or undefined if there is none. */
export function aptListsAge(): number | undefined {
  let newest = 0;
  try {
    for (const f of readdirSync(APT_LISTS)) {
      if (!f.includes('_Packages')) continue;
      newest = Math.max(newest, statSync(join(APT_LISTS, f)).mtimeMs);
    }
  } catch {
    return undefined;
  }
  return newest === 0 ? undefined : Date.now() - newest;
}

/** Runs `apt-get update` (as root only; otherwise says how). */
export async function aptUpdate(onProgress?: ProgressFn): Promise<void> {
  if (!isRoot())
    throw new KitError("apt package lists are missing or out of date: run 'apt-get update' as root, then retry");
  onProgress?.({ step: 'update', message: 'apt-get update' });
  await runTool('apt-get', ['update', '-qq'], { install: 'apt' });
}

/** Refreshes the apt lists when they are missing or older than APT_LISTS_MAX_AGE_MS; true if it ran. */
export async function refreshAptListsIfOld(onProgress?: ProgressFn): Promise<boolean> {
  const age = aptListsAge();
  if (age !== undefined && age < APT_LISTS_MAX_AGE_MS) return false;
  if (!isRoot()) return false; // try with what there is; a failed download says what to do
  await aptUpdate(onProgress);
  return true;
}

export interface PackageInfo {
  name: string;
  version: string;
  /** Size of the .deb in bytes (0 when not asked for). */
  size: number;
}

/** `apt-cache show --no-all-versions` of several packages (one call: each costs ~1 s): fields by package. */
export async function showPackages(names: readonly string[]): Promise<Map<string, Map<string, string>>> {
  const { stdout } = await runTool('apt-cache', ['show', '--no-all-versions', ...names], { install: 'apt' });
  const out = new Map<string, Map<string, string>>();
  for (const stanza of stdout.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const m of stanza.matchAll(/^([A-Za-z0-9-]+): ?(.*)$/gm)) fields.set(m[1]!, m[2]!.trim());
    const pkg = fields.get('Package');
    if (pkg && !out.has(pkg)) out.set(pkg, fields);
  }
  for (const n of names) if (!out.has(n)) throw new KitError(`apt-cache show ${n}: no candidate version`);
  return out;
}

const info = (name: string, f: Map<string, string>): PackageInfo => ({
  name,
  version: f.get('Version') ?? '',
  size: Number(f.get('Size') ?? 0),
});

/**
 * The packages a kernel build needs, candidate versions: the ABI package a metapackage depends on
 * (`linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64`, the Depends field that
 * `apt-cache depends` prints, here with its pinned version) and `extra` packages.
 */
export async function resolveKernelPackages(meta: string, extra: readonly string[]): Promise<PackageInfo[]> {
  const shown = await showPackages([meta, ...extra]);
  const dep = shown
    .get(meta)!
    .get('Depends')
    ?.match(/(?:^|[,|]\s*)(linux-image-\d[^\s,(|]*)(?:\s*\(=\s*([^)\s]+)\))?/);
  if (!dep) throw new KitError(`${meta} depends on no linux-image-<abi> package (are the apt lists current?)`);
  const abi: PackageInfo = { name: dep[1]!, version: dep[2] ?? '', size: 0 };
  if (!abi.version) abi.version = (await showPackages([abi.name])).get(abi.name)!.get('Version') ?? '';
  return [abi, ...extra.map((n) => info(n, shown.get(n)!))];
}

/** Fills in the .deb sizes (for download progress). */
export async function withSizes(pkgs: readonly PackageInfo[]): Promise<PackageInfo[]> {
  const shown = await showPackages(pkgs.map((p) => p.name));
  return pkgs.map((p) => ({ ...p, size: Number(shown.get(p.name)?.get('Size') ?? 0) }));
}

function dirBytes(dir: string): number {
  let n = 0;
  for (const f of readdirSync(dir)) {
    try {
      n += statSync(join(dir, f)).size;
    } catch {
      // renamed while listing
    }
  }
  return n;
}

/**
 * Downloads packages (their candidate versions) into `dir` with `apt-get download`, which checks
 * their hashes against the signed lists. Returns each package's .deb path.
 */
export async function downloadPackages(
  pkgs: readonly PackageInfo[],
  dir: string,
  onProgress?: ProgressFn,
): Promise<Map<string, string>> {
  const totalBytes = pkgs.reduce((s, p) => s + p.size, 0);
  const message = `downloading ${pkgs.map((p) => p.name).join(', ')}`;
  onProgress?.({ step: 'download', message, bytes: 0, totalBytes });
  const timer = setInterval(() => {
    onProgress?.({ step: 'download', message, bytes: Math.min(dirBytes(dir), totalBytes), totalBytes });
  }, 250);
  try {
    // As root apt drops to the _apt user, which cannot write a private scratch directory.
    const sandbox = isRoot() ? ['-o', 'APT::Sandbox::User=root'] : [];
    await runTool('apt-get', [...sandbox, '-q', 'download', ...pkgs.map((p) => `${p.name}=${p.version}`)], {
      cwd: dir,
      install: 'apt',
    });
  } finally {
    clearInterval(timer);
  }
  onProgress?.({ step: 'download', message, bytes: totalBytes, totalBytes });
  const files = readdirSync(dir).filter((f) => f.endsWith('.deb'));
  const out = new Map<string, string>();
  for (const p of pkgs) {
    const f = files.find((x) => x.startsWith(`${p.name}_`));
    if (!f) throw new KitError(`apt-get download ${p.name} left no .deb in ${dir}`);
    out.set(p.name, join(dir, f));
  }
  return out;
}

/** Unpacks a .deb's files (not its scripts) under `dest`. */
export async function extractDeb(deb: string, dest: string): Promise<void> {
  await runTool('dpkg-deb', ['-x', deb, dest], { install: 'dpkg' });
}

/** The one file matching `prefix*` in `dir` (e.g. boot/vmlinuz-*). */
export function findOne(dir: string, prefix: string): string {
  const hits = readdirSync(dir).filter((f) => f.startsWith(prefix));
  if (hits.length !== 1)
    throw new KitError(`expected one ${prefix}* in ${dir}, found ${hits.length ? hits.join(', ') : 'none'}`);
  return join(dir, hits[0]!);
}

// --- kernel modules -------------------------------------------------------------------------

/** Module names compare with '-' and '_' equal, as the kernel does. */
export const modName = (n: string): string => n.replace(/-/g, '_');

/** The NUL-separated key=value strings of an ELF64 module's `.modinfo` section. */
export function readModinfo(ko: Uint8Array): Map<string, string[]> {
  const b = Buffer.from(ko.buffer, ko.byteOffset, ko.length);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1)
    throw new KitError('module is not a little-endian ELF64 file (compressed .ko files are not supported)');
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  const shstrndx = b.readUInt16LE(0x3e);
  const sec = (i: number) => {
    const o = shoff + i * shentsize;
    return {
      name: b.readUInt32LE(o),
      offset: Number(b.readBigUInt64LE(o + 0x18)),
      size: Number(b.readBigUInt64LE(o + 0x20)),
    };
  };
  const strtab = sec(shstrndx);
  const out = new Map<string, string[]>();
  for (let i = 0; i < shnum; i++) {
    const s = sec(i);
    const nameEnd = b.indexOf(0, strtab.offset + s.name);
    if (b.toString('latin1', strtab.offset + s.name, nameEnd) !== '.modinfo') continue;
    for (const kv of b.toString('utf8', s.offset, s.offset + s.size).split('\0')) {
      const eq = kv.indexOf('=');
      if (eq <= 0) continue;
      const k = kv.slice(0, eq);
      out.set(k, [...(out.get(k) ?? []), kv.slice(eq + 1)]);
    }
    return out;
  }
  throw new KitError('module has no .modinfo section');
}

export interface KernelModule {
  /** Normalized name (underscores). */
  name: string;
  /** Path relative to the modules directory, e.g. kernel/drivers/virtio/virtio.ko. */
  path: string;
  /** Direct dependencies (normalized names), from `depends=`. */
  depends: string[];
}

/** The modules of one kernel: `lib/modules/<version>` unpacked from its .deb. */
export class ModuleIndex {
  private readonly files = new Map<string, string>();
  private readonly builtin = new Set<string>();

  constructor(readonly dir: string) {
    const walk = (d: string): void => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith('.ko')) this.files.set(modName(e.name.slice(0, -3)), relative(dir, p));
        else if (/\.ko\.(xz|zst|gz)$/.test(e.name))
          throw new KitError(`compressed kernel module ${relative(dir, p)}: this kit handles uncompressed .ko only`);
      }
    };
    walk(join(dir, 'kernel'));
    try {
      for (const line of readFileSync(join(dir, 'modules.builtin'), 'utf8').split('\n')) {
        const base = line.split('/').pop();
        if (base?.endsWith('.ko')) this.builtin.add(modName(base.slice(0, -3)));
      }
    } catch {
      // no list: nothing is known to be built in
    }
  }

  isBuiltin(name: string): boolean {
    return this.builtin.has(modName(name));
  }

  module(name: string): KernelModule {
    const n = modName(name);
    const path = this.files.get(n);
    if (!path) throw new KitError(`kernel module ${name} not found under ${this.dir}`);
    const info = readModinfo(readFileSync(join(this.dir, path)));
    const depends = (info.get('depends') ?? [])
      .flatMap((d) => d.split(','))
      .map((d) => modName(d.trim()))
      .filter((d) => d !== '');
    return { name: n, path, depends };
  }

  /**
   * The modules to load for `names`, dependencies first (depth-first, in the order asked), each
   * once. Built-in modules are skipped; a module that is neither a file nor built in is an error.
   */
  closure(names: readonly string[]): KernelModule[] {
    const out: KernelModule[] = [];
    const done = new Set<string>();
    const visiting = new Set<string>();
    const visit = (name: string, chain: string[]): void => {
      const n = modName(name);
      if (done.has(n)) return;
      if (visiting.has(n)) throw new KitError(`kernel module dependency cycle: ${[...chain, n].join(' → ')}`);
      if (!this.files.has(n) && this.isBuiltin(n)) {
        done.add(n);
        return;
      }
      visiting.add(n);
      const m = this.module(n);
      for (const d of m.depends) visit(d, [...chain, n]);
      visiting.delete(n);
      done.add(n);
      out.push(m);
    };
    for (const n of names) visit(n, []);
    return out;
  }
}

/** `busybox --list-full` of a busybox binary that can run on this host: applet paths like bin/sh. */
export async function busyboxApplets(busybox: string): Promise<string[]> {
  const { stdout } = await runTool(busybox, ['--list-full']);
  const applets = stdout
    .split('\n')
    .map((l) => l.trim().replace(/^\/+/, ''))
    .filter((l) => l !== '' && !l.endsWith('/busybox'));
  if (!applets.includes('bin/sh')) throw new KitError(`${busybox} --list-full lists no bin/sh`);
  return applets;
}
