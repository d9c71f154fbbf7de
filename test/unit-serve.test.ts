/**
 * vireo serve's pure parts, without sandboxes: template specs, the list query as E2B's SDK encodes it
 * (its client builds the URL here, so the encoding is the SDK's own), the /files signature against
 * the SDK's downloadUrl, and the port header.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Sandbox as E2BSandbox } from 'e2b';
import { parseListQuery } from '../src/serve/control.js';
import { HttpError, ServeError } from '../src/serve/errors.js';
import { fileSignature, portOf } from '../src/serve/proxy.js';
import { parseTemplate } from '../src/serve/templates.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-unit-serve-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('parseTemplate: NAME=KERNEL,INITRD[,ROOTFS], files checked, bad specs one line', () => {
  const k = join(dir, 'vmlinuz');
  const i = join(dir, 'initrd');
  const r = join(dir, 'rootfs.img');
  for (const f of [k, i, r]) writeFileSync(f, 'x');
  assert.deepEqual(parseTemplate(`base=${k},${i}`), {
    name: 'base',
    kernel: k,
    initrd: i,
    rootfs: undefined,
    cpus: 1,
    memMiB: 256,
  });
  assert.deepEqual(parseTemplate(`py=${k},,${r}`, { cpus: 2, memMiB: 512 }), {
    name: 'py',
    kernel: k,
    initrd: undefined,
    rootfs: r,
    cpus: 2,
    memMiB: 512,
  });
  for (const bad of ['base', '=k', `base=`, `base=${k},${i},${r},x`, `bad name=${k}`, `base=${join(dir, 'none')}`])
    assert.throws(
      () => parseTemplate(bad),
      (e: unknown) => e instanceof ServeError && !e.message.includes('\n'),
      bad,
    );
});

test('parseTemplate: NAME=DIR takes a template directory (its snapshot, cpus and memory); a bad one is one line', () => {
  const t = join(dir, 'tmpl');
  mkdirSync(t);
  const manifest = {
    vireoTemplate: 1,
    createdAt: new Date().toISOString(),
    kernel: '/k/vmlinuz',
    initrd: '/k/initrd',
    cmdline: 'console=ttyS0',
    cpus: 2,
    memMiB: 384,
    vsockCid: 3,
    state: 'state',
    memory: 'memory',
  };
  writeFileSync(join(t, 'template.json'), JSON.stringify(manifest));
  assert.deepEqual(parseTemplate(`snap=${t}`, { cpus: 1, memMiB: 256 }), {
    name: 'snap',
    kernel: '/k/vmlinuz',
    initrd: '/k/initrd',
    rootfs: undefined,
    cpus: 2,
    memMiB: 384,
    snapshot: t,
  });
  writeFileSync(join(t, 'template.json'), JSON.stringify({ ...manifest, memory: '/etc/passwd' }));
  assert.throws(
    () => parseTemplate(`snap=${t}`),
    (e: unknown) => e instanceof ServeError && /--template snap: .*memory/.test(e.message) && !e.message.includes('\n'),
  );
  const empty = join(dir, 'empty');
  mkdirSync(empty);
  assert.throws(() => parseTemplate(`snap=${empty}`), /no template\.json/);
});

test("parseListQuery reads the metadata filter exactly as the SDK's client encodes it", async () => {
  let seen: URL | undefined;
  const server = createServer((req, res) => {
    seen = new URL(req.url ?? '/', 'http://serve');
    res.writeHead(200, { 'Content-Type': 'application/json' }).end('[]');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const meta = { 'a b': 'c&d=e', 'ü/%': '100%', plain: 'x' };
  const opts = {
    apiKey: 'k'.repeat(20),
    apiUrl: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    query: { metadata: meta, state: ['running' as const, 'paused' as const] },
    limit: 5,
  };
  try {
    await E2BSandbox.list(opts).nextItems();
  } finally {
    server.close();
  }
  assert.ok(seen, 'the SDK called the service');
  const q = parseListQuery(seen);
  assert.deepEqual(q.filter, meta);
  assert.deepEqual(q.states, ['running', 'paused']);
  assert.equal(q.limit, 5);
  assert.throws(() => parseListQuery(new URL('http://x/v2/sandboxes?limit=0')), HttpError);
  assert.throws(() => parseListQuery(new URL('http://x/v2/sandboxes?order=up')), HttpError);
  assert.throws(() => parseListQuery(new URL('http://x/v2/sandboxes?nextToken=%2D1')), HttpError);
  assert.throws(() => parseListQuery(new URL('http://x/v2/sandboxes?startedAfter=yesterday')), HttpError);
});

test("fileSignature is the SDK's: its downloadUrl/uploadUrl signatures match", async () => {
  type Opts = ConstructorParameters<typeof E2BSandbox>[0];
  class Local extends E2BSandbox {
    constructor(o: Opts) {
      super(o);
    }
  }
  const token = 'tok-0123456789';
  const sb = new Local({
    sandboxId: 's1',
    envdAccessToken: token,
    envdVersion: '0.6.1',
    sandboxUrl: 'http://127.0.0.1:9',
  } as Opts);
  const down = new URL(await sb.downloadUrl('/tmp/a b.txt', { user: 'root' }));
  assert.equal(down.searchParams.get('signature'), fileSignature('/tmp/a b.txt', 'read', 'root', token));
  const up = new URL(await sb.uploadUrl('/tmp/x', { useSignatureExpiration: 60 }));
  const exp = up.searchParams.get('signature_expiration') ?? '';
  assert.equal(up.searchParams.get('signature'), fileSignature('/tmp/x', 'write', '', token, exp));
});

test('portOf: the envd port by default, 1 to 65535 otherwise', () => {
  assert.equal(portOf(undefined), 49983);
  assert.equal(portOf('8080'), 8080);
  for (const bad of ['0', '65536', '-1', '80a', ' 80', '1e3']) assert.throws(() => portOf(bad), HttpError, bad);
});
