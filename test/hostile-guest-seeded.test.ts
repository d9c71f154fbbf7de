/**
 * A seeded hostile guest through real exits (issue 12 item 5): test/guests/hostile-guest.c, run by a
 * real `vireo run` with every virtio device it attaches natively, attacks them and the legacy ports for
 * 40 rounds from a fixed seed (rings and buffers outside RAM, on MMIO and on the rings themselves,
 * descriptor loops, huge lengths, avail index jumps, status out of order, feature nonsense, queues and
 * notifications that do not exist, configuration space out of range, register, MMIO and port storms,
 * well-formed chains with hostile requests), then resets each device and does one real operation on
 * it. The VMM must survive, every device must serve the well-behaved driver, the read-only disk image
 * and share must be unchanged, and vireo's counters must show that each device saw and refused the
 * malformed requests. `npm run fuzz -- --target hostile-guest` runs the same guest from random seeds.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { deviceCounters, type HostileRig, hostileRig, verdicts } from './support/hostile-guest.js';
import { kvmSkipReason } from './support/vireo.js';

const SEED = Number(process.env.HOSTILE_SEED ?? 0x5eed12);
const ROUNDS = 40;

describe('seeded hostile guest', { skip: kvmSkipReason() }, () => {
  let rig: HostileRig;
  before(async () => {
    rig = await hostileRig();
    if (!rig.net) process.stderr.write('hostile guest: passt is not installed; running without virtio-net\n');
  });
  after(() => rig?.close());

  test(`seed ${SEED}, ${ROUNDS} rounds: the VMM survives, every device serves a well-behaved driver afterwards`, async () => {
    const r = await rig.run(SEED, ROUNDS, 120_000);
    const problems = rig.judge(r);
    assert.deepEqual(problems, [], `${r.stdout}\n${r.stderr}`);

    const v = verdicts(r.stdout);
    assert.match(v.get('blk')?.[1] ?? '', /^read sector \d+$/);
    assert.match(v.get('fs')?.[1] ?? '', /^INIT major 7 minor \d+$/);
    assert.match(r.stdout, /^hostile-guest: virtio-console ok$/m, 'the console transmitted the well-behaved line');

    // Every device was driven into DEVICE_NEEDS_RESET by the attacks (and came back after a reset).
    const seen = /DEVICE_NEEDS_RESET seen: (.*)$/m.exec(r.stdout)?.[1] ?? '';
    for (const d of rig.devices) assert.match(seen, new RegExp(`\\b${d}=[1-9]\\d*\\b`), `${d} never needed a reset`);

    // vireo's side: each device refused malformed chains and counted its protocol errors.
    const c = deviceCounters(r.stderr);
    assert.ok(c, r.stderr);
    const of = (prefix: string): Record<string, number> => {
      const k = Object.keys(c).find((n) => n.startsWith(prefix));
      assert.ok(k, `no counters for ${prefix}: ${Object.keys(c).join(', ')}`);
      return c[k] as Record<string, number>;
    };
    const kinds = ['virtio-blk', 'virtio-rng', 'virtio-console', 'virtio-vsock', 'virtio-balloon', 'virtio-fs'];
    if (rig.net) kinds.push('virtio-net');
    for (const k of kinds) assert.ok((of(k).protocolErrors ?? 0) > 0, `${k}: ${JSON.stringify(of(k))}`);
    for (const k of kinds.filter((n) => n !== 'virtio-vsock'))
      assert.ok((of(k).malformed ?? 0) > 0, `${k} refused no malformed chain: ${JSON.stringify(of(k))}`);
    const blk = of('virtio-blk');
    assert.equal(blk.writeBytes, 0, 'nothing was written to the read-only disk');
    assert.ok((blk.writes ?? 0) > 0, 'the guest did try to write it');
    assert.ok((blk.readBytes ?? 0) >= 512, JSON.stringify(blk));
    const balloon = of('virtio-balloon');
    assert.ok((balloon.invalidPages ?? 0) > 0, 'page numbers outside RAM were refused');
    assert.ok((balloon.inflatedPages ?? 0) > 0, JSON.stringify(balloon));
    assert.ok((of('virtio-vsock').errors ?? 0) > 0, 'malformed vsock packets were refused');
  });
});
