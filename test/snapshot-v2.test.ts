/**
 * Format 2 snapshots, written before device state became named records, still restore: their raw
 * device layouts (known exactly, frozen in src/snapshot/v2.ts) are converted to format 3's records.
 * The fixture in test/fixtures/snapshot-v2/ was written by vireo at format 2 (commit 15e8b33): the
 * counter guest (modes64, cmdline "c") with 2 MiB of memory, virtio-rng and a balloon (1 MiB target,
 * no stats), paused at counter 1615 and snapshotted; the memory file is 2 MiB, mostly zero. Another
 * version is refused in one line that names it and the versions this vireo reads.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { VireoError } from '../src/common/errors.js';
import { encodeStateFile, SNAPSHOT_VERSION } from '../src/snapshot/format.js';
import { readSnapshotBody } from '../src/vmm/snapshot-body.js';
import { Vm } from '../src/vmm/vm.js';
import { repoRoot } from './support/cc.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const COUNTER = 0x1ff000;
const fixture = join(repoRoot, 'test', 'fixtures', 'snapshot-v2');
const v2State = join(fixture, 'counter.state');
const v2Mem = join(fixture, 'counter.mem');
const dir = mkdtempSync(join(tmpdir(), 'vireo-snap-v2-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The fixture's body as JSON, and a copy of the file with another header version or body. */
const rawBody = (): Record<string, unknown> => {
  const b = readFileSync(v2State);
  return JSON.parse(b.subarray(16, 16 + b.readUInt32LE(12)).toString('utf8')) as Record<string, unknown>;
};
function writeAs(name: string, version: number, body: unknown): string {
  const [head, json] = encodeStateFile(body) as [Buffer, Buffer, Buffer];
  // encodeStateFile writes (and signs) this vireo's version: put `version` in and sign again.
  head.writeUInt32LE(version, 8);
  const p = join(dir, name);
  writeFileSync(p, Buffer.concat([head, json, createHash('sha256').update(head).update(json).digest()]));
  return p;
}
const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

test('a format-2 body converts to format 3 records, exactly (no KVM needed)', () => {
  assert.equal(readFileSync(v2State).readUInt32LE(8), 2, 'the fixture is a format-2 file');
  assert.equal(SNAPSHOT_VERSION, 3);
  const body = readSnapshotBody(v2State);
  const d = body.devices;
  // The UART as Linux-free firmware left it: 8N1 at 9600 baud (DLL 12), OUT2, a connected line.
  assert.equal(d.serial.version, 1);
  assert.equal(d.serial.lcr, 0x03);
  assert.equal(d.serial.dll, 12);
  assert.equal(d.serial.mcr, 0x08);
  assert.equal(d.serial.msr, 0xb0);
  assert.equal(d.serial.rxFifo, '');
  assert.deepEqual(d.postCode, { version: 1, count: 0, last: -1, history: '' });
  assert.equal(d.i8042.commandByte, 0x45);
  assert.equal(d.i8042.pendingWrite, 'none');
  // CMOS: the memory sizes vireo wrote at boot (640 KiB base, 1 MiB extended of the 2 MiB).
  assert.equal(d.cmos.ram.slice(0x15 * 2, 0x17 * 2), '8002');
  assert.equal(d.cmos.ram.slice(0x17 * 2, 0x19 * 2), '0004');
  assert.deepEqual(
    d.acpiPm,
    { version: 1, pm1Status: 0, pm1Enable: 0, pm1Control: 1, resetRegister: 0 },
    'not in format 2: as at power-on',
  );
  assert.deepEqual(
    d.virtio.map((v) => [v.name, v.mmio.queues.length, v.side.device]),
    [
      ['virtio-rng', 1, { version: 1 }],
      ['virtio-balloon', 2, { version: 1, announcedTargetPages: null, statsRequestsSeen: null }],
    ],
  );
  assert.equal(
    d.virtio[1]?.mmio.config,
    '0001',
    'the balloon config space: num_pages 256 (1 MiB; trailing zeros dropped)',
  );
  assert.equal(d.balloon?.targetPages, 256);
  assert.deepEqual(d.balloon?.stats, {});
});

test('a damaged format-2 body is refused with the v2 field path; another version in one line naming both', () => {
  const b = rawBody();
  (b.devices as Record<string, unknown>).serial = 'AAAA';
  assert.throws(
    () => readSnapshotBody(writeAs('bad-v2.state', 2, b)),
    (e: unknown) =>
      e instanceof VireoError &&
      e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' &&
      /\(format 2\) has a bad body at \$\.devices\.serial: expected base64 of 4288 bytes/.test(e.message),
  );
  for (const v of [1, 4]) {
    const e = (() => {
      try {
        readSnapshotBody(writeAs(`v${v}.state`, v, rawBody()));
      } catch (x) {
        return x;
      }
      return undefined;
    })();
    assert.ok(e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_VERSION', String(e));
    assert.match(e.message, new RegExp(`has format version ${v}; this vireo reads versions 2 and 3`));
    assert.doesNotMatch(e.message, /\n/);
  }
});

test('the format-2 fixture restores and runs on; its next snapshot is format 3 and restores too', {
  skip,
}, async () => {
  const memBefore = sha(v2Mem);
  const atSnapshot = readFileSync(v2Mem).readBigUInt64LE(COUNTER);
  assert.equal(atSnapshot, 1615n);
  const vm = await Vm.restore({ statePath: v2State, memPath: v2Mem, serial: { kind: 'none' } });
  const mem = vm.memory;
  assert.ok(mem);
  assert.equal(mem.read64(COUNTER), atSnapshot, 'restored memory holds the counter as it was');
  await vm.resume();
  const t0 = Date.now();
  while (mem.read64(COUNTER) < atSnapshot + 1000n && Date.now() - t0 < 10_000) await sleep(5);
  assert.ok(mem.read64(COUNTER) >= atSnapshot + 1000n, 'the restored vCPU runs the same loop on');
  await vm.pause();
  const state = join(dir, 'v3.state');
  const memFile = join(dir, 'v3.mem');
  await vm.snapshot({ statePath: state, memPath: memFile });
  const frozen = mem.read64(COUNTER);
  await vm.stop();
  assert.equal(readFileSync(state).readUInt32LE(8), 3, 'written as format 3');
  const again = await Vm.restore({ statePath: state, memPath: memFile, serial: { kind: 'none' } });
  assert.equal(again.memory?.read64(COUNTER), frozen);
  await again.stop();
  assert.equal(sha(v2Mem), memBefore, 'the fixture memory is mapped privately, never written');
});
