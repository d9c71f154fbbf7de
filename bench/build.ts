/**
 * Builds what the benchmarks run from source, with the host's gcc: the guests in bench/guests/
 * (assembly) and the C peer bench/pio-loop.c. Outputs go to a temporary directory, cached by the
 * sources' content and the build recipe, so a rerun builds nothing.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root: this file runs from dist/bench/. */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const benchSrcDir = join(repoRoot, 'bench');
export const guestSrcDir = join(benchSrcDir, 'guests');
export const benchBuildDir = process.env.VIREO_BENCH_BUILD_DIR ?? join(tmpdir(), 'vireo-bench-build');

export type BenchGuest =
  /** ELF64, long-mode entry: N `out`s to an unclaimed port, then debug exit. */
  | { name: 'pio64'; n: number }
  /** Multiboot ELF32 whose first instruction is `out %al, $0xf4`. */
  | { name: 'first-insn' }
  /** Multiboot ELF32: prints "ready" on COM1, then halts with interrupts off. */
  | { name: 'idle' };

const COMMON = [
  '-nostdlib',
  '-ffreestanding',
  '-fno-pic',
  '-fno-stack-protector',
  '-fno-asynchronous-unwind-tables',
  '-static',
  '-no-pie',
  '-Wl,--build-id=none',
  '-Wl,--no-warn-rwx-segments',
  '-Wl,-z,noexecstack',
  '-Wl,-n',
];

function gcc(args: string[]): void {
  execFileSync('gcc', args, { stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Build `out` (atomically) unless a file with its content-keyed name exists. */
function cached(prefix: string, inputs: string[], recipe: unknown, build: (tmp: string) => void): string {
  const h = createHash('sha256');
  for (const f of inputs) h.update(f).update(readFileSync(f));
  h.update(JSON.stringify(recipe));
  const out = join(benchBuildDir, `${prefix}-${h.digest('hex').slice(0, 16)}`);
  if (existsSync(out)) return out;
  mkdirSync(benchBuildDir, { recursive: true });
  const tmp = `${out}.tmp${process.pid}`;
  build(tmp);
  renameSync(tmp, out);
  return out;
}

export function buildGuest(g: BenchGuest): string {
  const src = join(guestSrcDir, `${g.name}.S`);
  if (g.name === 'pio64') {
    const ld = join(guestSrcDir, 'link64.ld');
    const args = [...COMMON, '-m64', `-T${ld}`, `-DN=${g.n}`];
    return cached(`guest-pio64-n${g.n}`, [src, ld], args, (tmp) => gcc([...args, '-o', tmp, src]));
  }
  const ld = join(guestSrcDir, 'link32.ld');
  const args = [...COMMON, '-m32', `-T${ld}`];
  return cached(`guest-${g.name}`, [src, ld], args, (tmp) => gcc([...args, '-o', tmp, src]));
}

/** The C peer for the PIO benchmark. */
export function buildPioLoop(): string {
  const src = join(benchSrcDir, 'pio-loop.c');
  const args = ['-O2', '-Wall'];
  return cached('pio-loop', [src], args, (tmp) => gcc([...args, '-o', tmp, src]));
}
