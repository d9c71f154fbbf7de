/** Small helpers shared by the benchmarks: process runs, statistics, /proc readings. */
import { type SpawnSyncReturns, spawn, spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from just before spawning until the process had exited, in nanoseconds. */
  wallNs: number;
}

/** Run a process to completion (blocking), timing it from spawn to exit. */
export function runTimed(cmd: string, args: string[], opts: { timeoutMs: number; env?: NodeJS.ProcessEnv }): RunResult {
  const t0 = process.hrtime.bigint();
  const r: SpawnSyncReturns<string> = spawnSync(cmd, args, {
    encoding: 'utf8',
    timeout: opts.timeoutMs,
    killSignal: 'SIGKILL',
    env: opts.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 16 * 1024 * 1024,
  });
  const t1 = process.hrtime.bigint();
  if (r.error && (r.error as NodeJS.ErrnoException).code !== 'ETIMEDOUT') throw r.error;
  return {
    status: r.status,
    signal: r.signal,
    stdout: r.stdout ?? '',
    stderr: r.stderr ?? '',
    wallNs: Number(t1 - t0),
  };
}

/** The JSON objects a vireo bench script wrote to stderr as "@bench {...}" lines. */
export function benchEvents(stderr: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('@bench ')) continue;
    try {
      out.push(JSON.parse(line.slice(7)) as Record<string, unknown>);
    } catch {
      // not ours
    }
  }
  return out;
}

/** Last few lines of a process's output, for an error message. */
export function tail(text: string, lines = 3): string {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('@bench '))
    .slice(-lines)
    .join(' | ');
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export interface Summary {
  n: number;
  min: number;
  median: number;
  max: number;
}

export function summarize(xs: readonly number[]): Summary {
  return { n: xs.length, min: Math.min(...xs), median: median(xs), max: Math.max(...xs) };
}

/** A long-running child whose output is collected as it arrives. */
export interface LiveChild {
  pid: number;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ status: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves true once `pattern` appears on stdout, false on exit or timeout. */
  waitFor(pattern: string, timeoutMs: number): Promise<boolean>;
  kill(): Promise<void>;
}

export function startLive(cmd: string, args: string[]): LiveChild {
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let done = false;
  const waiters: (() => void)[] = [];
  const poke = () => {
    for (const w of waiters.splice(0)) w();
  };
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    poke();
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<{ status: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.once('error', (e) => {
      err += `\n${e.message}`;
      done = true;
      poke();
      res({ status: null, signal: null });
    });
    child.once('exit', (status, signal) => {
      done = true;
      poke();
      res({ status, signal });
    });
  });
  return {
    pid: child.pid ?? -1,
    stdout: () => out,
    stderr: () => err,
    exited,
    async waitFor(pattern, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (!out.includes(pattern)) {
        if (done || Date.now() >= deadline) return false;
        await new Promise<void>((res) => {
          const t = setTimeout(res, Math.max(1, deadline - Date.now()));
          waiters.push(() => {
            clearTimeout(t);
            res();
          });
        });
      }
      return true;
    },
    async kill() {
      if (!done) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Fields of /proc/<pid>/status given in kB, as bytes. */
export function procStatusKb(pid: number, fields: readonly string[]): Record<string, number> {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const out: Record<string, number> = {};
  for (const f of fields) {
    const m = new RegExp(`^${f}:\\s+(\\d+) kB`, 'm').exec(text);
    if (m) out[f] = Number(m[1]) * 1024;
  }
  return out;
}

/** Bytes of [addr, addr+size) resident in a process, from /proc/<pid>/pagemap (bit 63: present). */
export function residentBytes(pid: number, addr: number, size: number): number {
  const page = 4096;
  const pages = Math.ceil(size / page);
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    const chunkPages = 8192;
    const buf = Buffer.alloc(chunkPages * 8);
    let present = 0;
    for (let p = 0; p < pages; p += chunkPages) {
      const n = Math.min(chunkPages, pages - p);
      const got = readSync(fd, buf, 0, n * 8, (Math.floor(addr / page) + p) * 8);
      for (let i = 0; i + 8 <= got; i += 8) if (((buf[i + 7] as number) & 0x80) !== 0) present++;
    }
    return present * page;
  } finally {
    closeSync(fd);
  }
}

/** Anonymous read-write mappings of a process, from /proc/<pid>/maps. */
export function anonMappings(pid: number): { start: number; size: number }[] {
  const out: { start: number; size: number }[] = [];
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) rw-p [0-9a-f]+ 00:00 0\s*$/.exec(line);
    if (!m) continue;
    const start = Number.parseInt(m[1] as string, 16);
    out.push({ start, size: Number.parseInt(m[2] as string, 16) - start });
  }
  return out;
}
