/**
 * The agent's binary protobuf codec (application/proto, application/connect+proto), which Connect
 * clients use by default: messages built and read with @bufbuild/protobuf from the descriptors in the
 * pinned e2b SDK, against the same agent the SDK tests drive; and malformed protobuf refused.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { create, type DescMessage, fromBinary, type MessageShape, toBinary } from '@bufbuild/protobuf';
import { type RunningAgent, startAgent } from './support/agent.js';
import { envdMessage } from './support/envd-proto.js';

let agent: RunningAgent;
let dir: string;

before(async () => {
  agent = await startAgent();
  dir = mkdtempSync(join(tmpdir(), 'vireo-agent-binary-'));
});

after(async () => {
  await agent.stop();
  rmSync(dir, { recursive: true, force: true });
});

const T = (name: string) => envdMessage(name);

async function unary<O extends DescMessage>(method: string, body: Uint8Array, out: O): Promise<MessageShape<O>> {
  const r = await fetch(`${agent.url}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/proto', 'Connect-Protocol-Version': '1' },
    body,
  });
  const b = new Uint8Array(await r.arrayBuffer());
  if (r.status !== 200) throw new Error(`${method}: HTTP ${r.status} ${Buffer.from(b).toString()}`);
  assert.equal(r.headers.get('content-type'), 'application/proto');
  return fromBinary(out, b);
}

function envelope(payload: Uint8Array, flags = 0): Buffer {
  const h = Buffer.alloc(5);
  h[0] = flags;
  h.writeUInt32BE(payload.length, 1);
  return Buffer.concat([h, payload]);
}

async function stream<O extends DescMessage>(method: string, body: Uint8Array, out: O) {
  const r = await fetch(`${agent.url}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/connect+proto', 'Connect-Timeout-Ms': '20000' },
    body: envelope(body),
  });
  assert.equal(r.headers.get('content-type'), 'application/connect+proto');
  const buf = Buffer.from(await r.arrayBuffer());
  const messages: MessageShape<O>[] = [];
  let end: { error?: { code: string; message: string } } | undefined;
  for (let off = 0; off + 5 <= buf.length; ) {
    const len = buf.readUInt32BE(off + 1);
    const payload = buf.subarray(off + 5, off + 5 + len);
    if (buf[off]! & 2) end = JSON.parse(payload.toString());
    else messages.push(fromBinary(out, payload));
    off += 5 + len;
  }
  return { messages, end };
}

test('Start streams binary events: start, stdout, stderr, end with a negative exit code in sint32', async () => {
  const req = create(T('process.StartRequest'), {
    process: { cmd: '/bin/sh', args: ['-c', 'echo "$A"; echo err >&2; kill -9 $$'], envs: { A: 'from binary' } },
  });
  const { messages, end } = await stream(
    'process.Process/Start',
    toBinary(T('process.StartRequest'), req),
    T('process.StartResponse'),
  );
  assert.deepEqual(end, {});
  const events = messages.map((m) => (m as { event?: { event: { case?: string; value?: unknown } } }).event?.event);
  assert.equal(events[0]?.case, 'start');
  const out = events
    .flatMap((e) => (e?.case === 'data' ? [e.value as { output: { case: string; value: Uint8Array } }] : []))
    .map((d) => d.output)
    .map((o) => `${o.case}:${Buffer.from(o.value).toString()}`)
    .sort();
  assert.deepEqual(out, ['stderr:err\n', 'stdout:from binary\n']);
  const last = events.at(-1);
  assert.equal(last?.case, 'end');
  const e = last?.value as { exitCode: number; exited: boolean; status: string };
  assert.equal(e.exitCode, -1);
  assert.equal(e.exited, false);
  assert.equal(e.status, 'signal: killed');
});

test('unary calls: Stat and ListDir (int64 size, enum type, timestamp), MakeDir, List, Update errors', async () => {
  writeFileSync(join(dir, 'f.bin'), Buffer.alloc(123_456));
  const stat = await unary(
    'filesystem.Filesystem/Stat',
    toBinary(T('filesystem.StatRequest'), create(T('filesystem.StatRequest'), { path: join(dir, 'f.bin') })),
    T('filesystem.StatResponse'),
  );
  const entry = (stat as { entry?: { size: bigint; type: number; name: string; modifiedTime?: { seconds: bigint } } })
    .entry;
  assert.equal(entry?.name, 'f.bin');
  assert.equal(entry?.size, 123_456n);
  assert.equal(entry?.type, 1);
  assert.ok(entry?.modifiedTime && Math.abs(Number(entry.modifiedTime.seconds) - Date.now() / 1000) < 60);
  await unary(
    'filesystem.Filesystem/MakeDir',
    toBinary(
      T('filesystem.MakeDirRequest'),
      create(T('filesystem.MakeDirRequest'), { path: join(dir, 'sub', 'deep') }),
    ),
    T('filesystem.MakeDirResponse'),
  );
  const list = await unary(
    'filesystem.Filesystem/ListDir',
    toBinary(T('filesystem.ListDirRequest'), create(T('filesystem.ListDirRequest'), { path: dir, depth: 3 })),
    T('filesystem.ListDirResponse'),
  );
  const names = (list as unknown as { entries: { path: string; type: number }[] }).entries
    .map((e) => `${e.path}:${e.type}`)
    .sort();
  assert.deepEqual(names, [`${dir}/f.bin:1`, `${dir}/sub/deep:2`, `${dir}/sub:2`].sort());
  const procs = await unary('process.Process/List', new Uint8Array(0), T('process.ListResponse'));
  assert.ok(Array.isArray((procs as unknown as { processes: unknown[] }).processes));
});

test('malformed protobuf is invalid_argument, and the agent keeps answering', async () => {
  const bad: [string, number[]][] = [
    ['truncated varint', [0x08, 0xff]],
    ['length past the end', [0x0a, 0x10, 0x41]],
    ['varint over 10 bytes', [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]],
    ['field number 0', [0x02, 0x00]],
    ['wrong wire type for path', [0x08, 0x01]],
    ['group wire type', [0x0b, 0x0c]],
    ['invalid UTF-8 string', [0x0a, 0x02, 0xc3, 0x28]],
  ];
  for (const [what, bytes] of bad) {
    const r = await fetch(`${agent.url}/filesystem.Filesystem/Stat`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/proto' },
      body: new Uint8Array(bytes),
    });
    assert.equal(r.status, 400, what);
    assert.equal(((await r.json()) as { code: string }).code, 'invalid_argument', what);
  }
  // Unknown fields are skipped: path plus a field 99 of every wire type.
  const ok = Buffer.concat([
    Buffer.from([0x0a, 0x01, 0x2f]),
    Buffer.from([0x98, 0x06, 0x05, 0x99, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, 0x9a, 0x06, 0x01, 0x00, 0x9d, 0x06, 1, 2, 3, 4]),
  ]);
  const stat = await unary('filesystem.Filesystem/Stat', ok, T('filesystem.StatResponse'));
  assert.equal((stat as { entry?: { path: string } }).entry?.path, '/');
  const s = await stream('process.Process/Start', new Uint8Array([0x0a, 0x05, 0x0a]), T('process.StartResponse'));
  assert.equal(s.end?.error?.code, 'invalid_argument');
  assert.equal((await fetch(`${agent.url}/health`)).status, 204);
});
