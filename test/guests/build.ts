/**
 * Builds the test guests from source (test/guests/*.S, *.c) with the host's gcc and ld, into a
 * cache directory keyed by the sources' content. Tests call guestPath(name).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { buildDir, guestSrcDir } from '../support/cc.js';

export type GuestName =
  | 'hello64'
  | 'storm64'
  | 'hostile64'
  | 'flood64'
  | 'user64'
  | 'multiboot'
  | 'aout-kludge'
  | 'modes64'
  | 'pvh'
  | 'blkfault'
  | 'hostile-guest';

interface Recipe {
  sources: string[];
  /** 'elf64': linked for long-mode entry; 'mb32': 32-bit Multiboot ELF; 'raw32': flat binary. */
  kind: 'elf64' | 'mb32' | 'raw32' | 'pvh32';
  /** Compiler flags of this guest's own (C guests: optimisation, no SSE for MMIO). */
  cflags?: string[];
}

const RECIPES: Record<GuestName, Recipe> = {
  hello64: { sources: ['hello64.S'], kind: 'elf64' },
  storm64: { sources: ['storm64.S'], kind: 'elf64' },
  hostile64: { sources: ['hostile64.S'], kind: 'elf64' },
  user64: { sources: ['user64.S'], kind: 'elf64' },
  modes64: { sources: ['modes64.S'], kind: 'elf64' },
  multiboot: { sources: ['multiboot-entry.S', 'multiboot.c'], kind: 'mb32' },
  'aout-kludge': { sources: ['aout-kludge.S'], kind: 'raw32' },
  pvh: { sources: ['pvh.S'], kind: 'pvh32' },
  flood64: { sources: ['flood64.S'], kind: 'elf64' },
  blkfault: { sources: ['multiboot-entry.S', 'blkfault.c'], kind: 'mb32' },
  'hostile-guest': {
    sources: ['hostile-entry.S', 'hostile-guest.c'],
    kind: 'elf64',
    cflags: ['-O2', '-mgeneral-regs-only', '-Wall', '-Wextra'],
  },
};

function sourceHash(recipe: Recipe): string {
  const h = createHash('sha256');
  for (const f of readdirSync(guestSrcDir).sort()) {
    if (/\.(S|c|h|inc|ld)$/.test(f)) h.update(f).update(readFileSync(join(guestSrcDir, f)));
  }
  h.update(JSON.stringify(recipe));
  return h.digest('hex').slice(0, 16);
}

export function guestPath(name: GuestName): string {
  const recipe = RECIPES[name];
  const out = join(buildDir, `guest-${name}-${sourceHash(recipe)}`);
  if (existsSync(out)) return out;
  mkdirSync(buildDir, { recursive: true });
  const tmp = `${out}.tmp${process.pid}`;
  const srcs = recipe.sources.map((s) => join(guestSrcDir, s));
  const common = [
    '-nostdlib',
    '-ffreestanding',
    '-fno-pic',
    '-fno-stack-protector',
    '-fno-asynchronous-unwind-tables',
    `-I${guestSrcDir}`,
  ];
  // ELF images linked flat (-n) at 1 MiB by a linker script; raw32 is a flat binary instead.
  const elf = [
    '-static',
    '-no-pie',
    '-Wl,--build-id=none',
    '-Wl,--no-warn-rwx-segments',
    '-Wl,-z,noexecstack',
    '-Wl,-n',
  ];
  const perKind: Record<Recipe['kind'], string[]> = {
    elf64: ['-m64', ...elf, `-T${join(guestSrcDir, 'link64.ld')}`],
    mb32: ['-m32', '-O2', ...elf, `-T${join(guestSrcDir, 'link32.ld')}`],
    pvh32: ['-m32', ...elf, `-T${join(guestSrcDir, 'pvh.ld')}`],
    raw32: ['-m32', '-static', '-no-pie', '-Wl,--build-id=none', '-Wl,--oformat=binary', '-Wl,-Ttext=0x100000'],
  };
  execFileSync('gcc', [...common, ...perKind[recipe.kind], ...(recipe.cflags ?? []), '-o', tmp, ...srcs], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  renameSync(tmp, out);
  return out;
}

// `node dist/test/guests/build.js NAME...` builds guests and prints their paths (used by scripts/demo.sh).
if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\/dist\//, '/dist/'))) {
  for (const name of process.argv.slice(2)) {
    if (!(name in RECIPES)) {
      process.stderr.write(`unknown guest ${name}; known: ${Object.keys(RECIPES).join(', ')}\n`);
      process.exit(2);
    }
    process.stdout.write(`${guestPath(name as GuestName)}\n`);
  }
}
