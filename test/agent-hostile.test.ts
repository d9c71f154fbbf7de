/**
 * Hostile and broken requests to the guest agent (run on the host): bad JSON, truncated and oversized
 * Connect envelopes, unknown flags and media types, pids and signals it must not act on, bad paths and
 * users, odd files. Each gets an error in the protocol's own shape, and the agent keeps answering.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type RunningAgent, startAgent } from './support/agent.js';

let agent: RunningAgent;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vireo-agent-hostile-'));
  agent = await startAgent({ unixSocket: join(dir, 'agent.sock') });
});

after(async () => {
  const alive = agent.proc.exitCode === null;
  await agent.stop();
  rmSync(dir, { recursive: true, force: true });
  assert.ok(alive, `the agent died: ${agent.log()}`);
});

async function unary(method: string, body: string | Uint8Array, headers: Record<string, string> = {}) {
  const r = await fetch(`${agent.url}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Connect-Protocol-Version': '1', ...headers },
    body,
  });
  const text = await r.text();
  return { status: r.status, json: text ? (JSON.parse(text) as { code?: string; message?: string }) : {} };
}

function envelope(flags: number, payload: Uint8Array | string, announced?: number): Buffer {
  const p = typeof payload === 'string' ? Buffer.from(payload) : Buffer.from(payload);
  const h = Buffer.alloc(5);
  h[0] = flags;
  h.writeUInt32BE(announced ?? p.length, 1);
  return Buffer.concat([h, p]);
}

/** Sends one streaming call and returns its messages and the end-stream error. */
async function stream(method: string, body: Uint8Array, headers: Record<string, string> = {}) {
  const r = await fetch(`${agent.url}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/connect+json', ...headers },
    body,
  });
  const buf = Buffer.from(await r.arrayBuffer());
  const messages: unknown[] = [];
  let end: { error?: { code: string; message: string } } | undefined;
  for (let off = 0; off + 5 <= buf.length; ) {
    const flags = buf[off];
    const len = buf.readUInt32BE(off + 1);
    const msg = JSON.parse(buf.subarray(off + 5, off + 5 + len).toString());
    if (flags & 2) end = msg;
    else messages.push(msg);
    off += 5 + len;
  }
  return { status: r.status, messages, end };
}

async function healthy() {
  assert.equal((await fetch(`${agent.url}/health`)).status, 204);
}

test('malformed unary bodies are invalid_argument (HTTP 400)', async () => {
  for (const body of [
    '{',
    '[]',
    '"x"',
    '{"path": 5}',
    '{"path": {"a": 1}}',
    '{"depth": -1, "path": "/"}',
    '{} {}',
    '\u0000\u0001',
  ]) {
    const method = body.includes('depth') ? 'filesystem.Filesystem/ListDir' : 'filesystem.Filesystem/Stat';
    const r = await unary(method, body);
    assert.equal(r.status, 400, `${body}: ${JSON.stringify(r.json)}`);
    assert.equal(r.json.code, 'invalid_argument');
  }
  const badPid = await unary('process.Process/SendSignal', '{"process":{"pid":"12abc"},"signal":9}');
  assert.equal(badPid.json.code, 'invalid_argument');
  const badB64 = await unary('process.Process/SendInput', '{"process":{"pid":1},"input":{"stdin":"!!!"}}');
  assert.equal(badB64.json.code, 'invalid_argument');
  await healthy();
});

test('wrong media types, methods and headers', async () => {
  const r = await fetch(`${agent.url}/filesystem.Filesystem/Stat`, {
    method: 'POST',
    headers: { 'Content-Type': 'text/plain' },
    body: '',
  });
  assert.equal(r.status, 415);
  assert.equal(r.headers.get('accept-post'), 'application/json, application/proto');
  const get = await fetch(`${agent.url}/filesystem.Filesystem/Stat`);
  assert.equal(get.status, 501);
  const none = await unary('filesystem.Filesystem/Nope', '{}');
  assert.equal(none.status, 404);
  const ver = await unary('filesystem.Filesystem/Stat', '{"path":"/"}', { 'Connect-Protocol-Version': '7' });
  assert.equal(ver.json.code, 'invalid_argument');
  const to = await unary('filesystem.Filesystem/Stat', '{"path":"/"}', { 'Connect-Timeout-Ms': 'soon' });
  assert.equal(to.json.code, 'invalid_argument');
  const gz = await unary('filesystem.Filesystem/Stat', '{"path":"/"}', { 'Content-Encoding': 'br' });
  assert.equal(gz.json.code, 'unimplemented');
  const auth = await unary('filesystem.Filesystem/Stat', '{"path":"/"}', { Authorization: 'Basic %%%' });
  assert.equal(auth.json.code, 'invalid_argument');
  const who = await unary('filesystem.Filesystem/Stat', '{"path":"/"}', {
    Authorization: `Basic ${Buffer.from('no-such-user:').toString('base64')}`,
  });
  assert.equal(who.json.code, 'permission_denied');
  await healthy();
});

test('broken envelopes end the stream with an error, never a hang or a crash', async () => {
  const start = '{"process":{"cmd":"/bin/echo","args":["x"]}}';
  const cases: [string, Buffer, string][] = [
    ['truncated header', Buffer.from([0, 0, 0]), 'invalid_argument'],
    ['truncated body', envelope(0, start.slice(0, 10), start.length), 'invalid_argument'],
    ['4 GiB announced', envelope(0, start, 0xffffffff), 'resource_exhausted'],
    ['compressed flag', envelope(1, start), 'invalid_argument'],
    ['unknown flags', envelope(0x80, start), 'invalid_argument'],
    ['no message', Buffer.alloc(0), 'invalid_argument'],
    ['bad JSON', envelope(0, '{"process":'), 'invalid_argument'],
    ['no command', envelope(0, '{"process":{}}'), 'invalid_argument'],
    ['NUL in args', envelope(0, '{"process":{"cmd":"/bin/echo","args":["a\\u0000b"]}}'), 'invalid_argument'],
    ['missing executable', envelope(0, '{"process":{"cmd":"no-such-program-here"}}'), 'not_found'],
    ['bad env name', envelope(0, '{"process":{"cmd":"/bin/true","envs":{"A=B":"c"}}}'), 'invalid_argument'],
  ];
  for (const [what, body, code] of cases) {
    const r = await stream('process.Process/Start', body);
    assert.equal(r.status, 200, what);
    assert.equal(r.end?.error?.code, code, `${what}: ${JSON.stringify(r.end)}`);
    assert.deepEqual(r.messages, [], what);
  }
  const unary415 = await fetch(`${agent.url}/process.Process/Start`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: start,
  });
  assert.equal(unary415.status, 415);
  await healthy();
});

test('pids and signals: only its own processes, only TERM and KILL', async () => {
  for (const pid of [0, 1, process.pid, 4294967295]) {
    const r = await unary('process.Process/SendSignal', JSON.stringify({ process: { pid }, signal: 'SIGNAL_SIGKILL' }));
    assert.equal(r.json.code, 'not_found', `pid ${pid}`);
  }
  for (const pid of [-1, 4294967296, 1.5]) {
    const r = await unary('process.Process/SendSignal', JSON.stringify({ process: { pid }, signal: 9 }));
    assert.equal(r.json.code, 'invalid_argument', `pid ${pid}`);
  }
  assert.equal((await unary('process.Process/SendSignal', '{"signal":9}')).json.code, 'invalid_argument');
  assert.equal((await unary('process.Process/Connect', '{}')).status, 415, 'Connect is a stream');
  const conn = await stream('process.Process/Connect', envelope(0, '{"process":{"tag":"nope"}}'));
  assert.equal(conn.end?.error?.code, 'not_found');

  // A live process of its own: a bad signal is refused and the process keeps running.
  const proc = execFileSync('bash', ['-c', 'echo $$'], { encoding: 'utf8' }); // a pid that is not the agent's
  assert.equal(
    (await unary('process.Process/SendSignal', JSON.stringify({ process: { pid: Number(proc) }, signal: 9 }))).json
      .code,
    'not_found',
  );
  const started = fetch(`${agent.url}/process.Process/Start`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/connect+json', 'Connect-Timeout-Ms': '20000' },
    body: envelope(0, JSON.stringify({ process: { cmd: '/bin/sleep', args: ['30'] }, tag: 'victim' })),
  });
  const res = await started;
  const reader = res.body?.getReader();
  assert.ok(reader);
  const first = await reader.read();
  const msg = JSON.parse(
    Buffer.from(first.value ?? [])
      .subarray(5)
      .toString(),
  ) as { event: { start: { pid: number } } };
  const pid = msg.event.start.pid;
  for (const signal of [2, 'SIGNAL_SIGHUP', 0, 'SIGNAL_UNSPECIFIED', 99999999999]) {
    const r = await unary('process.Process/SendSignal', JSON.stringify({ process: { pid }, signal }));
    assert.equal(r.json.code, 'invalid_argument', `signal ${signal}`);
  }
  const upd = await unary(
    'process.Process/Update',
    JSON.stringify({ process: { pid }, pty: { size: { cols: 10, rows: 10 } } }),
  );
  assert.equal(upd.json.code, 'failed_precondition', 'no PTY to resize');
  const inp = await unary(
    'process.Process/SendInput',
    JSON.stringify({ process: { tag: 'victim' }, input: { stdin: 'aGk=' } }),
  );
  assert.deepEqual(inp, { status: 200, json: {} }, 'stdin defaults to on when the request does not say');
  const list = await unary('process.Process/List', '{}');
  assert.ok(JSON.stringify(list.json).includes(`"pid":${pid}`));
  assert.deepEqual(
    await unary('process.Process/SendSignal', JSON.stringify({ process: { tag: 'victim' }, signal: 'SIGNAL_SIGTERM' })),
    { status: 200, json: {} },
  );
  let rest = '';
  for (;;) {
    const c = await reader.read();
    if (c.done) break;
    rest += Buffer.from(c.value).toString('latin1');
  }
  assert.match(rest, /"end":\{"exitCode":-1,"exited":false,"status":"signal: terminated"\}/);
  await healthy();
});

test('paths: NUL, overlong, not a directory, FIFOs and devices in /files', async () => {
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  writeFileSync(join(dir, 'plain'), 'x');
  assert.equal(
    (await unary('filesystem.Filesystem/Stat', JSON.stringify({ path: 'a\u0000b' }))).json.code,
    'invalid_argument',
  );
  assert.equal(
    (await unary('filesystem.Filesystem/Stat', JSON.stringify({ path: `/${'a'.repeat(5000)}` }))).json.code,
    'invalid_argument',
  );
  assert.equal((await unary('filesystem.Filesystem/Stat', JSON.stringify({ path: '' }))).json.code, 'invalid_argument');
  assert.equal(
    (await unary('filesystem.Filesystem/Remove', JSON.stringify({ path: '/../..' }))).json.code,
    'invalid_argument',
  );
  assert.equal(
    (await unary('filesystem.Filesystem/ListDir', JSON.stringify({ path: join(dir, 'plain') }))).json.code,
    'invalid_argument',
  );
  assert.equal(
    (await unary('filesystem.Filesystem/MakeDir', JSON.stringify({ path: join(dir, 'plain', 'sub') }))).json.code,
    'invalid_argument',
  );
  const w = await stream('filesystem.Filesystem/WatchDir', envelope(0, JSON.stringify({ path: join(dir, 'plain') })));
  assert.equal(w.end?.error?.code, 'invalid_argument');
  assert.equal((await unary('filesystem.Filesystem/GetWatcherEvents', '{"watcherId":"nope"}')).json.code, 'not_found');

  const get = (p: string) => fetch(`${agent.url}/files?path=${encodeURIComponent(p)}`);
  assert.equal((await get(fifo)).status, 400, 'a FIFO is refused, not waited on');
  assert.equal((await get('/dev/zero')).status, 400, 'a device is refused, not streamed forever');
  assert.equal((await get(dir)).status, 400);
  assert.equal((await get('a\u0000b')).status, 400);
  assert.equal((await fetch(`${agent.url}/files`)).status, 400);
  assert.equal((await fetch(`${agent.url}/files?path=/etc/shadow&username=nobody`)).status, 403);
  assert.equal((await fetch(`${agent.url}/files?path=/etc/hostname&username=no-such-user`)).status, 401);
  assert.equal(
    (await fetch(`${agent.url}/files?path=/etc/hostname&username=${encodeURIComponent('../x')}`)).status,
    401,
  );
  const post = (p: string, body: string | FormData, headers: Record<string, string> = {}) =>
    fetch(`${agent.url}/files?${p}`, { method: 'POST', body, headers });
  assert.equal(
    (await post(`path=${encodeURIComponent(fifo)}`, 'x', { 'Content-Type': 'application/octet-stream' })).status,
    400,
  );
  assert.equal(
    (await post('', 'x', { 'Content-Type': 'application/octet-stream' })).status,
    400,
    'octet-stream needs a path',
  );
  assert.equal((await post('', 'x', { 'Content-Type': 'text/plain' })).status, 400);
  assert.equal((await post('', 'x', { 'Content-Type': 'multipart/form-data' })).status, 400, 'no boundary');
  assert.equal(
    (
      await post('', '--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\ntrunc', {
        'Content-Type': 'multipart/form-data; boundary=b',
      })
    ).status,
    400,
    'a truncated multipart body',
  );
  const f = new FormData();
  f.append('file', new Blob(['x']), '/root/escape-by-nobody');
  assert.equal((await post('username=nobody', f)).status, 403);
  const gzBad = await post(`path=${encodeURIComponent(join(dir, 'gz'))}`, 'not gzip', {
    'Content-Type': 'application/octet-stream',
    'Content-Encoding': 'gzip',
  });
  assert.equal(gzBad.status, 400);
  await healthy();
});

test('/init validates what it is given', async () => {
  const init = (body: string) =>
    fetch(`${agent.url}/init`, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });
  assert.equal((await init('{')).status, 400);
  assert.equal((await init('{"envVars":{"A=B":"x"}}')).status, 400);
  assert.equal((await init('{"envVars":{"A":5}}')).status, 400);
  assert.equal((await init('{"defaultUser":"no-such-user"}')).status, 400);
  assert.equal((await init('{"defaultWorkdir":"relative"}')).status, 400);
  assert.equal((await init('{"timestamp":"yesterday"}')).status, 400);
  assert.equal((await init(JSON.stringify({ accessToken: 'a\nb' }))).status, 400);
  assert.equal((await init('x'.repeat(2 << 20))).status, 413);
  // vireo's entropy field: base64 of 1-512 bytes, else 400 (a good one is credited by the guest's kernel).
  assert.equal((await init('{"vireoEntropy":"not base64!"}')).status, 400);
  assert.equal((await init('{"vireoEntropy":""}')).status, 400);
  assert.equal((await init(JSON.stringify({ vireoEntropy: Buffer.alloc(513).toString('base64') }))).status, 400);
  assert.equal((await init(JSON.stringify({ vireoEntropy: 'A'.repeat(4000) }))).status, 400);
  assert.equal((await fetch(`${agent.url}/init`)).status, 405);
  assert.deepEqual(await (await fetch(`${agent.url}/envs`)).json(), {}, 'nothing was half-applied');
  await healthy();
});

test('one kept-alive Unix-socket connection (the vsock code path) carries streams after requests with bodies', async () => {
  const socketPath = join(dir, 'agent.sock');
  const keep = new Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set<unknown>();
  const call = (path: string, body: Buffer | string, type: string) =>
    new Promise<{ status: number; body: Buffer; reused: boolean }>((resolve, reject) => {
      const req = request(
        { socketPath, path, method: 'POST', agent: keep, headers: { 'Content-Type': type } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), reused: req.reusedSocket }),
          );
        },
      );
      req.on('socket', (s) => sockets.add(s));
      req.on('error', reject);
      req.end(body);
    });
  const echo = envelope(0, JSON.stringify({ process: { cmd: '/bin/echo', args: ['kept'] } }));
  for (let i = 0; i < 3; i++) {
    const init = await call('/init', JSON.stringify({ envVars: { N: String(i) } }), 'application/json');
    assert.equal(init.status, 204);
    const r = await call('/process.Process/Start', echo, 'application/connect+json');
    const text = r.body.toString('latin1');
    assert.match(text, /"stdout":"a2VwdAo="/, `round ${i}: ${JSON.stringify(text)}`);
    assert.match(text, /"end":\{"exitCode":0/, `round ${i}`);
    assert.ok(r.reused, `round ${i} ran on the kept-alive connection`);
  }
  assert.equal(sockets.size, 1);
  keep.destroy();
  await healthy();
});

test('garbage on the socket gets an HTTP error; the agent still answers', async () => {
  for (const junk of [
    '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03',
    'GET / HTTP/9.9\r\n\r\n',
    `POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n`,
    `GET /${'a'.repeat(100_000)} HTTP/1.1\r\n\r\n`,
  ]) {
    const reply = await new Promise<string>((resolve) => {
      const s = createConnection(agent.port, '127.0.0.1');
      let got = '';
      s.on('data', (d) => {
        got += d.toString('latin1');
      });
      s.on('error', () => resolve(got));
      s.on('close', () => resolve(got));
      s.write(junk);
      setTimeout(() => s.end(), 200);
    });
    assert.match(reply, /^HTTP\/1\.1 [45]\d\d/, JSON.stringify(junk.slice(0, 30)));
  }
  await healthy();
});
