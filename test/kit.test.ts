/**
 * The guest kit: the cpio writer against its reader and against busybox's cpio, the outb tool, and
 * prepareKit end to end (Debian mirror the first time, the cache afterwards): the kernel, the
 * initramfs listing, module order, the /init script.
 *
 * Needs apt-get, apt-cache and dpkg-deb (Debian) and the Debian mirror the first time; it fails,
 * not skips, without them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AGENT_GUEST_PATH, AGENT_VSOCK_PORT, agentBinary, KIT_BASH_PATH, KIT_BASH_SHIM } from '../src/kit/agent.js';
import { modName, readModinfo } from '../src/kit/debian.js';
import { type CpioEntry, InitramfsBuilder, outbElf, readCpio, writeCpio } from '../src/kit/initramfs.js';
import { KIT_AGENT_STARTED, KIT_BANNER, KIT_MODULES, type Kit, prepareKit } from '../src/kit/kit.js';
import { KitError } from '../src/kit/util.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-kit-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('cpio newc', () => {
  test('what writeCpio writes, readCpio reads back: files, directories, symlinks, devices', () => {
    const entries: CpioEntry[] = [
      { type: 'dir', path: 'bin', mode: 0o755 },
      { type: 'file', path: 'bin/a', mode: 0o755, data: Buffer.from('x') },
      { type: 'file', path: 'bin/empty', mode: 0o644, data: new Uint8Array(0) },
      { type: 'file', path: 'bin/odd', mode: 0o600, data: Buffer.from('12345') },
      { type: 'symlink', path: 'bin/sh', target: '/bin/busybox' },
      { type: 'dir', path: 'dev', mode: 0o755 },
      { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    ];
    const img = writeCpio(entries);
    assert.equal(img.length % 512, 0);
    assert.equal(img.subarray(0, 6).toString(), '070701');
    assert.deepEqual(
      readCpio(img).map((e) => (e.type === 'file' ? { ...e, data: Buffer.from(e.data).toString() } : e)),
      entries.map((e) => (e.type === 'file' ? { ...e, data: Buffer.from(e.data).toString() } : e)),
    );
  });

  test('the builder creates parents first and refuses duplicates and bad paths', () => {
    const b = new InitramfsBuilder().file('a/b/c', 'x').symlink('/a/d', 'c');
    assert.deepEqual(
      b.list().map((e) => e.path),
      ['a', 'a/b', 'a/b/c', 'a/d'],
    );
    assert.throws(() => b.file('a/b/c', 'y'), KitError);
    assert.throws(() => b.file('a/../x', 'y'), KitError);
    assert.throws(() => readCpio(Buffer.from('garbage garbage garbage')), KitError);
  });
});

describe('outb', () => {
  test('is a valid static ELF that refuses bad arguments (exit 1) before touching any port', () => {
    const exe = join(tmp, 'outb');
    writeFileSync(exe, outbElf(), { mode: 0o755 });
    for (const args of [[], ['128'], ['x', '1'], ['128', '256'], ['70000', '1'], ['', '1']]) {
      const r = spawnSync(exe, args);
      assert.equal(r.error, undefined);
      assert.equal(r.status, 1, `outb ${args.join(' ')}`);
    }
  });
});

describe('prepareKit', () => {
  let kit: Kit;
  let entries: CpioEntry[];
  const byPath = new Map<string, CpioEntry>();
  before(async () => {
    const t0 = performance.now();
    kit = await prepareKit({ onProgress: (p) => process.stderr.write(`# kit: ${p.message}\n`) });
    process.stderr.write(`# prepareKit: ${(performance.now() - t0).toFixed(0)} ms (cached: ${kit.cached})\n`);
    const all = readFileSync(kit.initrd);
    entries = readCpio(all);
    // The guest sees the agent's overlay laid over the kit archive: its entries (the /init, modules a
    // kit built before they joined KIT_MODULES) win.
    const overlay = readCpio(all.subarray(readFileSync(kit.baseInitrd).length));
    for (const e of [...entries, ...overlay]) byPath.set(e.path, e);
  });

  test('the guest agent laid over the kit archive, with an /init that starts it before the shell', () => {
    const all = readFileSync(kit.initrd);
    const base = readFileSync(kit.baseInitrd);
    assert.ok(all.subarray(0, base.length).equals(base), 'the kit archive comes first, unchanged');
    const overlay = new Map(readCpio(all.subarray(base.length)).map((e) => [e.path, e]));
    const agent = overlay.get(AGENT_GUEST_PATH.slice(1));
    assert.ok(agent?.type === 'file' && agent.mode === 0o755);
    assert.ok(Buffer.from(agent.data).equals(readFileSync(agentBinary())), 'the binary scripts/build-agent.sh built');
    assert.equal(Buffer.from(agent.data).toString('latin1', 0, 4), '\x7fELF');
    const init = overlay.get('init');
    assert.ok(init?.type === 'file' && init.mode === 0o755);
    const script = Buffer.from(init.data).toString();
    const start = script.indexOf(`${AGENT_GUEST_PATH} --listen vsock:${AGENT_VSOCK_PORT} --set-clock`);
    assert.ok(start > 0 && start < script.indexOf('setsid cttyhack sh'), 'the agent starts before the shell');
    assert.ok(script.includes(KIT_AGENT_STARTED));
    assert.ok(script.indexOf('[ -n "$root" ] && switch_to_root') < start, 'not when a root file system takes over');
    // E2B's SDK runs `/bin/bash -l -c CMD`: the kit's /bin/bash is busybox ash under that name.
    const bash = overlay.get(KIT_BASH_PATH.slice(1));
    assert.ok(bash?.type === 'file' && bash.mode === 0o755);
    assert.equal(Buffer.from(bash.data).toString(), KIT_BASH_SHIM);
    assert.match(KIT_BASH_SHIM, /^#!\/bin\/sh\n(#.*\n)*exec \/bin\/sh "\$@"\n$/);
    assert.equal(byPath.get('bin/sh')?.type, 'symlink', "the base archive's sh (busybox) is what it runs");
  });

  test('a Debian cloud kernel (bzImage) and its modules tree', () => {
    assert.match(kit.kernelVersion, /^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
    const k = readFileSync(kit.kernel);
    assert.equal(k.toString('latin1', 0x202, 0x206), 'HdrS', 'Linux boot protocol header');
    assert.ok(existsSync(join(kit.modulesDir, 'kernel')));
    assert.ok(existsSync(join(kit.modulesDir, 'modules.builtin')));
    assert.ok(kit.packages.some((p) => p.name === `linux-image-${kit.kernelVersion}`));
    assert.ok(kit.packages.some((p) => p.name === 'busybox-static'));
  });

  test('the initramfs: busybox and its applets, /dev/console, outb, /init', () => {
    const bb = byPath.get('bin/busybox');
    assert.ok(bb?.type === 'file' && bb.mode === 0o755 && bb.data.length > 500_000);
    for (const a of [
      'bin/sh',
      'sbin/insmod',
      'bin/mount',
      'usr/bin/nproc',
      'bin/date',
      'usr/bin/setsid',
      'bin/cttyhack',
    ])
      assert.deepEqual(byPath.get(a), { type: 'symlink', path: a, target: '/bin/busybox' }, a);
    assert.deepEqual(byPath.get('dev/console'), { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 });
    const outb = byPath.get('bin/outb');
    assert.ok(outb?.type === 'file' && Buffer.from(outb.data).equals(outbElf()));
    const init = byPath.get('init');
    assert.ok(init?.type === 'file' && init.mode === 0o755);
    const script = Buffer.from(init.data).toString();
    assert.ok(script.startsWith('#!/bin/sh\n'));
    assert.ok(script.includes(`echo "${KIT_BANNER}: `));
    assert.ok(script.includes('setsid cttyhack sh'));
    // Every parent directory comes before its children.
    const seen = new Set<string>();
    for (const e of entries) {
      const parent = e.path.split('/').slice(0, -1).join('/');
      if (parent) assert.ok(seen.has(parent), `${e.path} before ${parent}`);
      seen.add(e.path);
    }
  });

  test('the virtio modules with their dependency closure, dependencies first, loaded in that order', () => {
    for (const m of KIT_MODULES) assert.ok(kit.modules.includes(modName(m)), m);
    const init = byPath.get('init');
    assert.ok(init?.type === 'file');
    const script = Buffer.from(init.data).toString();
    const loop = script.match(/^for k in (.*); do$/m)?.[1]?.split(' ') ?? [];
    assert.equal(loop.length, kit.modules.length);
    const loaded = new Set<string>();
    for (const [i, rel] of loop.entries()) {
      const e = byPath.get(`lib/modules/${kit.kernelVersion}/${rel}`);
      assert.ok(e?.type === 'file', rel);
      const info = readModinfo(e.data);
      const name = modName(info.get('name')?.[0] ?? '');
      assert.equal(name, kit.modules[i]);
      for (const d of (info.get('depends')?.[0] ?? '').split(',').filter((x) => x !== ''))
        assert.ok(loaded.has(modName(d)), `${name} needs ${d} loaded first`);
      loaded.add(name);
    }
    // Known facts of 6.1: virtio_net needs virtio_ring, virtio and net_failover.
    const vnet = loop.find((p) => p.endsWith('/virtio_net.ko'));
    assert.ok(vnet);
    const deps = readModinfo(readFileSync(join(kit.modulesDir, vnet)))
      .get('depends')?.[0]
      ?.split(',')
      .sort();
    assert.deepEqual(deps, ['net_failover', 'virtio', 'virtio_ring']);
  });

  test("busybox (from the image) lists the archive like our reader, and parses /init's syntax", () => {
    const bb = byPath.get('bin/busybox');
    const init = byPath.get('init');
    assert.ok(bb?.type === 'file' && init?.type === 'file');
    const exe = join(tmp, 'busybox');
    writeFileSync(exe, bb.data, { mode: 0o755 });
    writeFileSync(join(tmp, 'init'), init.data);
    const list = spawnSync(exe, ['cpio', '-t'], { input: readFileSync(kit.initrd), maxBuffer: 1 << 24 });
    assert.equal(list.status, 0, list.stderr.toString());
    assert.deepEqual(
      list.stdout.toString().trim().split('\n'),
      entries.map((e) => e.path),
    );
    const syntax = spawnSync(exe, ['sh', '-n', join(tmp, 'init')]);
    assert.equal(syntax.status, 0, syntax.stderr.toString());
  });

  test('a second call finds it in the cache', async () => {
    const t0 = performance.now();
    const again = await prepareKit();
    const ms = performance.now() - t0;
    process.stderr.write(`# prepareKit (cached): ${ms.toFixed(0)} ms\n`);
    assert.equal(again.cached, true);
    assert.equal(again.initrd, kit.initrd);
    assert.ok(ms < 10_000);
  });
});
