/**
 * A client for the Firecracker-compatible API socket, as tools use it (HTTP/1.1 over a Unix socket),
 * and a raw one for what well-behaved clients never send (oversized payloads).
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { repoRoot } from './cc.js';

export interface FcResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  /** The body parsed as JSON (undefined when empty or not JSON). */
  json: unknown;
}

export function fcRequest(socketPath: string, method: string, path: string, body?: unknown): Promise<FcResponse> {
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        socketPath,
        method,
        path,
        headers: {
          Accept: 'application/json',
          ...(payload !== undefined
            ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) }
            : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
      },
    );
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/** Sends raw bytes and returns everything the server sends back until it closes (or `timeoutMs`). */
export function rawExchange(
  socketPath: string,
  chunks: (string | Buffer)[],
  timeoutMs = 3000,
): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const sock = connect(socketPath);
    let text = '';
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      sock.destroy();
      resolve({ text, closed });
    };
    sock.on('data', (d: Buffer) => {
      text += d.toString('utf8');
    });
    sock.on('close', () => finish(true));
    sock.on('error', () => finish(true));
    setTimeout(() => finish(false), timeoutMs).unref();
    sock.on('connect', () => {
      for (const c of chunks) if (!sock.destroyed) sock.write(c);
    });
  });
}

export async function waitForPath(path: string, timeoutMs = 15_000): Promise<void> {
  const t0 = Date.now();
  while (!existsSync(path)) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`${path} did not appear within ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** Waits until a connection to the Unix socket at `path` is accepted (it exists before it listens). */
export async function waitForListening(path: string, timeoutMs = 15_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = connect(path);
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() - t0 > timeoutMs) throw new Error(`nothing listened on ${path} within ${timeoutMs} ms`);
    await sleep(20);
  }
}

export const firecrackerBin = join(repoRoot, 'bin', 'firecracker.js');

/** Whether `unshare --net` works here (root): then TAPs are created in a namespace of the test's own. */
export function canUnshareNet(): boolean {
  if (!existsSync('/dev/net/tun')) return false;
  const r = spawnSync('unshare', ['--net', 'true'], { stdio: 'ignore' });
  return r.status === 0;
}

export interface FirecrackerProcess {
  socket: string;
  pid: number | undefined;
  stdout: () => string;
  stderr: () => string;
  /** Writes to the guest's console (the process's stdin). */
  type(text: string): void;
  exited: Promise<number | null>;
  kill(): void;
}

/** Starts bin/firecracker.js (in a network namespace of its own when `netns`) and waits for its socket. */
export async function startFirecracker(
  args: string[],
  opts: { netns?: boolean; socket?: string; env?: Record<string, string> } = {},
): Promise<FirecrackerProcess> {
  const cmd = opts.netns ? 'unshare' : process.execPath;
  const argv = opts.netns ? ['--net', process.execPath, firecrackerBin, ...args] : [firecrackerBin, ...args];
  const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString('latin1');
  });
  child.stderr.on('data', (b: Buffer) => {
    err += b.toString('latin1');
  });
  const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  if (opts.socket) {
    await Promise.race([
      waitForPath(opts.socket).then(() => waitForListening(opts.socket as string)),
      exited.then((code) => {
        throw new Error(`vireo-firecracker exited (${code}) before its socket appeared: ${err}`);
      }),
    ]);
  }
  return {
    socket: opts.socket ?? '',
    pid: child.pid,
    stdout: () => out,
    stderr: () => err,
    type: (text) => {
      child.stdin.write(text);
    },
    exited,
    kill: () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}
