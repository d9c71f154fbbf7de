/**
 * Sandbox's commands and files against the real guest agent (guest/agent/, built and run on this
 * host), reached as a VM's agent is: through a hybrid vsock stand-in (test/support/agent-fronts.ts:
 * CONNECT 49983 / OK, then the bytes; the real vsock path is the nested lane's). Streamed output, exit
 * codes and CommandExitError, stdin, cwd and envs, background + kill, reconnect by pid, timeouts, the
 * keepalive silence watch, a file round trip, the directory verbs, a watch.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AgentClient } from '../src/agent/client.js';
import { hybridVsockEndpoint } from '../src/agent/connector.js';
import { AgentError, AgentHttpError, AgentRpcError } from '../src/agent/errors.js';
import { CommandExitError, CommandTimeoutError } from '../src/sandbox/errors.js';
import type { FilesystemEvent } from '../src/sandbox/files.js';
import { Sandbox } from '../src/sandbox/sandbox.js';
import { type HybridVsockFront, hybridVsockFront, unixTarget } from './support/agent-fronts.js';
import { type HostAgent, startHostAgent } from './support/agent-host.js';

const dir = realpathSync(mkdtempSync(join(tmpdir(), 'vireo-sandbox-agent-')));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let agent: HostAgent;
let front: HybridVsockFront;
let sb: Sandbox;

before(async () => {
  agent = await startHostAgent(join(dir, 'agent.sock'));
  front = await hybridVsockFront(join(dir, 'vsock'), unixTarget(agent.path));
  sb = await Sandbox.attach({
    agent: hybridVsockEndpoint(front.path),
    envs: { GREETING: 'hello' },
    workdir: dir,
    timeoutMs: 0,
    agentTimeouts: { connectTimeoutMs: 3000, requestTimeoutMs: 5000, keepaliveIntervalS: 1, keepaliveGraceMs: 700 },
  });
});

after(async () => {
  await sb?.kill();
  await front?.close();
  const alive = agent?.proc.exitCode === null;
  await agent?.stop();
  rmSync(dir, { recursive: true, force: true });
  assert.ok(alive, `the agent died: ${agent?.log()}`);
});

describe('commands', () => {
  test('run: output, exit 0, and every stream went through the vsock handshake', async () => {
    const before = front.ports.length;
    const r = await sb.commands.run('echo hi; echo there >&2');
    assert.deepEqual({ ...r }, { exitCode: 0, error: undefined, stdout: 'hi\n', stderr: 'there\n' });
    assert.ok(front.ports.length > before && front.ports.slice(before).every((p) => p === 49983));
  });

  test('output is streamed as it comes, not at the end', async () => {
    const seen: { s: string; t: number }[] = [];
    const t0 = performance.now();
    const r = await sb.commands.run('for i in 1 2 3; do echo line$i; sleep 0.3; done', {
      onStdout: (s) => {
        seen.push({ s, t: performance.now() - t0 });
      },
    });
    assert.equal(r.stdout, 'line1\nline2\nline3\n');
    assert.equal(seen.map((x) => x.s).join(''), r.stdout);
    assert.ok(seen.length >= 3, `3 chunks, got ${seen.length}`);
    assert.ok(seen[0]!.t < 250, `the first line came at ${seen[0]!.t} ms, before the command ended`);
  });

  test('a non-zero exit is a CommandExitError with the exit code and the output', async () => {
    await assert.rejects(sb.commands.run('echo out; echo err >&2; exit 3'), (e: unknown) => {
      assert.ok(e instanceof CommandExitError);
      assert.equal(e.code, 'VIREO_ERR_COMMAND_EXIT');
      assert.equal(e.exitCode, 3);
      assert.equal(e.stdout, 'out\n');
      assert.equal(e.stderr, 'err\n');
      return true;
    });
  });

  test("envs (the sandbox's and the command's), cwd and the default workdir", async () => {
    assert.equal((await sb.commands.run('echo $GREETING $X', { envs: { X: 'world' } })).stdout, 'hello world\n');
    assert.equal((await sb.commands.run('pwd')).stdout, `${dir}\n`);
    assert.equal((await sb.commands.run('pwd', { cwd: '/' })).stdout, '/\n');
  });

  test('user: the command runs as the user named', async () => {
    const me = userInfo().username;
    assert.equal((await sb.commands.run('id -un', { user: me })).stdout, `${me}\n`);
    await assert.rejects(
      sb.commands.run('true', { user: 'no-such-user-vireo' }),
      (e: unknown) => e instanceof AgentRpcError && e.rpcCode === 'permission_denied',
    );
  });

  test('stdin: bytes given up front, and sendStdin/closeStdin on a background command', async () => {
    assert.equal((await sb.commands.run('cat', { stdin: 'abc\n' })).stdout, 'abc\n');
    const h = await sb.commands.run('tr a-z A-Z', { stdin: true, background: true });
    await h.sendStdin('shout ');
    await h.sendStdin(Buffer.from('louder'));
    await h.closeStdin();
    const r = await h.wait();
    assert.equal(r.stdout, 'SHOUT LOUDER');
  });

  test('background: list finds it, kill ends it, wait reports the kill', async () => {
    const h = await sb.commands.run('sleep 30', { background: true, tag: 'sleeper' });
    const listed = await sb.commands.list();
    const mine = listed.find((p) => p.pid === h.pid);
    assert.ok(mine, `pid ${h.pid} in ${JSON.stringify(listed.map((p) => p.pid))}`);
    assert.equal(mine.tag, 'sleeper');
    assert.deepEqual(mine.args.slice(-1), ['sleep 30']);
    const t0 = performance.now();
    assert.equal(await h.kill(), true);
    await assert.rejects(h.wait(), (e: unknown) => e instanceof CommandExitError && e.exitCode !== 0);
    assert.ok(performance.now() - t0 < 3000);
    assert.ok(!(await sb.commands.list()).some((p) => p.pid === h.pid));
    assert.equal(await sb.commands.kill(h.pid), false, 'a second kill finds nothing');
  });

  test('reconnect by pid: disconnect, connect again, the rest of the output and the exit', async () => {
    const first: string[] = [];
    const h = await sb.commands.run('for i in 1 2 3 4 5; do echo tick$i; sleep 0.25; done', {
      background: true,
      onStdout: (s) => {
        first.push(s);
      },
    });
    while (first.length === 0) await sleep(20);
    await h.disconnect();
    await assert.rejects(h.wait(), /disconnected before it ended/);
    const again = await sb.commands.connect(h.pid);
    assert.equal(again.pid, h.pid);
    const r = await again.wait();
    assert.equal(r.exitCode, 0);
    assert.match(r.stdout, /tick5\n$/);
    assert.ok(!r.stdout.includes('tick1'), 'a reconnect sees output from then on');
  });

  test('connect to a pid that is not running is an error', async () => {
    await assert.rejects(
      sb.commands.connect(999999),
      (e: unknown) => e instanceof AgentRpcError && e.rpcCode === 'not_found',
    );
  });

  test('timeoutMs: a command past it is killed and CommandTimeoutError carries its output', async () => {
    const t0 = performance.now();
    let pid = 0;
    await assert.rejects(
      (async () => {
        const h = await sb.commands.run('echo started; sleep 20', { background: true, timeoutMs: 400 });
        pid = h.pid;
        return h.wait();
      })(),
      (e: unknown) => e instanceof CommandTimeoutError && e.stdout === 'started\n',
    );
    const took = performance.now() - t0;
    assert.ok(took >= 380 && took < 3000, `took ${took} ms`);
    assert.ok(!(await sb.commands.list()).some((p) => p.pid === pid), 'the command is gone');
  });

  test('a stream that goes silent (the vsock stops carrying bytes) fails with VIREO_ERR_AGENT_SILENT', async () => {
    const h = await sb.commands.run('sleep 30', { background: true });
    await sleep(1200); // a keepalive or two come through first
    const t0 = performance.now();
    front.hold(true);
    try {
      await assert.rejects(h.wait(), (e: unknown) => e instanceof AgentError && e.code === 'VIREO_ERR_AGENT_SILENT');
    } finally {
      front.hold(false);
    }
    const took = performance.now() - t0;
    assert.ok(took < 1000 + 700 + 1200, `detected after ${took} ms (keepalive 1 s + grace 700 ms)`);
    assert.equal(await sb.commands.kill(h.pid), true);
  });
});

describe('files', () => {
  test('write, read (text and bytes), getInfo, exists: a round trip', async () => {
    const p = join(dir, 'tree', 'sub', 'a.txt');
    const info = await sb.files.write(p, 'hello file\n');
    assert.equal(info.path, p);
    assert.equal(await sb.files.read(p), 'hello file\n');
    const bytes = new Uint8Array(256 * 64).map((_, i) => i & 0xff);
    await sb.files.write(join(dir, 'tree', 'bin'), bytes);
    assert.deepEqual(await sb.files.read(join(dir, 'tree', 'bin'), { format: 'bytes' }), Buffer.from(bytes));
    const st = await sb.files.getInfo(p);
    assert.equal(st.type, 'file');
    assert.equal(st.size, 11);
    assert.equal(st.name, 'a.txt');
    assert.ok(st.modifiedTime instanceof Date && Math.abs(st.modifiedTime.getTime() - Date.now()) < 60_000);
    assert.equal(await sb.files.exists(p), true);
    assert.equal(await sb.files.exists(join(dir, 'nope')), false);
    await assert.rejects(
      sb.files.read(join(dir, 'nope')),
      (e: unknown) => e instanceof AgentHttpError && e.status === 404,
    );
    const many = await sb.files.write([
      { path: join(dir, 'many', 'a'), data: 'A' },
      { path: join(dir, 'many', 'b'), data: new TextEncoder().encode('B').buffer as ArrayBuffer },
    ]);
    assert.deepEqual(
      many.map((w) => w.path),
      [join(dir, 'many', 'a'), join(dir, 'many', 'b')],
    );
    assert.equal((await sb.files.read(join(dir, 'many', 'a'))) + (await sb.files.read(join(dir, 'many', 'b'))), 'AB');
  });

  test('makeDir, list with depth, rename, remove', async () => {
    const d = join(dir, 'made', 'deep');
    assert.equal(await sb.files.makeDir(d), true);
    assert.equal(await sb.files.makeDir(d), false, 'already there');
    await sb.files.write(join(d, 'f1'), '1');
    const top = await sb.files.list(join(dir, 'made'));
    assert.deepEqual(
      top.map((e) => [e.name, e.type]),
      [['deep', 'dir']],
    );
    const two = await sb.files.list(join(dir, 'made'), { depth: 2 });
    assert.deepEqual(two.map((e) => e.path).sort(), [d, join(d, 'f1')]);
    const moved = await sb.files.rename(join(d, 'f1'), join(d, 'f2'));
    assert.equal(moved.path, join(d, 'f2'));
    assert.equal(await sb.files.exists(join(d, 'f1')), false);
    await sb.files.remove(join(dir, 'made'));
    assert.equal(await sb.files.exists(d), false);
    await assert.rejects(sb.files.getInfo(d), (e: unknown) => e instanceof AgentRpcError && e.rpcCode === 'not_found');
  });

  test('watchDir: a file made in the directory is seen; stop ends the watch', async () => {
    const w = join(dir, 'watched');
    await sb.files.makeDir(w);
    const events: FilesystemEvent[] = [];
    let exited: Error | undefined | 'no' = 'no';
    const h = await sb.files.watchDir(
      w,
      (e) => {
        events.push(e);
      },
      {
        onExit: (err) => {
          exited = err;
        },
      },
    );
    await sb.files.write(join(w, 'new.txt'), 'x');
    const until = Date.now() + 5000;
    while (!events.some((e) => e.name === 'new.txt' && e.type === 'create') && Date.now() < until) await sleep(50);
    assert.ok(
      events.some((e) => e.name === 'new.txt' && e.type === 'create'),
      JSON.stringify(events),
    );
    await h.stop();
    while (exited === 'no' && Date.now() < until) await sleep(20);
    assert.equal(exited, undefined, 'stopped without an error');
  });
});

test('the sandbox verbs a VM needs say so on an attached sandbox', async () => {
  await assert.rejects(sb.pause(), /attached to an agent, not created with a VM/);
  assert.equal(await sb.isRunning(), true);
});

test("Connect's binary codec to the same agent: a unary call and a stream", async () => {
  const c = new AgentClient({
    endpoint: hybridVsockEndpoint(front.path),
    timeouts: { connectTimeoutMs: 3000, requestTimeoutMs: 5000, keepaliveIntervalS: 1, keepaliveGraceMs: 700 },
    accessToken: sb.agent.accessToken,
    format: 'binary',
  });
  const bin = await Sandbox.attach({ agent: c, init: false, timeoutMs: 0 });
  assert.equal((await bin.commands.run('printf "\\001\\002\\377"')).stdout, '\u0001\u0002\ufffd');
  assert.ok(Array.isArray(await bin.commands.list()));
  assert.equal((await bin.files.getInfo(dir)).type, 'dir');
});
