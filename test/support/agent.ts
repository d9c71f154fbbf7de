/**
 * The guest agent on the host, for tests: built by scripts/build-agent.sh and started with
 * `--listen tcp:127.0.0.1:PORT`, so e2b's SDK (debug mode, `sandboxUrl` pointing at it) or plain HTTP
 * can drive it without a VM.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { repoRoot } from './cc.js';

export const agentBinary = join(repoRoot, 'dist', 'guest', 'vireo-agent');

let built = false;

/** Builds the agent (Go caches it, so a second build is quick). */
export function buildAgent(): string {
  if (!built) {
    execFileSync(join(repoRoot, 'scripts', 'build-agent.sh'), { stdio: ['ignore', 'inherit', 'inherit'] });
    built = true;
  }
  return agentBinary;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface RunningAgent {
  url: string;
  port: number;
  proc: ChildProcess;
  log: () => string;
  stop: () => Promise<void>;
}

/** Starts the agent on a free TCP port, and on `unixSocket` too when given (the vsock code path). */
export async function startAgent(opts: { unixSocket?: string } = {}): Promise<RunningAgent> {
  const bin = buildAgent();
  const port = await freePort();
  const args = ['--listen', `tcp:127.0.0.1:${port}`];
  if (opts.unixSocket) args.push('--listen', `unix:${opts.unixSocket}`);
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  proc.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`agent exited (${proc.exitCode}): ${out}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.status === 204) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`agent did not answer /health: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    port,
    proc,
    log: () => out,
    stop: async () => {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    },
  };
}
