/** Shared pieces of the kit: errors, progress reports, running tools, the cache and atomic publishing. */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { VireoError } from '../common/errors.js';

/** Building the guest kit failed (a tool, the Debian mirror, a package's contents). */
export class KitError extends VireoError {
  override name = 'KitError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('VIREO_ERR_KIT', message, options);
  }
}

/** The nested lane (QEMU TCG with AMD SVM) could not run a command to its end. */
export class NestedError extends VireoError {
  override name = 'NestedError';
  /** What the command had written so far, and the outer machine's serial console. */
  readonly output: string;
  readonly console: string;
  constructor(message: string, detail: { output?: string; console?: string } = {}) {
    super('VIREO_ERR_NESTED', message);
    this.output = detail.output ?? '';
    this.console = detail.console ?? '';
  }
}

/** One progress report: a step, a line of text, and byte counts while downloading. */
export interface KitProgress {
  step: 'resolve' | 'update' | 'download' | 'extract' | 'modules' | 'initramfs' | 'cached' | 'ready';
  message: string;
  bytes?: number;
  totalBytes?: number;
}

export type ProgressFn = (p: KitProgress) => void;

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

export function formatProgress(p: KitProgress): string {
  if (p.bytes === undefined) return p.message;
  const total = p.totalBytes ? ` / ${mib(p.totalBytes)} (${Math.floor((100 * p.bytes) / p.totalBytes)}%)` : '';
  return `${mib(p.bytes)}${total} ${p.message}`;
}

/**
 * A progress display on a stream: on a terminal one line rewritten in place (the last one kept),
 * otherwise one plain line per step (byte counts only when a download ends).
 */
export function progressPrinter(
  stream: NodeJS.WriteStream = process.stderr,
  prefix = 'vireo kit',
): ProgressFn & { end(): void } {
  const tty = stream.isTTY === true;
  let last = '';
  let lastDone = '';
  let open = false;
  const fn = (p: KitProgress): void => {
    const line = `${prefix}: ${formatProgress(p)}`;
    if (tty) {
      const width = Math.max(20, (stream.columns || 80) - 1);
      stream.write(`\r\x1b[K${line.length > width ? `${line.slice(0, width - 1)}…` : line}`);
      open = true;
      if (p.step === 'ready' || p.step === 'cached') {
        stream.write('\n');
        open = false;
      }
      return;
    }
    const key = `${p.step}:${p.message}`;
    if (key !== last) stream.write(`${prefix}: ${p.message}\n`);
    last = key;
    const done = p.bytes !== undefined && p.totalBytes !== undefined && p.bytes >= p.totalBytes;
    if (done && lastDone !== key) stream.write(`${line}\n`);
    if (done) lastDone = key;
  };
  return Object.assign(fn, {
    end(): void {
      if (open) stream.write('\n');
      open = false;
    },
  });
}

export interface ToolResult {
  stdout: string;
  stderr: string;
}

/** Runs a tool to completion; a missing tool or a failure is a KitError saying what to do. */
export function runTool(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; install?: string } = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, LC_ALL: 'C', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      const hint = opts.install ? `: install it with 'apt-get install ${opts.install}'` : '';
      reject(new KitError(e.code === 'ENOENT' ? `${cmd} not found${hint}` : `${cmd}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code, signal) => {
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) return resolve({ stdout, stderr });
      const why =
        stderr
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l !== '' && !l.startsWith('W:'))
          .pop() ?? '';
      reject(
        new KitError(
          `${cmd} ${args.join(' ')} failed (${signal ? `signal ${signal}` : `exit ${code}`})${why ? `: ${why}` : ''}`,
        ),
      );
    });
  });
}

/** A fresh scratch directory next to `finalDir` (same file system, so it can be renamed into place). */
export function scratchDirFor(finalDir: string): string {
  const dir = `${finalDir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Moves a completed `scratch` directory to `finalDir` with rename(2), so readers see either the
 * old complete directory or the new complete one. An existing `finalDir` is first renamed aside
 * and then removed. If another process published the same directory meanwhile and `accept` says
 * its copy is good, that copy is kept and ours is dropped.
 */
export function publishDir(scratch: string, finalDir: string, accept: (dir: string) => boolean): void {
  if (existsSync(finalDir)) {
    if (accept(finalDir)) {
      rmSync(scratch, { recursive: true, force: true });
      return;
    }
    const aside = `${finalDir}.old-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      renameSync(finalDir, aside);
    } catch {
      // someone else moved it: fine
    }
    rmSync(aside, { recursive: true, force: true });
  }
  try {
    renameSync(scratch, finalDir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if ((code === 'ENOTEMPTY' || code === 'EEXIST') && accept(finalDir)) {
      rmSync(scratch, { recursive: true, force: true });
      return;
    }
    throw new KitError(`cannot publish ${finalDir}: ${(e as Error).message}`, { cause: e });
  }
}

/** Reads a JSON manifest, or undefined if it is missing or unreadable. */
export function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}
