/**
 * vireo's guest agent run on this host for tests, on a Unix socket (`--listen unix:PATH`): built from
 * guest/agent/ (or VIREO_AGENT_SRC) with Go into a temporary directory. Without Go or the source the
 * test fails saying so — it is not skipped.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './cc.js';

let built: string | undefined;

export function agentSource(): string {
  const src = process.env['VIREO_AGENT_SRC'] ?? join(repoRoot, 'guest', 'agent');
  if (!existsSync(join(src, 'go.mod')))
    throw new Error(`the guest agent's source is not at ${src}: merge guest/agent/ or set VIREO_AGENT_SRC`);
  return src;
}

export function buildHostAgent(): string {
  if (built) return built;
  const out = join(mkdtempSync(join(tmpdir(), 'vireo-agent-bin-')), 'vireo-agent');
  const cache = join(tmpdir(), 'vireo-agent-gocache');
  execFileSync('go', ['build', '-trimpath', '-o', out, '.'], {
    cwd: agentSource(),
    env: {
      ...process.env,
      CGO_ENABLED: '0',
      GOCACHE: cache,
      GOPATH: join(cache, 'path'),
      GOPROXY: 'off',
      GOTOOLCHAIN: 'local',
      GOFLAGS: '',
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  built = out;
  return out;
}

export interface HostAgent {
  path: string;
  proc: ChildProcess;
  log(): string;
  stop(): Promise<void>;
}

/** Starts the agent on `path` and waits until it accepts connections. */
export async function startHostAgent(path: string): Promise<HostAgent> {
  const bin = buildHostAgent();
  const proc = spawn(bin, ['--listen', `unix:${path}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  proc.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`the agent exited (${proc.exitCode}): ${out}`);
    const ok = await new Promise<boolean>((r) => {
      const s = connect({ path });
      s.once('connect', () => {
        s.destroy();
        r(true);
      });
      s.once('error', () => r(false));
    });
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`the agent did not listen on ${path}: ${out}`);
    await new Promise((r) => setTimeout(r, 30));
  }
  return {
    path,
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
