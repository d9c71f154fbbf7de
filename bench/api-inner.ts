/**
 * The API benchmarks (suite `api`), vireo against QEMU's QMP in the same run:
 * (a) process start → the control socket answers: `vireo-firecracker --api-sock S` until `GET /`
 *     on S has its response; `qemu-system-x86_64 -S -qmp unix:S,server=on,wait=off` until the QMP
 *     greeting has come and `qmp_capabilities` is answered. Runs are interleaved, after a warm-up each.
 * (b) one request's latency on a kept-alive connection: `GET /machine-config` against QMP's
 *     `query-status`, many in a row; median and p99.
 * Usage: node api-inner.js [QEMU_PATH]. Prints one "@bench {json}" line on stdout.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { median } from './util.js';

const START_RUNS = Number(process.env.VIREO_BENCH_API_START_RUNS ?? 10);
const REQUESTS = Number(process.env.VIREO_BENCH_API_REQUESTS ?? 2000);
const TIMEOUT_MS = 30_000;
const FIRECRACKER = fileURLToPath(new URL('../../bin/firecracker.js', import.meta.url));
const qemuPath = process.argv[2];

const percentile = (xs: readonly number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))] as number;
};

/** A connection that hands out what arrives as complete replies, one at a time. */
class Conn {
  private buf = '';
  private waiter: (() => void) | undefined;
  private closed: Error | undefined;
  constructor(readonly sock: Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.buf += d;
      this.waiter?.();
    });
    const end = (e?: Error): void => {
      this.closed = e ?? new Error('connection closed');
      this.waiter?.();
    };
    sock.on('error', end);
    sock.on('close', () => end());
  }
  /** Waits until `take` finds a complete reply at the start of the buffer (its length), and returns it. */
  async next(take: (buf: string) => number): Promise<string> {
    for (;;) {
      const n = take(this.buf);
      if (n > 0) {
        const out = this.buf.slice(0, n);
        this.buf = this.buf.slice(n);
        return out;
      }
      if (this.closed) throw this.closed;
      await new Promise<void>((r) => {
        this.waiter = r;
      });
      this.waiter = undefined;
    }
  }
}

/** Length of one complete HTTP/1.1 response at the start of buf (0: not complete yet). */
function httpReply(buf: string): number {
  const h = buf.indexOf('\r\n\r\n');
  if (h < 0) return 0;
  const m = /\r\ncontent-length:\s*(\d+)/i.exec(buf.slice(0, h));
  const len = h + 4 + (m ? Number(m[1]) : 0);
  return buf.length >= len ? len : 0;
}

/** Length of one QMP reply line ("return" or "error"; events are skipped by the caller) at the start of buf. */
function qmpLine(buf: string): number {
  const i = buf.indexOf('\n');
  return i < 0 ? 0 : i + 1;
}

/** Connects to a Unix socket, retrying (every 0.2 ms) while it does not exist or refuses. */
async function connectWhenUp(path: string, child: ChildProcess, t0: number): Promise<Conn> {
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`the process ended (${child.exitCode ?? child.signalCode}) before its socket served`);
    if (performance.now() - t0 > TIMEOUT_MS) throw new Error(`no socket at ${path} after ${TIMEOUT_MS} ms`);
    const s = await new Promise<Socket | undefined>((res) => {
      const sock = connect(path);
      sock.once('connect', () => res(sock));
      sock.once('error', () => {
        sock.destroy();
        res(undefined);
      });
    });
    if (s) return new Conn(s);
    await sleep(0.2);
  }
}

async function qmpReply(c: Conn): Promise<string> {
  for (;;) {
    const line = await c.next(qmpLine);
    if (!line.includes('"event"')) return line;
  }
}

interface Peer {
  name: string;
  start(sock: string): ChildProcess;
  /** The first exchange once connected (greeting and capabilities; or GET /). */
  handshake(c: Conn): Promise<void>;
  /** One request and its reply. */
  request(c: Conn): Promise<void>;
}

const vireo: Peer = {
  name: 'vireo-firecracker',
  start: (sock) => spawn(process.execPath, [FIRECRACKER, '--api-sock', sock], { stdio: ['ignore', 'ignore', 'pipe'] }),
  async handshake(c) {
    c.sock.write('GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n');
    const r = await c.next(httpReply);
    if (!r.startsWith('HTTP/1.1 200')) throw new Error(`GET / answered ${r.split('\r\n')[0]}`);
  },
  async request(c) {
    c.sock.write('GET /machine-config HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n');
    const r = await c.next(httpReply);
    if (!r.startsWith('HTTP/1.1 200')) throw new Error(`GET /machine-config answered ${r.split('\r\n')[0]}`);
  },
};

const qemu = (path: string): Peer => ({
  name: 'QEMU QMP',
  start: (sock) =>
    spawn(
      path,
      [
        ...['-accel', 'kvm', '-M', 'microvm', '-m', '128', '-smp', '1', '-S'],
        ...['-display', 'none', '-nodefaults', '-no-user-config'],
        ...['-qmp', `unix:${sock},server=on,wait=off`],
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    ),
  async handshake(c) {
    const greeting = await qmpReply(c);
    if (!greeting.includes('"QMP"')) throw new Error(`no QMP greeting: ${greeting.slice(0, 80)}`);
    c.sock.write('{"execute":"qmp_capabilities"}\n');
    const r = await qmpReply(c);
    if (!r.includes('"return"')) throw new Error(`qmp_capabilities: ${r.slice(0, 80)}`);
  },
  async request(c) {
    c.sock.write('{"execute":"query-status"}\n');
    const r = await qmpReply(c);
    if (!r.includes('"return"')) throw new Error(`query-status: ${r.slice(0, 80)}`);
  },
});

async function ended(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}

/** One start: spawn → answered; then, when asked, `requests` timed requests on the same connection. */
async function startOnce(p: Peer, dir: string, requests: number): Promise<{ readyMs: number; latUs: number[] }> {
  const sock = join(dir, `${p.name.replace(/\W/g, '')}.sock`);
  rmSync(sock, { force: true });
  let stderr = '';
  const t0 = performance.now();
  const child = p.start(sock);
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  try {
    const c = await connectWhenUp(sock, child, t0);
    await p.handshake(c);
    const readyMs = performance.now() - t0;
    const latUs: number[] = [];
    for (let i = 0; i < requests; i++) {
      const t = performance.now();
      await p.request(c);
      latUs.push((performance.now() - t) * 1000);
    }
    c.sock.destroy();
    return { readyMs, latUs };
  } catch (e) {
    throw new Error(
      `${p.name}: ${(e as Error).message}${stderr ? ` (stderr: ${stderr.trim().split('\n').pop()})` : ''}`,
    );
  } finally {
    await ended(child);
  }
}

interface Side {
  readyMs: number[];
  latUs: number[];
  error?: string;
}

const dir = mkdtempSync(join(process.env.VIREO_BENCH_API_DIR ?? tmpdir(), 'vireo-apibench-'));
const peers = [vireo, ...(qemuPath ? [qemu(qemuPath)] : [])];
const sides: Side[] = peers.map(() => ({ readyMs: [], latUs: [] }));
try {
  // Warm-up (page cache, QEMU's first KVM open), then interleaved runs; the last run of each
  // also times the requests.
  for (let run = -1; run < START_RUNS; run++) {
    for (const [i, p] of peers.entries()) {
      const side = sides[i] as Side;
      if (side.error !== undefined) continue;
      try {
        const r = await startOnce(p, dir, run === START_RUNS - 1 ? REQUESTS : 0);
        if (run >= 0) side.readyMs.push(r.readyMs);
        if (r.latUs.length > 0) side.latUs = r.latUs;
      } catch (e) {
        side.error = (e as Error).message;
      }
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
const out = peers.map((p, i) => {
  const s = sides[i] as Side;
  return {
    name: p.name,
    readyMs: s.readyMs.length ? median(s.readyMs) : null,
    readyRuns: s.readyMs,
    // The first requests warm the JIT and caches; they are not the steady state.
    requestMedianUs: s.latUs.length ? median(s.latUs.slice(100)) : null,
    requestP99Us: s.latUs.length ? percentile(s.latUs.slice(100), 99) : null,
    requests: Math.max(0, s.latUs.length - 100),
    error: s.error,
  };
});
process.stdout.write(`@bench ${JSON.stringify({ suite: 'api', results: out })}\n`);
