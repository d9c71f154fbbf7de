/**
 * A native guest with a virtio-blk driver of its own (test/guests/blkfault.c) writes, flushes and
 * reads through real MMIO exits while the host's disk fails under it (issue 12 item 6): a raw image
 * and a qcow2 overlay on a 1 MiB tmpfs that fills up (ENOSPC), and EIO on writes, a flush and a read
 * from the tests' fault hook (VIREO_TEST_DISK_FAULTS, fault-disk.ts). The guest sees IOERR for
 * exactly those requests, every later one is served (the VMM stays up to the guest's own exit), the
 * device counters count them, what was answered OK is on the host file, and the qcow2 overlay is
 * clean for `qemu-img check`.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { guestPath } from './guests/build.js';
import { qemuCheck } from './support/qcow2.js';
import { kvmSkipReason, runVireo } from './support/vireo.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-guest-diskfaults-'));
const mounts: string[] = [];
after(() => {
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  rmSync(tmp, { recursive: true, force: true });
});

const KIB = 64;
const CH = KIB * 1024;

/** The guest's word i of chunk c (blkfault.c's word()). */
function chunk(c: number): Buffer {
  const b = Buffer.alloc(CH);
  for (let i = 0; i < CH / 4; i++)
    b.writeUInt32LE((Math.imul(c, 0x01000193) ^ Math.imul(i, 2654435761) ^ 0x5a5a0000) >>> 0, i * 4);
  return b;
}

interface Report {
  ok: number;
  ioerr: number;
  other: number;
  flush: string;
  readerr: number;
  bad: number;
  rewrite: number;
  map: string;
  counters: Record<string, number>;
}

/** Runs the guest on one drive; its report line and the drive's counters. */
function runGuest(drive: string, chunks: number, env: Record<string, string> = {}): Report {
  const r = runVireo(
    [
      'run',
      '--kernel',
      guestPath('blkfault'),
      '--mem',
      '16',
      '--drive',
      drive,
      '--cmdline',
      `chunks=${chunks} kib=${KIB} batch=4`,
    ],
    { env: { VIREO_VERBOSE: '1', ...env }, timeoutMs: 120_000 },
  );
  const what = `stdout: ${r.stdout}\nstderr: ${r.stderr}`;
  assert.equal(r.status, 0x55, `the guest ran to its own exit\n${what}`);
  const m = r.stdout.match(
    /blkfault cap=\d+ ok=(\d+) ioerr=(\d+) other=(\d+) flush=(\d,\d) readerr=(\d+) bad=(\d+) rewrite=(\d+) map=([OE?]+)/,
  );
  assert.ok(m, what);
  const c = r.stderr.match(/device counters (\{.*\})/);
  assert.ok(c, what);
  const counters = (JSON.parse(c[1] as string) as Record<string, Record<string, number>>)['virtio-blk:drive0'];
  assert.ok(counters, what);
  return {
    ok: Number(m[1]),
    ioerr: Number(m[2]),
    other: Number(m[3]),
    flush: m[4] as string,
    readerr: Number(m[5]),
    bad: Number(m[6]),
    rewrite: Number(m[7]),
    map: m[8] as string,
    counters,
  };
}

/** A 1 MiB tmpfs, or why there is none. */
function tinyFs(name: string): string | undefined {
  const at = join(tmp, name);
  mkdirSync(at);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', at], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  mounts.push(at);
  return at;
}

const kvm = kvmSkipReason();
const noMount = ((): string | undefined => {
  const at = join(tmp, 'probe');
  mkdirSync(at);
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', at], { encoding: 'utf8' });
  if (r.status !== 0) return `cannot mount a tmpfs (needs root): ${r.stderr.trim()}`;
  spawnSync('umount', [at]);
  return undefined;
})();
if (noMount) process.stdout.write(`# skipped the tmpfs tests: ${noMount}\n`);

describe('a native guest whose disk fails under it', { skip: kvm }, () => {
  test('raw image on a full tmpfs: IOERR past the free space (also on the pool), then FLUSH, reads and a rewrite are served', {
    skip: noMount,
  }, () => {
    const fs = tinyFs('raw') as string;
    const img = join(fs, 'disk.img');
    execFileSync('truncate', ['-s', '16M', img]);
    const rep = runGuest(`path=${img}`, 48);
    assert.ok(rep.ok >= 4 && rep.ioerr >= 24, `some chunks fit, most do not: ${rep.map}`);
    assert.equal(rep.ok + rep.ioerr, 48);
    assert.equal(rep.other, 0);
    assert.match(rep.map, /^O+E/, 'the first chunks fit');
    assert.equal(rep.flush, '0,0', 'FLUSH is served');
    assert.equal(rep.readerr, 0, 'every read is served');
    assert.equal(rep.bad, 0, 'what was answered OK reads back');
    assert.equal(rep.rewrite, 0, 'a write in place needs no new space');
    assert.equal(rep.counters.ioErrors, rep.ioerr, 'counted');
    assert.ok((rep.counters.offloaded ?? 0) > 0, 'requests ran on the I/O pool too');
    const file = readFileSync(img);
    [...rep.map].forEach((s, c) => {
      if (s === 'O') assert.ok(file.subarray(c * CH, (c + 1) * CH).equals(chunk(c)), `chunk ${c} is on the host file`);
    });
  });

  test('qcow2 overlay on a full tmpfs: IOERR, FLUSH served, qemu-img check clean, OK chunks and the base read back', {
    skip: noMount,
  }, () => {
    const fs = tinyFs('qcow2') as string;
    const base = join(tmp, 'base.img');
    const baseBytes = Buffer.alloc(16 << 20);
    for (let o = 0; o < baseBytes.length; o += 512) baseBytes.write(`base sector ${o / 512}`, o);
    writeFileSync(base, baseBytes);
    const img = join(fs, 'overlay.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', img]);
    const rep = runGuest(`path=${img}`, 48);
    assert.ok(rep.ok >= 4 && rep.ioerr >= 24, `some chunks fit, most do not: ${rep.map}`);
    assert.equal(rep.other, 0);
    assert.equal(rep.flush, '0,0', 'FLUSH is served: the metadata needs no space the writes did not take');
    assert.equal(rep.readerr, 0);
    assert.equal(rep.bad, 0);
    assert.equal(rep.rewrite, 0);
    assert.equal(rep.counters.ioErrors, rep.ioerr);
    const c = qemuCheck(img);
    assert.ok(c.clean, c.out);
    const raw = join(tmp, 'overlay.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', img, raw]);
    const content = readFileSync(raw);
    [...rep.map].forEach((s, k) => {
      if (s === 'O') assert.ok(content.subarray(k * CH, (k + 1) * CH).equals(chunk(k)), `chunk ${k}`);
    });
    assert.ok(content.subarray(48 * CH).equals(baseBytes.subarray(48 * CH)), 'past the chunks: the base');
  });

  test('EIO on one chunk, the first FLUSH and one read (the fault hook): exactly those fail, the rest is served', () => {
    const img = join(tmp, 'eio.img');
    execFileSync('truncate', ['-s', '16M', img]);
    const rep = runGuest(`path=${img}`, 24, {
      VIREO_TEST_DISK_FAULTS: `write:EIO@${5 * CH}-${6 * CH};flush:EIO#1;read:EIO@${16 * CH}-${16 * CH + 1}`,
    });
    assert.equal(rep.map, `${'O'.repeat(5)}E${'O'.repeat(18)}`);
    assert.equal(rep.flush, '1,0', 'the first FLUSH fails, the second is served');
    assert.equal(rep.readerr, 1);
    assert.equal(rep.bad, 0);
    assert.equal(rep.rewrite, 0);
    assert.equal(rep.counters.ioErrors, 3, 'a write, a flush and a read');
    assert.equal(rep.counters.writes, 25);
    const file = readFileSync(img);
    for (let c = 0; c < 24; c++)
      assert.ok(
        file.subarray(c * CH, (c + 1) * CH).equals(c === 5 ? Buffer.alloc(CH) : chunk(c)),
        c === 5 ? 'the failed chunk was not written' : `chunk ${c}`,
      );
  });
});
