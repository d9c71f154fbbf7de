/** Build helpers for tests: compile C probes and guest images with the host toolchain, cached by content. */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const guestSrcDir = join(repoRoot, 'test', 'guests');
export const buildDir = join(process.env.VIREO_BUILD_DIR ?? join(tmpdir(), 'vireo-test-build'));

export function compileAndRunC(name: string, source: string): string {
  mkdirSync(buildDir, { recursive: true });
  const hash = createHash('sha256').update(source).digest('hex').slice(0, 12);
  const src = join(buildDir, `${name}-${hash}.c`);
  const exe = join(buildDir, `${name}-${hash}`);
  if (!existsSync(exe)) {
    writeFileSync(src, source);
    execFileSync('gcc', ['-O0', '-o', exe, src], { stdio: ['ignore', 'inherit', 'inherit'] });
  }
  return execFileSync(exe, { encoding: 'utf8' });
}

export function readText(path: string): string {
  return readFileSync(path, 'utf8');
}
