/**
 * sb.getHost's forwarder (src/sandbox/port-forward.ts), host side: a loopback listener whose
 * connections become HTTP CONNECT tunnels on fresh hybrid vsock streams. The agent's side of CONNECT
 * is played here by node:http's own 'connect' handling in front of a TCP echo server (the guest port);
 * the tunnel carries bytes both ways, half-closes, a refused port and a silent agent fail cleanly.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { hybridVsockEndpoint } from '../src/agent/connector.js';
import { AgentError } from '../src/agent/errors.js';
import { forwardPort, tunnel } from '../src/sandbox/port-forward.js';
import { type HybridVsockFront, hybridVsockFront, unixTarget } from './support/agent-fronts.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-forward-'));
let echo: Server;
let echoPort = 0;
let agentish: HttpServer;
let front: HybridVsockFront;
const asked: { target: string; token: string | undefined }[] = [];

before(async () => {
  echo = createServer((s) => {
    s.on('data', (d) => s.write(Buffer.from(d.toString().toUpperCase())));
    s.on('end', () => s.end('BYE'));
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  echoPort = (echo.address() as { port: number }).port;
  agentish = createHttpServer();
  agentish.on('connect', (req, client: Socket, head) => {
    const target = req.url ?? '';
    asked.push({ target, token: req.headers['x-access-token'] as string | undefined });
    const m = /^127\.0\.0\.1:([0-9]+)$/.exec(target);
    const port = Number(m?.[1]);
    if (port === 9) {
      client.end('HTTP/1.1 502 Bad Gateway\r\n\r\n');
      return;
    }
    if (port === 10) return; // never answers
    const up = connect({ host: '127.0.0.1', port: port === 7 ? echoPort : port }, () => {
      client.write('HTTP/1.1 200 OK\r\n\r\n');
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
  });
  await new Promise<void>((r) => agentish.listen(join(dir, 'agent.sock'), r));
  front = await hybridVsockFront(join(dir, 'vsock'), unixTarget(join(dir, 'agent.sock')));
});

after(async () => {
  await front.close();
  agentish.close();
  echo.close();
  rmSync(dir, { recursive: true, force: true });
});

const opts = { connectTimeoutMs: 500, accessToken: 'tok' };

test('each connection to the host address is a tunnel to the guest port: bytes both ways, then the close', async () => {
  const f = await forwardPort(hybridVsockEndpoint(front.path), 7, opts);
  try {
    assert.match(f.address, /^127\.0\.0\.1:[0-9]+$/);
    const talk = (text: string) =>
      new Promise<string>((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: f.hostPort });
        let got = '';
        s.on('data', (d) => {
          got += d.toString();
        });
        s.on('end', () => resolve(got));
        s.on('error', reject);
        s.end(text);
      });
    const [a, b] = await Promise.all([talk('hello'), talk('second')]);
    assert.equal(a, 'HELLOBYE');
    assert.equal(b, 'SECONDBYE');
    assert.deepEqual(asked.slice(-2), [
      { target: '127.0.0.1:7', token: 'tok' },
      { target: '127.0.0.1:7', token: 'tok' },
    ]);
  } finally {
    await f.close();
  }
});

test('a port the agent will not open is refused; one it never answers times out', async () => {
  const ep = hybridVsockEndpoint(front.path);
  await assert.rejects(tunnel(ep, 9, opts), (e: unknown) => e instanceof AgentError && /HTTP 502/.test(e.message));
  const t0 = performance.now();
  await assert.rejects(
    tunnel(ep, 10, opts),
    (e: unknown) => e instanceof AgentError && e.code === 'VIREO_ERR_AGENT_TIMEOUT',
  );
  assert.ok(performance.now() - t0 < 1500);
  // Through the listener, the client's connection is closed and the error reported.
  const errors: AgentError[] = [];
  const f = await forwardPort(ep, 9, { ...opts, onError: (e) => errors.push(e) });
  try {
    await new Promise<void>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: f.hostPort });
      s.on('close', () => resolve());
      s.on('error', () => undefined);
    });
    assert.equal(errors.length, 1);
  } finally {
    await f.close();
  }
});

test('guest ports outside 1-65535 are refused before anything is opened', async () => {
  for (const p of [0, 65536, 1.5, -1])
    await assert.rejects(forwardPort(hybridVsockEndpoint(front.path), p, opts), /out of range/);
});
