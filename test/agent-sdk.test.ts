/**
 * The guest agent driven by the unmodified e2b SDK: the agent runs on the host (`--listen tcp:…`) and
 * the SDK talks to it in debug mode with `sandboxUrl` pointing at it (its documented way to reach an
 * envd without a control plane; E2B_SANDBOX_URL is the same setting). Commands, PTYs, files, watches,
 * transfers and the access token, each through the SDK's own calls.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { AuthenticationError, CommandExitError, FileNotFoundError, Sandbox, TimeoutError } from 'e2b';
import { type RunningAgent, startAgent } from './support/agent.js';

let agent: RunningAgent;
let sbx: Sandbox;
let dir: string;

before(async () => {
  agent = await startAgent();
  sbx = await Sandbox.create({ debug: true, sandboxUrl: agent.url });
  dir = mkdtempSync(join(tmpdir(), 'vireo-agent-sdk-'));
});

after(async () => {
  await agent.stop();
  rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('commands.run streams stdout and stderr and returns the exit code', async () => {
  const outs: string[] = [];
  const errs: string[] = [];
  const r = await sbx.commands.run('echo one; sleep 0.2; echo two; echo oops >&2', {
    onStdout: (d) => {
      outs.push(d);
    },
    onStderr: (d) => {
      errs.push(d);
    },
  });
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, 'one\ntwo\n');
  assert.equal(r.stderr, 'oops\n');
  assert.ok(outs.length >= 2, `stdout came in ${outs.length} chunks, want 2 (it is streamed)`);
  assert.equal(outs.join(''), 'one\ntwo\n');
  assert.equal(errs.join(''), 'oops\n');
});

test('a failing command rejects with CommandExitError carrying its output', async () => {
  await assert.rejects(sbx.commands.run('echo out; echo err >&2; exit 3'), (e: unknown) => {
    assert.ok(e instanceof CommandExitError);
    assert.equal(e.exitCode, 3);
    assert.equal(e.stdout, 'out\n');
    assert.equal(e.stderr, 'err\n');
    return true;
  });
});

test('envs, cwd and user reach the process', async () => {
  const r = await sbx.commands.run('echo "$FOO"; pwd; id -un', { envs: { FOO: 'bar baz' }, cwd: dir });
  assert.equal(r.stdout, `bar baz\n${dir}\nroot\n`);
  const n = await sbx.commands.run('id -un; id -u', { user: 'nobody', cwd: '/tmp' });
  assert.equal(n.stdout, 'nobody\n65534\n');
  await assert.rejects(sbx.commands.run('true', { cwd: join(dir, 'missing') }), /working directory/);
});

test('stdin: sendStdin then closeStdin', async () => {
  const h = await sbx.commands.run('cat; echo done', { background: true, stdin: true });
  await h.sendStdin('hello ');
  await sbx.commands.sendStdin(h.pid, 'agent\n');
  await h.closeStdin();
  const r = await h.wait();
  assert.equal(r.stdout, 'hello agent\ndone\n');
});

test('a background process is listed, reconnected by pid, and killed', async () => {
  const h = await sbx.commands.run('echo started; sleep 30', { background: true, timeoutMs: 0 });
  assert.ok(h.pid > 0);
  const listed = await sbx.commands.list();
  const mine = listed.find((p) => p.pid === h.pid);
  assert.ok(mine, 'the process is listed');
  assert.equal(mine.cmd, '/bin/bash');
  assert.deepEqual(mine.args.slice(0, 2), ['-l', '-c']);
  const again = await sbx.commands.connect(h.pid, { timeoutMs: 0 });
  assert.equal(again.pid, h.pid);
  assert.equal(await h.kill(), true);
  await assert.rejects(h.wait(), (e: unknown) => e instanceof CommandExitError && e.exitCode === -1);
  await assert.rejects(again.wait(), (e: unknown) => e instanceof CommandExitError && e.exitCode === -1);
  assert.equal(
    (await sbx.commands.list()).find((p) => p.pid === h.pid),
    undefined,
  );
  assert.equal(await sbx.commands.kill(h.pid), false, 'killing a gone pid says so');
  await assert.rejects(sbx.commands.connect(h.pid), /not_found|no process/i);
});

test("a command past its timeoutMs is stopped and the SDK's TimeoutError says so", async () => {
  const t0 = Date.now();
  await assert.rejects(
    sbx.commands.run('sleep 20; echo never', { timeoutMs: 700 }),
    (e: unknown) => e instanceof TimeoutError,
  );
  assert.ok(Date.now() - t0 < 5000);
  await sleep(300);
  const left = (await sbx.commands.list()).filter((p) => p.args.includes('sleep 20; echo never'));
  assert.deepEqual(left, [], 'the timed-out process was killed');
});

test('large output arrives whole, and concurrent commands keep theirs apart', async () => {
  const big = await sbx.commands.run('head -c 3000000 /dev/zero | tr "\\0" x; echo; echo end >&2');
  assert.equal(big.stdout.length, 3_000_001);
  assert.ok(/^x+\n$/.test(big.stdout));
  assert.equal(big.stderr, 'end\n');
  const runs = await Promise.all(
    Array.from({ length: 16 }, (_, i) => sbx.commands.run(`for j in 1 2 3; do echo ${i}-$j; sleep 0.0$j; done`)),
  );
  runs.forEach((r, i) => {
    assert.equal(r.stdout, `${i}-1\n${i}-2\n${i}-3\n`);
  });
});

test('a command whose background child keeps its stdout open still ends when it exits', async () => {
  const t0 = Date.now();
  const r = await sbx.commands.run('sleep 30 & echo "child $!"');
  assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
  const child = Number(r.stdout.match(/^child (\d+)$/m)?.[1]);
  assert.ok(child > 0);
  process.kill(child, 'SIGKILL'); // the agent runs on this host: its grandchild is ours to clean up
});

test('disconnect, then connect again by pid and get the later output', async () => {
  const h = await sbx.commands.run('echo first; sleep 1.5; echo second', { background: true, timeoutMs: 20_000 });
  for (const end = Date.now() + 10_000; !h.stdout.includes('first') && Date.now() < end; ) await sleep(20);
  assert.equal(h.stdout, 'first\n');
  await h.disconnect();
  const again = await sbx.commands.connect(h.pid, { timeoutMs: 20_000 });
  const r = await again.wait();
  assert.equal(r.stdout, 'second\n', 'output after the reconnect');
  assert.equal(r.exitCode, 0);
});

test('PTY: create, input, resize, exit', async () => {
  let data = '';
  const dec = new TextDecoder();
  const pty = await sbx.pty.create({
    cols: 80,
    rows: 24,
    onData: (d) => {
      data += dec.decode(d, { stream: true });
    },
    timeoutMs: 20_000,
  });
  const waitFor = async (re: RegExp) => {
    const end = Date.now() + 10_000;
    while (!re.test(data)) {
      if (Date.now() > end) throw new Error(`no ${re} in PTY output: ${JSON.stringify(data.slice(-500))}`);
      await sleep(20);
    }
  };
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; tty\n'));
  await waitFor(/24 80/);
  await waitFor(/\/dev\/pts\/\d+/);
  await sbx.pty.resize(pty.pid, { cols: 132, rows: 43 });
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size\n'));
  await waitFor(/43 132/);
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('exit 0\n'));
  const r = await pty.wait();
  assert.equal(r.exitCode, 0);
});

test('files: write, read, list, exists, makeDir, rename, getInfo, remove', async () => {
  const base = join(dir, 'files');
  const info = await sbx.files.write(join(base, 'a', 'hello.txt'), 'hello, agent');
  assert.equal(info.path, join(base, 'a', 'hello.txt'));
  assert.equal(info.name, 'hello.txt');
  assert.equal(await sbx.files.read(join(base, 'a', 'hello.txt')), 'hello, agent');
  const bin = new Uint8Array(70_000).map((_, i) => (i * 7) & 0xff);
  await sbx.files.write(join(base, 'bin.dat'), bin.buffer);
  assert.deepEqual(await sbx.files.read(join(base, 'bin.dat'), { format: 'bytes' }), bin);
  assert.deepEqual(await sbx.files.read(join(base, 'bin.dat'), { format: 'bytes', gzip: true }), bin);
  await sbx.files.write(join(base, 'octet.txt'), 'via octet-stream', { useOctetStream: true });
  assert.equal(await sbx.files.read(join(base, 'octet.txt')), 'via octet-stream');
  const many = await sbx.files.write([
    { path: join(base, 'm', 'one'), data: '1' },
    { path: join(base, 'm', 'two'), data: '22' },
  ]);
  assert.deepEqual(
    many.map((f) => f.name),
    ['one', 'two'],
  );
  await sbx.files.write(join(base, 'empty'), '');
  assert.equal(await sbx.files.read(join(base, 'empty')), '');

  const top = await sbx.files.list(base);
  assert.deepEqual(top.map((e) => e.name).sort(), ['a', 'bin.dat', 'empty', 'm', 'octet.txt']);
  assert.equal(top.find((e) => e.name === 'a')?.type, 'dir');
  const deep = await sbx.files.list(base, { depth: 2 });
  assert.ok(deep.some((e) => e.path === join(base, 'a', 'hello.txt') && e.type === 'file'));
  assert.ok(deep.some((e) => e.path === join(base, 'm', 'two')));

  assert.equal(await sbx.files.exists(join(base, 'a', 'hello.txt')), true);
  assert.equal(await sbx.files.exists(join(base, 'nope')), false);
  assert.equal(await sbx.files.makeDir(join(base, 'new', 'deeper')), true);
  assert.equal(await sbx.files.makeDir(join(base, 'new', 'deeper')), false);

  const moved = await sbx.files.rename(join(base, 'a', 'hello.txt'), join(base, 'new', 'moved.txt'));
  assert.equal(moved.path, join(base, 'new', 'moved.txt'));
  const gi = await sbx.files.getInfo(join(base, 'new', 'moved.txt'));
  assert.equal(gi.type, 'file');
  assert.equal(gi.size, 12);
  assert.equal(gi.owner, 'root');
  assert.equal(gi.permissions, '-rw-r--r--');
  assert.ok(gi.modifiedTime && Math.abs(gi.modifiedTime.getTime() - Date.now()) < 60_000);
  const di = await sbx.files.getInfo(join(base, 'new'));
  assert.equal(di.type, 'dir');

  await sbx.files.remove(join(base, 'new'));
  assert.equal(await sbx.files.exists(join(base, 'new')), false);
  await assert.rejects(sbx.files.read(join(base, 'new', 'moved.txt')), (e: unknown) => e instanceof FileNotFoundError);
  await assert.rejects(sbx.files.getInfo(join(base, 'nope')), (e: unknown) => e instanceof FileNotFoundError);
  await assert.rejects(sbx.files.list(join(base, 'bin.dat')), /not a directory/);
});

test("files run as the request's user: nobody cannot read root's private file or write into /root", async () => {
  const secret = join(dir, 'secret');
  await sbx.files.write(secret, 'root only');
  await sbx.commands.run(`chmod 600 ${secret}; chmod 755 ${dir}`);
  await assert.rejects(sbx.files.read(secret, { user: 'nobody' }), /permission denied|403/i);
  await assert.rejects(
    sbx.files.write('/root/vireo-agent-test-nobody', 'x', { user: 'nobody' }),
    /permission denied|403/i,
  );
  const mine = await sbx.files.write(join('/tmp', `vireo-agent-nobody-${process.pid}`), 'x', { user: 'nobody' });
  const gi = await sbx.files.getInfo(mine.path);
  assert.equal(gi.owner, 'nobody');
  await sbx.files.remove(mine.path);
});

test('watchDir reports creates, writes and removes', async () => {
  const wdir = join(dir, 'watched');
  await sbx.files.makeDir(wdir);
  const events: { name: string; type: string }[] = [];
  const handle = await sbx.files.watchDir(
    wdir,
    (e) => {
      events.push({ name: e.name, type: e.type });
    },
    { recursive: true, timeoutMs: 20_000 },
  );
  await sbx.files.write(join(wdir, 'f.txt'), 'x');
  await sbx.files.makeDir(join(wdir, 'sub'));
  await sleep(100);
  await sbx.files.write(join(wdir, 'sub', 'g.txt'), 'y');
  await sbx.files.remove(join(wdir, 'f.txt'));
  const end = Date.now() + 5000;
  const has = (name: string, type: string) => events.some((e) => e.name === name && e.type === type);
  while (!(has('f.txt', 'create') && has('f.txt', 'remove') && has('sub/g.txt', 'create')) && Date.now() < end)
    await sleep(20);
  await handle.stop();
  assert.ok(has('f.txt', 'create'), JSON.stringify(events));
  assert.ok(has('f.txt', 'write'), JSON.stringify(events));
  assert.ok(has('sub', 'create'), JSON.stringify(events));
  assert.ok(has('sub/g.txt', 'create'), JSON.stringify(events));
  assert.ok(has('f.txt', 'remove'), JSON.stringify(events));
});

test('upload and download URLs, /health, /metrics, /envs', async () => {
  const path = join(dir, 'up.bin');
  const up = await sbx.uploadUrl(path);
  const form = new FormData();
  form.append('file', new Blob(['uploaded bytes']), path);
  const res = await fetch(up, { method: 'POST', body: form });
  assert.equal(res.status, 200);
  const body = (await res.json()) as { path: string; type: string }[];
  assert.deepEqual(body, [{ path, name: 'up.bin', type: 'file' }]);
  const down = await fetch(await sbx.downloadUrl(path));
  assert.equal(down.status, 200);
  assert.equal(await down.text(), 'uploaded bytes');
  assert.equal((await fetch(`${agent.url}/files?path=${encodeURIComponent(join(dir, 'missing'))}`)).status, 404);

  assert.equal((await fetch(`${agent.url}/health`)).status, 204);
  const m = (await (await fetch(`${agent.url}/metrics`)).json()) as Record<string, number>;
  assert.ok(m.cpu_count >= 1 && m.mem_total > 0 && m.disk_total > 0 && Math.abs(m.ts - Date.now() / 1000) < 60);
  assert.deepEqual(await (await fetch(`${agent.url}/envs`)).json(), {});
});

test('/init sets a token: missing or wrong is 401, the SDK with it works', async () => {
  const a2 = await startAgent();
  try {
    const init = await fetch(`${a2.url}/init`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ accessToken: 'sekrit', envVars: { GREETING: 'hi' }, timestamp: new Date().toISOString() }),
    });
    assert.equal(init.status, 204);
    assert.equal((await fetch(`${a2.url}/envs`)).status, 401);
    assert.equal((await fetch(`${a2.url}/envs`, { headers: { 'X-Access-Token': 'wrong' } })).status, 401);
    const envs = await fetch(`${a2.url}/envs`, { headers: { 'X-Access-Token': 'sekrit' } });
    assert.deepEqual(await envs.json(), { GREETING: 'hi' });
    // Re-initializing needs the token too.
    const again = await fetch(`${a2.url}/init`, { method: 'POST', body: JSON.stringify({ accessToken: 'mine' }) });
    assert.equal(again.status, 401);

    const anon = await Sandbox.create({ debug: true, sandboxUrl: a2.url });
    await assert.rejects(anon.commands.run('true'), (e: unknown) => e instanceof AuthenticationError);
    await assert.rejects(anon.files.read('/etc/hostname'), (e: unknown) => e instanceof AuthenticationError);

    // The SDK takes the token from the control plane; in debug mode a subclass passes it the same way.
    type Opts = ConstructorParameters<typeof Sandbox>[0];
    class Secured extends Sandbox {
      constructor(opts: Opts) {
        super(opts);
      }
    }
    const sec = new Secured({
      sandboxId: 'debug_sandbox_id',
      envdVersion: '99.99.99',
      envdAccessToken: 'sekrit',
      debug: true,
      sandboxUrl: a2.url,
    } as Opts);
    const r = await sec.commands.run('echo $GREETING');
    assert.equal(r.stdout, 'hi\n');
    await sec.files.write(join(dir, 'sec.txt'), 'signed');
    assert.equal(await sec.files.read(join(dir, 'sec.txt')), 'signed');
    // A signed URL stands in for the header; a tampered one does not.
    const url = await sec.downloadUrl(join(dir, 'sec.txt'));
    assert.equal(await (await fetch(url)).text(), 'signed');
    assert.equal((await fetch(url.replace('signature=v1_', 'signature=v1_x'))).status, 401);
    const wrongPath = new URL(url);
    wrongPath.searchParams.set('path', '/etc/hostname');
    assert.equal((await fetch(wrongPath)).status, 401);
  } finally {
    await a2.stop();
  }
});
