/**
 * `vireo serve`, THE FAST LAYER: routing and auth of the control plane and of envd traffic, with
 * sandboxes that are real guest agents run on this host (guest/agent/, `--listen unix:PATH`) behind a
 * hybrid vsock stand-in (test/support/agent-fronts.ts), made by a Launcher in place of a boot; the
 * same service code a boot would use (a VM's agent is reached the same way, proven in the nested lane
 * by linux-serve.test.ts). The unmodified e2b SDK (2.51) drives it through its connection options.
 *
 * Proven: a wrong or missing API key → 401 `{code,message}`; a wrong, missing or another sandbox's
 * access token → 401 (Connect's shape for RPCs, envd's for /files); an unknown sandbox → 404 on the
 * control plane, 502 on envd (as E2B's proxy, which the SDK reads as "not running"); each sandbox's
 * traffic reaches only it; metadata/envs kept and returned, list filtered by metadata; timeout kills
 * and removes files; pause/connect; signed URLs; a guest port; vireo's own CLI client.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AuthenticationError, CommandExitError, Sandbox as E2BSandbox, SandboxNotFoundError } from 'e2b';
import { hybridVsockEndpoint } from '../src/agent/connector.js';
import { Sandbox } from '../src/sandbox/sandbox.js';
import { ServeClient } from '../src/serve/client.js';
import { SERVE_ENVD_VERSION } from '../src/serve/control.js';
import { VireoServe } from '../src/serve/server.js';
import type { Launched, Launcher } from '../src/serve/templates.js';
import { hybridVsockFront, unixTarget } from './support/agent-fronts.js';
import { startHostAgent } from './support/agent-host.js';
import { repoRoot } from './support/cc.js';

const root = realpathSync(mkdtempSync(join(tmpdir(), 'vireo-serve-fast-')));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const KEY = 'test-key-0123456789abcdef';
/** Each launched sandbox's directory (the agent's socket, the front's socket, its workdir). */
const dirs = new Map<string, string>();
const agentProcs = new Map<string, ChildProcess>();
let n = 0;

/** A sandbox = a host agent behind a hybrid vsock front, attached as Sandbox.create attaches a VM's. */
const hostLauncher: Launcher = async (req): Promise<Launched> => {
  const dir = join(root, `sb${n++}`);
  mkdirSync(join(dir, 'work'), { recursive: true });
  const agent = await startHostAgent(join(dir, 'agent.sock'));
  const front = await hybridVsockFront(join(dir, 'vsock'), unixTarget(agent.path));
  const sandbox = await Sandbox.attach({
    agent: hybridVsockEndpoint(front.path),
    envs: req.envs,
    metadata: req.metadata,
    workdir: join(dir, 'work'),
    timeoutMs: 0,
  });
  dirs.set(sandbox.sandboxId, dir);
  agentProcs.set(sandbox.sandboxId, agent.proc);
  return {
    sandbox,
    cpuCount: req.template.cpus,
    memoryMB: req.template.memMiB,
    diskSizeMB: 0,
    // The guest stops: its agent's process is stopped, as a paused VM's vCPUs are.
    pause: async () => void agent.proc.kill('SIGSTOP'),
    resume: async () => void agent.proc.kill('SIGCONT'),
    kill: async () => {
      await sandbox.kill();
      await front.close();
      agent.proc.kill('SIGCONT');
      await agent.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
};

let serve: VireoServe;
let url: string;
const conn = () => ({ apiKey: KEY, apiUrl: url, sandboxUrl: url, requestTimeoutMs: 20_000 });

before(async () => {
  serve = await VireoServe.start({
    port: 0,
    apiKey: KEY,
    templates: [
      { name: 'base', kernel: '(host agent)', cpus: 1, memMiB: 256 },
      { name: 'other', kernel: '(host agent)', cpus: 2, memMiB: 512 },
    ],
    launcher: hostLauncher,
    connectTimeoutMs: 3000,
  });
  url = serve.url;
});

after(async () => {
  await serve?.close();
  assert.equal(serve.registry.size, 0);
  for (const [id, p] of agentProcs) assert.notEqual(p.exitCode ?? p.signalCode, null, `sandbox ${id}'s agent stopped`);
  rmSync(root, { recursive: true, force: true });
});

async function api(method: string, path: string, opts: { key?: string | null; body?: unknown } = {}) {
  const headers: Record<string, string> = {};
  if (opts.key !== null) headers['X-API-KEY'] = opts.key ?? KEY;
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(`${url}${path}`, {
    method,
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await r.text();
  return {
    status: r.status,
    body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined,
    headers: r.headers,
  };
}

async function envd(
  id: string,
  path: string,
  init: { token?: string; method?: string; body?: string; port?: number } = {},
) {
  const headers: Record<string, string> = { 'E2b-Sandbox-Id': id, 'Content-Type': 'application/json' };
  if (init.port !== undefined) headers['E2b-Sandbox-Port'] = String(init.port);
  if (init.token !== undefined) headers['X-Access-Token'] = init.token;
  const r = await fetch(`${url}${path}`, { method: init.method ?? 'POST', headers, body: init.body });
  return { status: r.status, text: await r.text() };
}

describe('the control plane and its API key', () => {
  test("no key, a wrong key: 401 with E2B's {code, message}; the right key: 200", async () => {
    for (const key of [null, 'wrong-key-0123456789', `${KEY}x`]) {
      const r = await api('GET', '/v2/sandboxes', { key });
      assert.equal(r.status, 401);
      assert.equal(r.body?.code, 401);
      assert.match(String(r.body?.message), /X-API-KEY/);
    }
    const r = await api('POST', '/v2/sandboxes', { key: 'wrong-key-0123456789', body: { templateID: 'base' } });
    assert.equal(r.status, 401);
    assert.equal(serve.registry.size, 0, 'nothing was created');
    assert.deepEqual((await api('GET', '/v2/sandboxes')).body, []);
  });

  test('the SDK with a wrong key gets AuthenticationError', async () => {
    await assert.rejects(E2BSandbox.create({ ...conn(), apiKey: 'wrong-key-0123456789' }), AuthenticationError);
  });

  test('unknown sandboxes are 404 on the control plane (the SDK: SandboxNotFoundError, kill → false)', async () => {
    for (const [m, p] of [
      ['GET', '/sandboxes/nope'],
      ['DELETE', '/sandboxes/nope'],
      ['POST', '/sandboxes/nope/timeout'],
      ['POST', '/sandboxes/nope/pause'],
      ['POST', '/v2/sandboxes/nope/connect'],
    ] as const) {
      const r = await api(m, p, { body: m === 'POST' ? { timeout: 10 } : undefined });
      assert.equal(r.status, 404, `${m} ${p}`);
      assert.equal(r.body?.code, 404);
    }
    await assert.rejects(E2BSandbox.getInfo('nope', conn()), SandboxNotFoundError);
    assert.equal(await E2BSandbox.kill('nope', conn()), false);
    await assert.rejects(E2BSandbox.connect('nope', conn()), SandboxNotFoundError);
  });

  test('bad requests: an unknown template 404, a bad timeout or metadata 400, an unknown path 404', async () => {
    assert.equal((await api('POST', '/v2/sandboxes', { body: { templateID: 'missing' } })).status, 404);
    assert.equal((await api('POST', '/v2/sandboxes', { body: {} })).status, 400);
    assert.equal((await api('POST', '/v2/sandboxes', { body: { templateID: 'base', timeout: -1 } })).status, 400);
    assert.equal(
      (await api('POST', '/v2/sandboxes', { body: { templateID: 'base', metadata: { a: 1 } } })).status,
      400,
    );
    assert.equal((await api('GET', '/v2/sandboxes?state=exploded')).status, 400);
    assert.equal((await api('GET', '/templates')).status, 404);
    const raw = await fetch(`${url}/v2/sandboxes`, { method: 'POST', headers: { 'X-API-KEY': KEY }, body: '{' });
    assert.equal(raw.status, 400);
    assert.equal(serve.registry.size, 0);
  });
});

describe('two sandboxes through the unmodified SDK', () => {
  let a: E2BSandbox;
  let b: E2BSandbox;
  before(async () => {
    a = await E2BSandbox.create('base', {
      ...conn(),
      metadata: { who: 'a', 'odd key': 'x&y=z' },
      envs: { NAME: 'alpha' },
    });
    b = await E2BSandbox.create('other', {
      ...conn(),
      metadata: { who: 'b' },
      envs: { NAME: 'beta' },
      timeoutMs: 120_000,
    });
  });

  test("create answers what the SDK reads; getInfo keeps metadata, envs are the sandbox's", async () => {
    assert.notEqual(a.sandboxId, b.sandboxId);
    const info = await a.getInfo();
    assert.equal(info.sandboxId, a.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.deepEqual(info.metadata, { who: 'a', 'odd key': 'x&y=z' });
    assert.equal(info.state, 'running');
    assert.equal(info.envdVersion, SERVE_ENVD_VERSION);
    assert.equal(info.cpuCount, 1);
    assert.equal(info.memoryMB, 256);
    assert.ok(info.endAt.getTime() - info.startedAt.getTime() === 300_000, 'the v2 default: 300 s');
    const bi = await b.getInfo();
    assert.equal(bi.endAt.getTime() - bi.startedAt.getTime(), 120_000);
    assert.equal((await a.commands.run('echo $NAME')).stdout, 'alpha\n');
    assert.equal((await b.commands.run('echo $NAME')).stdout, 'beta\n');
  });

  test('commands: streamed output, exit codes, stdin, a background process killed', async () => {
    const chunks: string[] = [];
    const r = await a.commands.run('for i in 1 2 3; do echo l$i; sleep 0.2; done', {
      onStdout: (s) => void chunks.push(s),
    });
    assert.equal(r.stdout, 'l1\nl2\nl3\n');
    assert.ok(chunks.length >= 2, `streamed in ${chunks.length} chunks`);
    await assert.rejects(a.commands.run('echo no >&2; exit 4'), (e: unknown) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.exitCode, 4);
      assert.equal(e.stderr, 'no\n');
      return true;
    });
    const h = await a.commands.run('cat', { background: true, stdin: true });
    await a.commands.sendStdin(h.pid, 'fed\n');
    await a.commands.closeStdin(h.pid);
    assert.equal((await h.wait()).stdout, 'fed\n');
    const bg = await a.commands.run('sleep 30', { background: true });
    assert.ok((await a.commands.list()).some((p) => p.pid === bg.pid));
    assert.equal(await bg.kill(), true);
    await assert.rejects(bg.wait(), CommandExitError);
  });

  test('files through the service: write, read, list', async () => {
    const dir = join(dirs.get(a.sandboxId)!, 'work');
    await a.files.write(join(dir, 'f.txt'), 'through serve');
    assert.equal(await a.files.read(join(dir, 'f.txt')), 'through serve');
    assert.deepEqual(
      (await a.files.list(dir)).map((e) => e.name),
      ['f.txt'],
    );
    assert.equal(readFileSync(join(dir, 'f.txt'), 'utf8'), 'through serve');
  });

  test("a wrong, missing or the other sandbox's access token: 401, never the other sandbox's answer", async () => {
    const tokA = (a as unknown as { envdAccessToken: string }).envdAccessToken;
    const tokB = (b as unknown as { envdAccessToken: string }).envdAccessToken;
    assert.ok(tokA && tokB && tokA !== tokB);
    const list = '/process.Process/List';
    assert.equal((await envd(a.sandboxId, list, { token: tokA, body: '{}' })).status, 200);
    for (const token of [undefined, '', 'wrong', tokB, `${tokA}x`]) {
      const r = await envd(a.sandboxId, list, { token, body: '{}' });
      assert.equal(r.status, 401, `token ${token}`);
      assert.equal(JSON.parse(r.text).code, 'unauthenticated');
      const f = await envd(a.sandboxId, `/files?path=${encodeURIComponent('/etc/hostname')}`, { token, method: 'GET' });
      assert.equal(f.status, 401);
      assert.deepEqual(Object.keys(JSON.parse(f.text)).sort(), ['code', 'message']);
      assert.equal((await envd(a.sandboxId, '/envs', { token, method: 'GET' })).status, 401);
    }
    const envsA = await envd(a.sandboxId, '/envs', { token: tokA, method: 'GET' });
    assert.deepEqual(JSON.parse(envsA.text), { NAME: 'alpha' });
    // The SDK itself, holding b's token under a's id (E2B's own constructor, as in agent-sdk.test).
    type Opts = ConstructorParameters<typeof E2BSandbox>[0];
    class Forged extends E2BSandbox {
      constructor(o: Opts) {
        super(o);
      }
    }
    const forged = new Forged({
      ...conn(),
      sandboxId: a.sandboxId,
      envdAccessToken: tokB,
      envdVersion: SERVE_ENVD_VERSION,
    } as Opts);
    await assert.rejects(forged.commands.run('echo $NAME'), AuthenticationError);
    await assert.rejects(forged.files.read('/etc/hostname'), AuthenticationError);
  });

  test("an unknown sandbox on the envd path: 502 as E2B's proxy, which the SDK reads as not running", async () => {
    const r = await envd('vireo-000000000000', '/process.Process/List', { token: 'x', body: '{}' });
    assert.equal(r.status, 502);
    assert.equal(JSON.parse(r.text).sandboxId, 'vireo-000000000000');
    const bad = await envd(a.sandboxId, '/health', { port: 70000, method: 'GET' });
    assert.equal(bad.status, 400);
  });

  test('list: both, filtered by metadata as the SDK sends it, by state, paginated', async () => {
    const all = await E2BSandbox.list(conn()).nextItems();
    assert.deepEqual(all.map((s) => s.sandboxId).sort(), [a.sandboxId, b.sandboxId].sort());
    const onlyA = await E2BSandbox.list({ ...conn(), query: { metadata: { 'odd key': 'x&y=z' } } }).nextItems();
    assert.deepEqual(
      onlyA.map((s) => s.sandboxId),
      [a.sandboxId],
    );
    assert.deepEqual(onlyA[0]!.metadata, { who: 'a', 'odd key': 'x&y=z' });
    const none = await E2BSandbox.list({ ...conn(), query: { metadata: { who: 'c' } } }).nextItems();
    assert.deepEqual(none, []);
    const pager = E2BSandbox.list({ ...conn(), limit: 1 });
    const p1 = await pager.nextItems();
    assert.equal(p1.length, 1);
    assert.equal(pager.hasNext, true);
    const p2 = await pager.nextItems();
    assert.equal(p2.length, 1);
    assert.equal(pager.hasNext, false);
    assert.notEqual(p1[0]!.sandboxId, p2[0]!.sandboxId);
  });

  test('pause: paused in list, envd refused, a second pause false; connect resumes it', async () => {
    assert.equal(await b.betaPause(), true);
    assert.equal(agentProcs.get(b.sandboxId)!.signalCode, null);
    assert.equal((await b.getInfo()).state, 'paused');
    const paused = await E2BSandbox.list({ ...conn(), query: { state: ['paused'] } }).nextItems();
    assert.deepEqual(
      paused.map((s) => s.sandboxId),
      [b.sandboxId],
    );
    assert.equal(await b.betaPause(), false, '409: already paused');
    await assert.rejects(b.commands.run('true'));
    const again = await E2BSandbox.connect(b.sandboxId, conn());
    assert.equal((await again.getInfo()).state, 'running');
    assert.equal((await again.commands.run('echo $NAME')).stdout, 'beta\n');
  });

  test('signed URLs (no headers): the signature routes to its sandbox; a tampered one is 401', async () => {
    const dir = join(dirs.get(a.sandboxId)!, 'work');
    writeFileSync(join(dir, 'signed.txt'), 'signed content');
    const down = await a.downloadUrl(join(dir, 'signed.txt'));
    assert.equal(new URL(down).origin, url);
    assert.equal(await (await fetch(down)).text(), 'signed content');
    assert.equal((await fetch(down.replace('signature=v1_', 'signature=v1_X'))).status, 401);
    const moved = new URL(down);
    moved.searchParams.set('path', '/etc/passwd');
    assert.equal((await fetch(moved)).status, 401);
  });

  test('a guest port (E2b-Sandbox-Port): the token is checked first, then the agent tunnels to the guest port', async () => {
    const web: Server = createServer((_q, s) => s.end('guest web'));
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', () => r()));
    const port = (web.address() as { port: number }).port;
    try {
      assert.equal((await envd(a.sandboxId, '/', { method: 'GET', port })).status, 401);
      const tokB = (b as unknown as { envdAccessToken: string }).envdAccessToken;
      assert.equal((await envd(a.sandboxId, '/', { method: 'GET', port, token: tokB })).status, 401);
      // serve carries it as sandbox/port-forward.ts does: HTTP CONNECT to the agent, which dials the
      // port on the guest's loopback (here the host-run agent's: the test's web server).
      const tokA = (a as unknown as { envdAccessToken: string }).envdAccessToken;
      const r = await envd(a.sandboxId, '/', { token: tokA, method: 'GET', port });
      assert.equal(r.status, 200);
      assert.equal(r.text, 'guest web');
      // A port nothing listens on: the agent's refusal reaches the client as a 502 saying why.
      web.close();
      const closed = await envd(a.sandboxId, '/', { token: tokA, method: 'GET', port });
      assert.equal(closed.status, 502);
      assert.match(JSON.parse(closed.text).message, new RegExp(`refused to open guest port ${port}: HTTP 502`));
    } finally {
      web.close();
    }
  });

  test("vireo's CLI client: CONNECT streams need the key and the token", async () => {
    const c = new ServeClient(url, KEY);
    const sb = await c.sandbox(a.sandboxId);
    assert.equal((await sb.commands.run('echo $NAME')).stdout, 'alpha\n');
    const listed = await c.list();
    assert.equal(listed.length, 2);
    const wrongKey = new ServeClient(url, 'wrong-key-0123456789');
    await assert.rejects(wrongKey.info(a.sandboxId), /401/);
    const forged = new ServeClient(url, KEY).endpoint(a.sandboxId, 'wrong');
    await assert.rejects(forged.connect({ timeoutMs: 2000 }), /HTTP 401/);
    const tokB = (b as unknown as { envdAccessToken: string }).envdAccessToken;
    await assert.rejects(c.endpoint(a.sandboxId, tokB).connect({ timeoutMs: 2000 }), /HTTP 401/);
  });

  test('the `vireo sandbox` commands against this service', async () => {
    const bin = join(repoRoot, 'bin', 'vireo.js');
    const run = (args: string[], input?: string) =>
      new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
        const p = spawn(process.execPath, [bin, 'sandbox', ...args], {
          env: { ...process.env, VIREO_SERVE_URL: url, VIREO_API_KEY: KEY },
        });
        let out = '';
        let err = '';
        p.stdout.on('data', (d: Buffer) => {
          out += d;
        });
        p.stderr.on('data', (d: Buffer) => {
          err += d;
        });
        p.stdin.end(input ?? '');
        p.on('close', (code) => resolve({ code, out, err }));
      });
    const ls = await run(['ls']);
    assert.equal(ls.code, 0, ls.err);
    assert.ok(ls.out.includes(a.sandboxId) && ls.out.includes('who=b'), ls.out);
    const ex = await run(['exec', a.sandboxId, '--', 'sh', '-c', 'echo $NAME; exit 3']);
    assert.deepEqual([ex.code, ex.out], [3, 'alpha\n']);
    const piped = await run(['exec', '--stdin', a.sandboxId, '--', 'tr', 'a-z', 'A-Z'], 'shout');
    assert.deepEqual([piped.code, piped.out], [0, 'SHOUT']);
    const dir = join(dirs.get(a.sandboxId)!, 'work');
    const up = await run(['cp', '-', `${a.sandboxId}:${dir}/cp.txt`], 'uploaded');
    assert.equal(up.code, 0, up.err);
    const down = await run(['cp', `${a.sandboxId}:${dir}/cp.txt`, '-']);
    assert.deepEqual([down.code, down.out], [0, 'uploaded']);
    const created = await run(['create', '--template', 'base', '--metadata', 'via=cli']);
    assert.equal(created.code, 0, created.err);
    const id = created.out.trim();
    assert.equal((await E2BSandbox.getInfo(id, conn())).metadata.via, 'cli');
    assert.equal((await run(['kill', id])).code, 0);
    const gone = await run(['kill', id]);
    assert.equal(gone.code, 1);
    assert.match(gone.err, /404/);
  });

  test('kill: 204, its files removed, isRunning false, a second kill false', async () => {
    const dir = dirs.get(b.sandboxId)!;
    assert.equal(await b.kill(), true);
    assert.equal(existsSync(dir), false);
    assert.equal(await b.isRunning(), false);
    assert.equal(await E2BSandbox.kill(b.sandboxId, conn()), false);
    await assert.rejects(b.getInfo(), SandboxNotFoundError);
    await assert.rejects(b.commands.run('true'));
    assert.equal((await a.commands.run('echo $NAME')).stdout, 'alpha\n', 'the other one lives on');
  });

  test('timeout: setTimeout(1 s) kills it and removes its files', async () => {
    const dir = dirs.get(a.sandboxId)!;
    await a.setTimeout(1000);
    const end = (await a.getInfo()).endAt.getTime();
    assert.ok(Math.abs(end - Date.now() - 1000) < 500);
    await sleep(1600);
    assert.equal(serve.registry.get(a.sandboxId), undefined);
    await assert.rejects(a.getInfo(), SandboxNotFoundError);
    for (let i = 0; i < 50 && existsSync(dir); i++) await sleep(50);
    assert.equal(existsSync(dir), false);
    assert.equal(agentProcs.get(a.sandboxId)!.exitCode ?? agentProcs.get(a.sandboxId)!.signalCode !== null, true);
  });
});
