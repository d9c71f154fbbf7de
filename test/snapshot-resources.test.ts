/**
 * The resource allocator's record in snapshots: a snapshot keeps each slot's transport and the
 * allocator's state; one written before the record existed (no `resources`, no transports) still
 * restores, with the same windows and GSIs derived, and its next snapshot carries the record; a
 * transport the record did not hand out is refused in one line.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { VireoError } from '../src/common/errors.js';
import { encodeStateFile } from '../src/snapshot/format.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const COUNTER = 0x1ff000;
const dir = mkdtempSync(join(tmpdir(), 'vireo-snap-res-'));
after(() => rmSync(dir, { recursive: true, force: true }));
type Obj = Record<string, unknown>;
const bodyOf = (p: string): Obj => {
  const b = readFileSync(p);
  return JSON.parse(b.subarray(16, 16 + b.readUInt32LE(12)).toString('utf8')) as Obj;
};
const slots = (b: Obj) => (b.devices as { virtio: Obj[] }).virtio;

test('transports and the allocator record; a snapshot from before them restores the same', { skip }, async () => {
  const statePath = join(dir, 'a.state');
  const memPath = join(dir, 'a.mem');
  const vm = await Vm.create({
    kernel: guestPath('modes64'),
    cmdline: 'c',
    memMiB: 16,
    rng: true,
    balloon: { amountMiB: 0, deflateOnOom: false, statsPollingIntervalS: 0 },
    serial: { kind: 'none' },
  });
  vm.start();
  await vm.pause();
  await vm.snapshot({ statePath, memPath });
  await vm.stop();
  const body = bodyOf(statePath);
  assert.deepEqual(
    slots(body).map((s) => [s.name, s.transport]),
    [
      ['virtio-rng', { kind: 'mmio', base: 0xd0000000, gsi: 5 }],
      ['virtio-balloon', { kind: 'mmio', base: 0xd0001000, gsi: 6 }],
    ],
  );
  assert.deepEqual(body.resources, {
    version: 1,
    gsis: [5, 6],
    mmio: [
      { base: 0xd0000000, size: 0x1000 },
      { base: 0xd0001000, size: 0x1000 },
    ],
  });

  // As this vireo wrote it before the allocator: no record, no transports.
  const old = structuredClone(body);
  delete old.resources;
  for (const s of slots(old)) delete s.transport;
  const oldState = join(dir, 'old.state');
  writeFileSync(oldState, Buffer.concat(encodeStateFile(old)));
  const r = await Vm.restore({ statePath: oldState, memPath, serial: { kind: 'none' }, resume: true });
  try {
    const mem = r.memory;
    assert.ok(mem);
    const c0 = mem.read64(COUNTER);
    const t0 = Date.now();
    while (mem.read64(COUNTER) === c0 && Date.now() - t0 < 5000) await sleep(5);
    assert.ok(mem.read64(COUNTER) > c0, 'the restored guest runs');
    await r.pause();
    const again = join(dir, 'again.state');
    await r.snapshot({ statePath: again, memPath: join(dir, 'again.mem') });
    const b2 = bodyOf(again);
    assert.deepEqual(b2.resources, body.resources, 'derived as the writer had them');
    assert.deepEqual(
      slots(b2).map((s) => s.transport),
      slots(body).map((s) => s.transport),
    );
  } finally {
    await r.stop();
  }

  // A transport the record did not hand out.
  const bad = structuredClone(body);
  (slots(bad)[1] as { transport: { gsi: number } }).transport.gsi = 7;
  const badState = join(dir, 'bad.state');
  writeFileSync(badState, Buffer.concat(encodeStateFile(bad)));
  await assert.rejects(
    Vm.restore({ statePath: badState, memPath, serial: { kind: 'none' } }),
    (e: unknown) =>
      e instanceof VireoError &&
      e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' &&
      /virtio-balloon's transport \(MMIO 0xd0001000, GSI 7\) is not one the snapshot's resources handed out/.test(
        e.message,
      ) &&
      !e.message.includes('\n'),
  );
  // Half a record: transports without the allocator's state.
  const half = structuredClone(body);
  delete half.resources;
  const halfState = join(dir, 'half.state');
  writeFileSync(halfState, Buffer.concat(encodeStateFile(half)));
  await assert.rejects(
    Vm.restore({ statePath: halfState, memPath, serial: { kind: 'none' } }),
    /at \$\.devices\.virtio\[0\]\.transport: unexpected \(the snapshot has no resources record\)/,
  );
});
