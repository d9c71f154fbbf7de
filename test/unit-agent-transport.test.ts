/**
 * The guest agent's client transport (src/agent/): @connectrpc/connect's Connect protocol over node:http
 * over a hybrid vsock stream. The server is @connectrpc/connect's own router (test/support/agent-fronts.ts)
 * behind a stand-in for vireo's vsock socket (CONNECT line, OK answer): unary, server and client streams in
 * JSON and binary, errors, deadlines, the keepalive silence watch, the handshake's failures, limits.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { Code, ConnectError, type HandlerContext } from '@connectrpc/connect';
import { AgentClient, basicUser } from '../src/agent/client.js';
import { hybridVsockEndpoint } from '../src/agent/connector.js';
import { AgentError } from '../src/agent/errors.js';
import { Process, ProcessEventSchema, type StartRequest, StartResponseSchema } from '../src/agent/gen/process_pb.js';
import { connectServer, type HybridVsockFront, hybridVsockFront, unixTarget } from './support/agent-fronts.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-agent-transport-'));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let server: Server;
let front: HybridVsockFront;
const seen: { path: string; token: string | null; auth: string | null; keepalive: string | null }[] = [];

function note(ctx: HandlerContext) {
  seen.push({
    path: ctx.requestMethod + ' ' + ctx.method.name,
    token: ctx.requestHeader.get('x-access-token'),
    auth: ctx.requestHeader.get('authorization'),
    keepalive: ctx.requestHeader.get('keepalive-ping-interval'),
  });
}

/** Keepalive events every Keepalive-Ping-Interval seconds until `signal`, as envd sends them. */
async function* keepalives(ctx: HandlerContext, count: number) {
  const s = Number(ctx.requestHeader.get('keepalive-ping-interval') ?? '0');
  for (let i = 0; i < count && !ctx.signal.aborted; i++) {
    await sleep(s * 1000);
    yield create(StartResponseSchema, { event: { event: { case: 'keepalive', value: {} } } });
  }
}

before(async () => {
  const agentPath = join(dir, 'agent.sock');
  server = await connectServer(
    agentPath,
    (r) =>
      r.service(Process, {
        list(_req, ctx) {
          note(ctx);
          return {
            processes: [{ pid: 7, tag: 'web', config: { cmd: '/bin/sh', args: ['-c', 'x'], envs: { A: 'b' } } }],
          };
        },
        async *start(req: StartRequest, ctx) {
          note(ctx);
          const cmd = req.process?.cmd ?? '';
          yield create(StartResponseSchema, { event: { event: { case: 'start', value: { pid: 42 } } } });
          if (cmd === 'big') {
            yield create(StartResponseSchema, {
              event: { event: { case: 'data', value: { output: { case: 'stdout', value: new Uint8Array(2 << 20) } } } },
            });
            return;
          }
          if (cmd === 'quiet') {
            // Keepalives only, for a while: the stream stays up on them alone.
            yield* keepalives(ctx, 3);
          } else if (cmd === 'forever') {
            yield* keepalives(ctx, 1000);
          }
          for (const [i, text] of ['one\n', 'two\n', 'three\n'].entries()) {
            const output =
              i === 1
                ? { case: 'stderr' as const, value: Buffer.from(text) }
                : { case: 'stdout' as const, value: Buffer.from(text) };
            yield create(StartResponseSchema, { event: { event: { case: 'data', value: { output } } } });
          }
          yield create(StartResponseSchema, {
            event: create(ProcessEventSchema, {
              event: { case: 'end', value: { exitCode: 3, exited: true, status: 'exit status 3' } },
            }),
          });
        },
        async streamInput(reqs, ctx) {
          note(ctx);
          let got = '';
          for await (const r of reqs)
            if (r.event.case === 'data' && r.event.value.input?.input.case === 'stdin')
              got += Buffer.from(r.event.value.input.input.value).toString();
          if (got !== 'abcdef') throw new ConnectError(`got ${JSON.stringify(got)}`, Code.InvalidArgument);
          return {};
        },
        async sendSignal(req, ctx) {
          note(ctx);
          const pid = req.process?.selector.case === 'pid' ? req.process.selector.value : -1;
          if (pid === 999) {
            await sleep(2000);
            return {};
          }
          if (pid !== 42) throw new ConnectError(`process with pid ${pid} not found`, Code.NotFound);
          return {};
        },
      }),
    (req, res) => {
      if (req.url !== '/health') return false;
      res.writeHead(204).end();
      return true;
    },
  );
  front = await hybridVsockFront(join(dir, 'vsock.sock'), unixTarget(agentPath));
});

after(async () => {
  await front.close();
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

const client = (opts: { format?: 'json' | 'binary'; keepaliveGraceMs?: number; path?: string } = {}) =>
  new AgentClient({
    endpoint: hybridVsockEndpoint(opts.path ?? front.path),
    timeouts: {
      connectTimeoutMs: 2000,
      requestTimeoutMs: 3000,
      keepaliveIntervalS: 1,
      keepaliveGraceMs: opts.keepaliveGraceMs ?? 500,
    },
    accessToken: 'tok-1',
    format: opts.format,
  });

for (const format of ['json', 'binary'] as const) {
  describe(`Connect over hybrid vsock (${format})`, () => {
    test('a unary call: CONNECT 49983, the token and the user travel, the answer decodes', async () => {
      const before = front.ports.length;
      seen.length = 0;
      const c = client({ format });
      const r = await c.process.list({}, c.callOptions({ user: 'root' }));
      assert.equal(r.processes.length, 1);
      assert.equal(r.processes[0]!.pid, 7);
      assert.equal(r.processes[0]!.tag, 'web');
      assert.deepEqual(r.processes[0]!.config?.envs, { A: 'b' });
      assert.deepEqual(front.ports.slice(before), [49983]);
      assert.deepEqual(seen, [{ path: 'POST List', token: 'tok-1', auth: basicUser('root'), keepalive: null }]);
    });

    test('a server stream: every event in order, stdout and stderr apart, the keepalive asked for', async () => {
      seen.length = 0;
      const c = client({ format });
      const events: string[] = [];
      for await (const r of c.process.start({ process: { cmd: 'echo', args: [] } }, c.callOptions({ timeoutMs: 0 }))) {
        const e = r.event?.event;
        if (e?.case === 'start') events.push(`start ${e.value.pid}`);
        else if (e?.case === 'data')
          events.push(`${e.value.output.case} ${Buffer.from(e.value.output.value as Uint8Array).toString()}`);
        else if (e?.case === 'end') events.push(`end ${e.value.exitCode} ${e.value.status}`);
      }
      assert.deepEqual(events, ['start 42', 'stdout one\n', 'stderr two\n', 'stdout three\n', 'end 3 exit status 3']);
      assert.equal(seen[0]!.keepalive, '1');
    });

    test('a client stream: chunks arrive in order', async () => {
      const c = client({ format });
      async function* input() {
        yield {
          event: { case: 'start' as const, value: { process: { selector: { case: 'pid' as const, value: 42 } } } },
        };
        for (const s of ['ab', 'cd', 'ef'])
          yield {
            event: {
              case: 'data' as const,
              value: { input: { input: { case: 'stdin' as const, value: Buffer.from(s) } } },
            },
          };
      }
      await c.process.streamInput(input(), c.callOptions());
    });

    test("the agent's error keeps its code and message", async () => {
      const c = client({ format });
      await assert.rejects(
        c.process.sendSignal({ process: { selector: { case: 'pid', value: 5 } }, signal: 9 }, c.callOptions()),
        (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound && /pid 5 not found/.test(e.rawMessage),
      );
    });
  });
}

test('a unary call past its timeout fails with DeadlineExceeded on time', async () => {
  const c = client();
  const t0 = performance.now();
  await assert.rejects(
    c.process.sendSignal(
      { process: { selector: { case: 'pid', value: 999 } }, signal: 9 },
      c.callOptions({ timeoutMs: 300 }),
    ),
    (e: unknown) => e instanceof ConnectError && e.code === Code.DeadlineExceeded,
  );
  const took = performance.now() - t0;
  assert.ok(took >= 280 && took < 1500, `took ${took} ms`);
});

test('a stream kept up by keepalives alone survives past its interval and grace', async () => {
  const c = client({ keepaliveGraceMs: 300 });
  let n = 0;
  for await (const r of c.process.start({ process: { cmd: 'quiet' } }, c.callOptions({ timeoutMs: 0 })))
    if (r.event?.event.case === 'keepalive') n++;
  assert.equal(n, 3);
});

test('a stream that goes silent (the front stops forwarding) fails with VIREO_ERR_AGENT_SILENT', async () => {
  const c = client({ keepaliveGraceMs: 300 });
  const t0 = performance.now();
  let held = 0;
  await assert.rejects(
    (async () => {
      for await (const r of c.process.start({ process: { cmd: 'forever' } }, c.callOptions({ timeoutMs: 0 }))) {
        if (r.event?.event.case === 'keepalive' && held++ === 0) {
          front.hold(true);
        }
      }
    })(),
    (e: unknown) =>
      e instanceof ConnectError &&
      e.code === Code.DeadlineExceeded &&
      e.cause instanceof AgentError &&
      e.cause.code === 'VIREO_ERR_AGENT_SILENT',
  );
  front.hold(false);
  const took = performance.now() - t0;
  // One keepalive (1 s), then 1 s + 300 ms of silence.
  assert.ok(took >= 2200 && took < 4000, `took ${took} ms`);
});

test('a message over readMaxBytes is refused, not buffered', async () => {
  const c = new AgentClient({
    endpoint: hybridVsockEndpoint(front.path),
    // Binary and a long keepalive: encoding 2 MiB as JSON takes the test server a second or more on a
    // busy machine, which the silence watch would rightly call silence.
    timeouts: { connectTimeoutMs: 2000, requestTimeoutMs: 3000, keepaliveIntervalS: 10, keepaliveGraceMs: 500 },
    limits: { readMaxBytes: 1 << 20 },
    format: 'binary',
  });
  await assert.rejects(
    (async () => {
      for await (const _ of c.process.start({ process: { cmd: 'big' } }, c.callOptions({ timeoutMs: 0 }))) {
        /* read on */
      }
    })(),
    (e: unknown) => e instanceof ConnectError && e.code === Code.ResourceExhausted,
  );
});

describe('the hybrid vsock handshake', () => {
  test('a refused connection (no listener in the guest) is one clear error', async () => {
    front.refuseNext(1);
    const c = client();
    await assert.rejects(c.process.list({}, c.callOptions()), (e: unknown) => {
      assert.ok(e instanceof ConnectError && e.code === Code.Unavailable);
      assert.ok(e.cause instanceof AgentError && e.cause.code === 'VIREO_ERR_AGENT');
      assert.match(e.cause.message, /refused the connection/);
      return true;
    });
  });

  test('waitReady polls through refusals until the agent answers', async () => {
    front.refuseNext(3);
    const c = new AgentClient({
      endpoint: hybridVsockEndpoint(front.path),
      timeouts: { connectTimeoutMs: 1000, requestTimeoutMs: 1000, keepaliveIntervalS: 1, keepaliveGraceMs: 0 },
    });
    const before = front.ports.length;
    await c.waitReady({ timeoutMs: 2000, intervalMs: 20 });
    assert.equal(front.refusing(), 0, 'the three refusals were met first');
    assert.equal(front.ports.length, before + 1, 'then one connection got through');
    // And with the agent gone for good, it gives up at its deadline with the last reason.
    front.refuseNext(1000);
    await assert.rejects(
      c.waitReady({ timeoutMs: 300, intervalMs: 20 }),
      (e: unknown) =>
        e instanceof AgentError && e.code === 'VIREO_ERR_AGENT_TIMEOUT' && /refused the connection/.test(e.message),
    );
    front.refuseNext(0);
  });

  for (const [what, answer, re] of [
    ['a wrong answer', 'NO 1\n', /answered CONNECT with "NO 1"/],
    ['an endless line', 'x'.repeat(100), /over 32 bytes/],
  ] as const) {
    test(`${what} to CONNECT is refused`, async () => {
      const path = join(dir, `bad-${what.length}.sock`);
      const bad = createServer((s) => s.once('data', () => s.write(answer)));
      await new Promise<void>((r) => bad.listen(path, r));
      try {
        const c = client({ path });
        await assert.rejects(
          c.process.list({}, c.callOptions()),
          (e: unknown) => e instanceof ConnectError && e.cause instanceof AgentError && re.test(e.cause.message),
        );
      } finally {
        bad.close();
      }
    });
  }

  test('a socket that never answers CONNECT times out at connectTimeoutMs', async () => {
    const path = join(dir, 'mute.sock');
    const held: import('node:net').Socket[] = [];
    const mute = createServer((s) => held.push(s));
    await new Promise<void>((r) => mute.listen(path, r));
    try {
      const c = new AgentClient({
        endpoint: hybridVsockEndpoint(path),
        timeouts: { connectTimeoutMs: 250, requestTimeoutMs: 5000, keepaliveIntervalS: 1, keepaliveGraceMs: 0 },
      });
      const t0 = performance.now();
      await assert.rejects(
        c.process.list({}, c.callOptions()),
        (e: unknown) =>
          e instanceof ConnectError &&
          e.code === Code.DeadlineExceeded &&
          e.cause instanceof AgentError &&
          e.cause.code === 'VIREO_ERR_AGENT_TIMEOUT',
      );
      const took = performance.now() - t0;
      assert.ok(took >= 240 && took < 1500, `took ${took} ms`);
    } finally {
      for (const s of held) s.destroy();
      mute.close();
    }
  });
});
