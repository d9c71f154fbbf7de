/**
 * CONNECT tunnels through the guest agent (run on the host): `CONNECT 127.0.0.1:PORT` to the agent,
 * over its Unix socket (the raw-socket code that serves vsock in a guest) and over TCP, reaches a TCP
 * server on the loopback; bytes go both ways (8 MiB checksummed), each direction ends on its own, and
 * refusals have their statuses: 502 for a closed port, 403 off the loopback or at the agent itself,
 * 400 for bad ports and request lines, 401 without the token, 503 past the tunnel cap. Opening and
 * closing many tunnels leaves the agent's descriptor count where it was.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type RunningAgent, startAgent } from './support/agent.js';

let agent: RunningAgent;
let dir: string;
let sock: string;
let echo: Server;
let echoPort: number;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vireo-agent-forward-'));
  sock = join(dir, 'agent.sock');
  agent = await startAgent({ unixSocket: sock });
  echo = createEcho();
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  const a = echo.address();
  echoPort = typeof a === 'object' && a ? a.port : 0;
});

/** Echoes every byte; at the client's end it answers "bye:<bytes seen>" and ends its side too. */
function createEcho(): Server {
  return createServer({ allowHalfOpen: true }, (s) => {
    let n = 0;
    s.on('data', (d: Buffer) => {
      n += d.length;
      s.write(d);
    });
    s.on('end', () => s.end(`bye:${n}`));
    s.on('error', () => s.destroy());
  });
}

after(async () => {
  const alive = agent.proc.exitCode === null;
  await agent.stop();
  await new Promise((r) => echo.close(r));
  rmSync(dir, { recursive: true, force: true });
  assert.ok(alive, `the agent died: ${agent.log()}`);
});

interface Answer {
  status: number;
  /** The rest of the response: the tunnel's first bytes after a 200, the error body otherwise. */
  rest: Buffer;
  socket: Socket;
}

function dialAgent(via: 'unix' | 'tcp'): Socket {
  return via === 'unix'
    ? createConnection({ path: sock, allowHalfOpen: true })
    : createConnection({ host: '127.0.0.1', port: agent.port, allowHalfOpen: true });
}

/** Sends raw bytes as the request and reads the answer's status line and headers. */
function rawConnect(request: string | Buffer, via: 'unix' | 'tcp' = 'unix'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = dialAgent(via);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer to ${String(request).slice(0, 60)}`));
    }, 10_000);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      const m = /^HTTP\/1\.1 (\d{3}) /.exec(buf.subarray(0, end).toString());
      if (!m) return reject(new Error(`bad answer: ${buf.toString()}`));
      resolve({ status: Number(m[1]), rest: buf.subarray(end + 4), socket });
    };
    socket.on('data', onData);
    socket.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.write(request);
  });
}

function connect(target: string, headers: Record<string, string> = {}, via: 'unix' | 'tcp' = 'unix') {
  const h = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  return rawConnect(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n${h}\r\n`, via);
}

/** Reads the socket to its end (after what rawConnect already read). */
function readToEnd(a: Answer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts = [a.rest];
    a.socket.on('data', (d: Buffer) => parts.push(d));
    a.socket.on('end', () => resolve(Buffer.concat(parts)));
    a.socket.on('error', reject);
    a.socket.resume();
  });
}

/** The error answer's body: one line of JSON with the message; the agent closes the connection. */
async function refused(a: Answer): Promise<string> {
  const body = (await readToEnd(a)).toString();
  a.socket.destroy();
  assert.ok(!body.includes('\n'), `one line: ${body}`);
  return (JSON.parse(body) as { message: string }).message;
}

function fdCount(): number {
  return readdirSync(`/proc/${agent.proc.pid}/fd`).length;
}

async function healthy() {
  assert.equal((await fetch(`${agent.url}/health`)).status, 204);
}

test('a tunnel carries bytes both ways, over the Unix socket and over TCP, to IPv4 and IPv6 loopback', async () => {
  const echo6 = createEcho();
  await new Promise<void>((r) => echo6.listen(0, '::1', r));
  const a6 = echo6.address();
  const port6 = typeof a6 === 'object' && a6 ? a6.port : 0;
  for (const via of ['unix', 'tcp'] as const) {
    for (const target of [
      `127.0.0.1:${echoPort}`,
      `localhost:${echoPort}`,
      `LocalHost:${echoPort}`,
      `[::1]:${port6}`,
    ]) {
      const a = await connect(target, {}, via);
      assert.equal(a.status, 200, `${via} ${target}`);
      const got = readToEnd(a);
      a.socket.write('ping ');
      a.socket.end('pong');
      assert.equal((await got).toString(), 'ping pongbye:9', `${via} ${target}`);
      a.socket.destroy();
    }
  }
  await new Promise((r) => echo6.close(r));
  await healthy();
});

test('8 MiB each way arrive whole (checksummed)', async () => {
  const data = randomBytes(8 << 20);
  const a = await connect(`127.0.0.1:${echoPort}`);
  assert.equal(a.status, 200);
  const got = readToEnd(a);
  a.socket.end(data);
  const back = await got;
  const tail = Buffer.from(`bye:${data.length}`);
  assert.equal(back.length, data.length + tail.length);
  assert.deepEqual(back.subarray(data.length), tail);
  const sum = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  assert.equal(sum(back.subarray(0, data.length)), sum(data));
  a.socket.destroy();
});

test('half-close: the client ends, the server sees EOF and its answer still arrives', async () => {
  const a = await connect(`127.0.0.1:${echoPort}`);
  assert.equal(a.status, 200);
  const got = readToEnd(a);
  a.socket.write('abc');
  await new Promise((r) => setTimeout(r, 50));
  a.socket.end(); // the write side only: the socket is half-open
  assert.equal((await got).toString(), 'abcbye:3');
  a.socket.destroy();

  // The other way round: the server ends first and the client can still send.
  const serverEnds = createServer({ allowHalfOpen: true }, (s) => {
    let n = 0;
    s.end('first;');
    s.on('data', (d: Buffer) => {
      n += d.length;
    });
    s.on('end', () => {
      serverEnds.emit('seen', n); // its write side closed first; what it still got is reported here
      s.destroy();
    });
  });
  await new Promise<void>((r) => serverEnds.listen(0, '127.0.0.1', r));
  const sa = serverEnds.address();
  const b = await connect(`127.0.0.1:${typeof sa === 'object' && sa ? sa.port : 0}`);
  assert.equal(b.status, 200);
  const seen = new Promise<number>((r) => serverEnds.once('seen', r));
  const first = await readToEnd(b); // the server's end arrives as EOF while ours is open
  assert.equal(first.toString(), 'first;');
  b.socket.end('still sending');
  assert.equal(await seen, 'still sending'.length);
  b.socket.destroy();
  await new Promise((r) => serverEnds.close(r));
});

test('bytes sent right after the CONNECT request go to the target', async () => {
  const a = await rawConnect(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: x\r\n\r\nearly bytes`);
  assert.equal(a.status, 200);
  const got = readToEnd(a);
  a.socket.end();
  assert.equal((await got).toString(), 'early bytesbye:11');
  a.socket.destroy();
});

test('a closed port is 502 with a one-line reason', async () => {
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const ca = closed.address();
  const port = typeof ca === 'object' && ca ? ca.port : 0;
  await new Promise((r) => closed.close(r));
  const a = await connect(`127.0.0.1:${port}`);
  assert.equal(a.status, 502);
  assert.match(await refused(a), /connection refused/);
});

test('targets off the loopback, and the agent itself, are 403', async () => {
  for (const host of ['10.0.0.1', '192.168.1.1', '8.8.8.8', '[fe80::1]', 'example.com', '0.0.0.0', '[::]']) {
    const a = await connect(`${host}:80`);
    assert.equal(a.status, 403, host);
    assert.match(await refused(a), /loopback/);
  }
  for (const port of [agent.port, 49983]) {
    const a = await connect(`127.0.0.1:${port}`);
    assert.equal(a.status, 403, `port ${port}`);
    assert.match(await refused(a), /agent's own/);
  }
  await healthy();
});

test('bad ports and request lines are 400', async () => {
  // The agent's own checks answer with a JSON message; Go's request parser already refuses some
  // (a port that is not a number) with its plain "400 Bad Request".
  for (const [t, why] of [
    ['127.0.0.1:0', /port must be 1 to 65535/],
    ['127.0.0.1:65536', /port must be 1 to 65535/],
    ['127.0.0.1:99999999999', /port must be 1 to 65535/],
    ['127.0.0.1:', /port must be 1 to 65535/],
    ['127.0.0.1', /host:port/],
    ['127.0.0.1:-1', /Bad Request/],
    ['127.0.0.1:http', /Bad Request/],
  ] as const) {
    const a = await connect(t);
    assert.equal(a.status, 400, t);
    const body = (await readToEnd(a)).toString();
    assert.match(body, why, t);
    assert.ok(!body.includes('\n'), `one line: ${body}`);
    a.socket.destroy();
  }
  for (const [req, status] of [
    ['CONNECT /path HTTP/1.1\r\nHost: x\r\n\r\n', 400],
    ['CONNECT  HTTP/1.1\r\n\r\n', 400],
    ['CONNECT 127.0.0.1:80 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc', 400],
    ['CONNECT \u0000\u0001\u0002 HTTP/1.1\r\n\r\n', 400],
    ['CONNECT 127.0.0.1:80\r\n\r\n', 400],
    ['CONNECT 127.0.0.1:80 HTTP/9.9\r\n\r\n', 505],
  ] as const) {
    const a = await rawConnect(req);
    assert.equal(a.status, status, JSON.stringify(req));
    a.socket.destroy();
  }
  // Garbage in place of a request: the agent answers 400 and stays up.
  const g = await rawConnect(Buffer.concat([Buffer.from('CONNECT '), randomBytes(200), Buffer.from('\r\n\r\n')]));
  assert.equal(g.status, 400);
  g.socket.destroy();
  await healthy();
});

test('many tunnels opened and closed leave no descriptors behind; the cap answers 503', async () => {
  const settle = async (want: number) => {
    const deadline = Date.now() + 5000;
    while (fdCount() > want && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    return fdCount();
  };
  const baseline = fdCount();
  for (let round = 0; round < 3; round++) {
    const tunnels = await Promise.all(Array.from({ length: 64 }, () => connect(`127.0.0.1:${echoPort}`)));
    const replies = tunnels.map(async (a, i) => {
      assert.equal(a.status, 200);
      const got = readToEnd(a);
      // half of them end cleanly; the other half are dropped mid-stream
      if (i % 2 === 0) {
        a.socket.end(`n${i}`);
        assert.equal((await got).toString(), `n${i}bye:${String(i).length + 1}`);
      } else {
        a.socket.write('x');
        a.socket.destroy(); // no 'end' comes after a destroy: got is left unsettled
        got.catch(() => {});
      }
      a.socket.destroy();
    });
    await Promise.all(replies);
  }
  assert.equal(await settle(baseline), baseline, 'descriptors after 192 tunnels');

  // Opened 32 at a time: 256 connects at once can fill the Unix socket's listen backlog on a loaded
  // host (net.core.somaxconn may be 128), and a full backlog answers a non-blocking connect EAGAIN.
  const held: Answer[] = [];
  for (let i = 0; i < 256; i += 32) {
    held.push(...(await Promise.all(Array.from({ length: 32 }, () => connect(`127.0.0.1:${echoPort}`)))));
  }
  for (const a of held) assert.equal(a.status, 200);
  const over = await connect(`127.0.0.1:${echoPort}`);
  assert.equal(over.status, 503);
  assert.match(await refused(over), /256 tunnels/);
  for (const a of held) a.socket.destroy();
  assert.equal(await settle(baseline), baseline, 'descriptors after the cap');
  const again = await connect(`127.0.0.1:${echoPort}`);
  assert.equal(again.status, 200);
  again.socket.destroy();
  assert.equal(await settle(baseline), baseline);
  await healthy();
});

// Last: /init sets a token for the rest of the agent's life.
test('after /init sets a token, CONNECT needs it (401 otherwise)', async () => {
  const init = await fetch(`${agent.url}/init`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ accessToken: 'tunnel-secret' }),
  });
  assert.equal(init.status, 204);
  for (const headers of [{}, { 'X-Access-Token': 'wrong' }, { 'X-Access-Token': '' }] as Record<string, string>[]) {
    const a = await connect(`127.0.0.1:${echoPort}`, headers);
    assert.equal(a.status, 401, JSON.stringify(headers));
    assert.match(await refused(a), /X-Access-Token/);
  }
  // A refusal that would have been 403 or 400 is 401 first: nothing is told without the token.
  const off = await connect('10.0.0.1:80');
  assert.equal(off.status, 401);
  off.socket.destroy();
  const a = await connect(`127.0.0.1:${echoPort}`, { 'X-Access-Token': 'tunnel-secret' });
  assert.equal(a.status, 200);
  const got = readToEnd(a);
  a.socket.end('ok');
  assert.equal((await got).toString(), 'okbye:2');
  a.socket.destroy();
  await healthy();
});
