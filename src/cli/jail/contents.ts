/**
 * What a jail holds, read from the host: for an ELF exec file, the file (copied in, as Firecracker's
 * jailer does) and the shared libraries `ldd` names; for vireo-firecracker (a Node script), Node's
 * binary and its libraries, the package's published files (package.json "files"), the packages its
 * "dependencies" need (resolved as Node resolves them) and the libraries of every native module among
 * them (koffi's). Everything but the copied exec file is bind-mounted read-only at the path Node or the
 * dynamic loader will look for it; nothing else of the host is in the jail.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, realpathSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { JailerError } from './args.js';

/** Where a Node package goes inside the jail. */
export const JAIL_PACKAGE_ROOT = '/vireo';

export interface Bind {
  /** Host path (canonical). */
  src: string;
  /** Path inside the jail. */
  dst: string;
}

export interface JailContents {
  binds: Bind[];
  /** A host file to copy to this path inside the jail (Firecracker copies the exec file). */
  copy?: Bind;
  /** argv[0] is the program, a path inside the jail. */
  program: string[];
}

/** The first bytes of a file say what kind of program it is. */
export function programKind(path: string): 'elf' | 'node' {
  const head = Buffer.alloc(256);
  const fd = openSync(path, 'r');
  let n: number;
  try {
    n = readSync(fd, head, 0, head.length, 0);
  } finally {
    closeSync(fd);
  }
  if (n >= 4 && head.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return 'elf';
  const first = head.subarray(0, n).toString('latin1').split('\n')[0] ?? '';
  if (/^#!.*\bnode\b/.test(first)) return 'node';
  throw new JailerError(`${path} is neither an ELF executable nor a Node script (#!/usr/bin/env node)`);
}

/**
 * The absolute paths of the shared objects an ELF file loads (its interpreter included). A library the
 * host lacks is an error for a program (`strict`), and skipped for a native module: one that cannot load
 * here (koffi ships a musl build beside the glibc one) is not loaded in the jail either.
 */
export function sharedLibraries(file: string, strict = true): string[] {
  let out: string;
  try {
    out = execFileSync('ldd', [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const text = `${(e as { stdout?: string }).stdout ?? ''}${(e as { stderr?: string }).stderr ?? ''}`;
    if (/not a dynamic executable|statically linked/.test(text)) return [];
    throw new JailerError(`cannot list the shared libraries of ${file} (ldd): ${text.trim() || String(e)}`);
  }
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    if (/not found/.test(line) && strict)
      throw new JailerError(`${file} needs a library the host lacks: ${line.trim()}`);
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1] as string);
  }
  return libs;
}

interface PackageJson {
  name?: string;
  files?: unknown;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

const readPackage = (dir: string): PackageJson =>
  JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as PackageJson;

/** The nearest folder at or above `start` with a package.json. */
export function packageRoot(start: string): string {
  for (let dir = dirname(start); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) throw new JailerError(`${start} is not inside a Node package (no package.json above it)`);
  }
}

/**
 * The package folders (relative to `root`, as Node finds them: `node_modules/<name>` in the folder of
 * the package that needs it or the nearest one above) of `root`'s dependencies and theirs. Optional
 * dependencies that are not installed (another platform's koffi build) are left out; a missing required
 * one is an error.
 */
export function dependencyFolders(root: string): string[] {
  const found = new Set<string>();
  const visit = (pkgDir: string): void => {
    const pkg = readPackage(join(root, pkgDir));
    const wanted: [string, boolean][] = [
      ...Object.keys(pkg.dependencies ?? {}).map((n): [string, boolean] => [n, true]),
      ...Object.keys(pkg.optionalDependencies ?? {}).map((n): [string, boolean] => [n, false]),
    ];
    for (const [name, required] of wanted) {
      let dir: string | undefined;
      for (let d = pkgDir; ; d = dirname(d)) {
        const candidate = join(d, 'node_modules', name);
        if (existsSync(join(root, candidate, 'package.json'))) {
          dir = candidate;
          break;
        }
        if (d === '.' || d === '') break;
      }
      if (dir === undefined) {
        if (required)
          throw new JailerError(`${name} (needed by ${pkg.name ?? pkgDir}) is not installed: run npm install`);
        continue;
      }
      if (found.has(dir)) continue;
      found.add(dir);
      visit(dir);
    }
  };
  visit('.');
  // A package inside another's folder (node_modules/a/node_modules/b) comes with that folder's bind.
  const all = [...found].sort();
  return all.filter((d) => !all.some((o) => o !== d && d.startsWith(`${o}/`)));
}

/** Native modules and shared objects under `dir` (koffi's .node files, vireo's dist/native/*.so). */
function nativeObjects(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) nativeObjects(p, out);
    else if (e.isFile() && /\.(node|so)$/.test(e.name)) out.push(p);
  }
  return out;
}

function addLibraries(binds: Bind[], file: string, strict = true): void {
  for (const lib of sharedLibraries(file, strict)) {
    if (binds.some((b) => b.dst === lib)) continue;
    binds.push({ src: realpathSync(lib), dst: lib });
  }
}

/** The jail of a Node script: Node, the script's package as published, its dependencies, their libraries. */
function nodeContents(execFileReal: string, vmmArgs: readonly string[]): JailContents {
  const root = packageRoot(execFileReal);
  const pkg = readPackage(root);
  if (!Array.isArray(pkg.files) || !pkg.files.every((f) => typeof f === 'string'))
    throw new JailerError(
      `${join(root, 'package.json')} has no "files" list: the jail would not know what the package needs`,
    );
  const node = realpathSync(process.execPath);
  const binds: Bind[] = [{ src: node, dst: node }];
  addLibraries(binds, node);
  const published = ['package.json', ...(pkg.files as string[])];
  const script = relative(root, execFileReal);
  if (!published.some((f) => script === f || script.startsWith(`${f}/`)))
    throw new JailerError(`${execFileReal} is not among the files ${root}/package.json publishes`);
  const trees: string[] = [];
  for (const f of published) {
    const src = join(root, f);
    if (!existsSync(src)) {
      if (f.startsWith('dist')) throw new JailerError(`${src} does not exist: run npm run build`);
      continue;
    }
    binds.push({ src: realpathSync(src), dst: join(JAIL_PACKAGE_ROOT, f) });
    if (statSync(src).isDirectory()) trees.push(src);
  }
  for (const dir of dependencyFolders(root)) {
    const src = realpathSync(join(root, dir));
    binds.push({ src, dst: join(JAIL_PACKAGE_ROOT, dir) });
    trees.push(src);
  }
  for (const t of trees) for (const so of nativeObjects(t)) addLibraries(binds, so, false);
  return { binds, program: [node, join(JAIL_PACKAGE_ROOT, script), ...vmmArgs] };
}

/** What the jail of `execFileReal` holds and the command it runs, `vmmArgs` after the program. */
export function jailContents(execFileReal: string, execFileName: string, vmmArgs: readonly string[]): JailContents {
  if (programKind(execFileReal) === 'node') return nodeContents(execFileReal, vmmArgs);
  const binds: Bind[] = [];
  addLibraries(binds, execFileReal);
  const inJail = `/${execFileName}`;
  return { binds, copy: { src: execFileReal, dst: inJail }, program: [inJail, ...vmmArgs] };
}
