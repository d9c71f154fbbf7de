/**
 * The resource allocator (src/vmm/resources.ts): it hands out what the fixed scheme before it did (so
 * a snapshot without its record derives the same), round-trips its state, and refuses a record or a
 * restored transport that is not its own. And the registry (src/vmm/device-registry.ts): one entry
 * per kind, in slot order, each with what the VMM needs.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError, VireoError } from '../src/common/errors.js';
import { SchemaError } from '../src/common/schema.js';
import { DEVICE_KINDS, kindOfSlot } from '../src/vmm/device-registry.js';
import {
  checkResourcesState,
  DEVICE_GSIS,
  MMIO_POOL,
  ResourceAllocator,
  type ResourcesState,
} from '../src/vmm/resources.js';

const WINDOW = 0x1000;

describe('ResourceAllocator', () => {
  test('slot n gets GSI n of the free list and the n-th 4 KiB window: the scheme snapshots before it used', () => {
    const a = new ResourceAllocator();
    DEVICE_GSIS.forEach((gsi, n) => {
      assert.deepEqual(a.allocateMmioSlot(WINDOW), { kind: 'mmio', base: MMIO_POOL.start + n * WINDOW, gsi });
    });
    assert.throws(
      () => a.allocateMmioSlot(WINDOW),
      (e: unknown) =>
        e instanceof ConfigError && /too many virtio devices: vireo has IRQs for 7; remove some/.test(e.message),
    );
  });

  test('windows are first-fit, page-rounded, never overlapping', () => {
    const a = new ResourceAllocator();
    const x = a.allocateMmio(1);
    const y = a.allocateMmio(0x3000);
    const z = a.allocateMmio(WINDOW);
    assert.equal(x, MMIO_POOL.start);
    assert.equal(y, MMIO_POOL.start + WINDOW);
    assert.equal(z, MMIO_POOL.start + 4 * WINDOW);
    assert.throws(() => a.allocateMmio(MMIO_POOL.end - MMIO_POOL.start), ConfigError);
  });

  test('its state round-trips, and a restored allocator goes on where it stopped', () => {
    const a = new ResourceAllocator();
    a.allocateMmioSlot(WINDOW);
    a.allocateMmioSlot(WINDOW);
    const s = a.save();
    checkResourcesState(s, '$');
    assert.deepEqual(JSON.parse(JSON.stringify(s)), s, 'plain JSON');
    const b = ResourceAllocator.restore(s);
    assert.deepEqual(b.save(), s);
    assert.deepEqual(b.allocateMmioSlot(WINDOW), a.allocateMmioSlot(WINDOW));
  });

  test('a restored slot may claim only a transport the record handed out, once', () => {
    const a = new ResourceAllocator();
    const t = a.allocateMmioSlot(WINDOW);
    const b = ResourceAllocator.restore(a.save());
    const refused = (e: unknown): boolean =>
      e instanceof VireoError && e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' && !e.message.includes('\n');
    assert.throws(() => b.claim({ ...t, gsi: 6 }, WINDOW, 'virtio-rng'), refused);
    assert.throws(() => b.claim({ ...t, base: t.base + WINDOW }, WINDOW, 'virtio-rng'), refused);
    b.claim(t, WINDOW, 'virtio-rng');
    assert.throws(() => b.claim(t, WINDOW, 'virtio-balloon'), refused, 'not twice');
  });

  test('the record check refuses what the guest-facing side must never see', () => {
    const good: ResourcesState = { version: 1, gsis: [5], mmio: [{ base: MMIO_POOL.start, size: WINDOW }] };
    checkResourcesState(good, '$');
    const bad: [string, unknown, RegExp][] = [
      ['another version', { ...good, version: 2 }, /\$\.version: expected state version 1/],
      ['the PIT line', { ...good, gsis: [0] }, /\$\.gsis\[0\]: expected one of the device GSIs/],
      ['a GSI twice', { ...good, gsis: [5, 5] }, /\$\.gsis\[1\]: GSI 5 handed out twice/],
      ['a window below the pool', { ...good, mmio: [{ base: 0x1000, size: WINDOW }] }, /inside the MMIO device pool/],
      ['an unaligned window', { ...good, mmio: [{ base: MMIO_POOL.start + 1, size: WINDOW }] }, /page-aligned/],
      [
        'overlapping windows',
        {
          ...good,
          mmio: [
            { base: MMIO_POOL.start, size: 0x2000 },
            { base: MMIO_POOL.start + WINDOW, size: WINDOW },
          ],
        },
        /\$\.mmio\[1\]: overlaps mmio\[0\]/,
      ],
      ['an unknown field', { ...good, bdfs: [] }, /\$\.bdfs: unknown field/],
    ];
    for (const [name, v, re] of bad)
      assert.throws(
        () => checkResourcesState(v, '$'),
        (e: unknown) => e instanceof SchemaError && re.test(`${e.at}: ${e.why}`),
        name,
      );
  });
});

describe('the device registry', () => {
  test('one entry per kind, in the slot order snapshots rely on, each found by its slot names', () => {
    assert.deepEqual(
      DEVICE_KINDS.map((k) => [k.name, k.configKey]),
      [
        ['virtio-blk', 'drives'],
        ['virtio-net', 'nets'],
        ['virtio-rng', 'rng'],
        ['virtio-console', 'virtioConsole'],
        ['virtio-vsock', 'vsock'],
        ['virtio-balloon', 'balloon'],
        ['virtio-fs', 'shares'],
      ],
    );
    assert.equal(kindOfSlot('virtio-blk:rootfs')?.name, 'virtio-blk');
    assert.equal(kindOfSlot('virtio-rng')?.name, 'virtio-rng');
    assert.equal(kindOfSlot('virtio-gpu'), undefined);
  });

  test("each kind's configuration survives its snapshot form", () => {
    const config = {
      drives: [{ id: 'rootfs', path: '/d', readOnly: true }],
      nets: [{ id: 'eth0', tap: 'tap0' }],
      rng: true,
      virtioConsole: { output: { kind: 'none' as const } },
      vsock: { cid: 3, udsPath: '/v.sock' },
      balloon: { amountMiB: 1, deflateOnOom: false, statsPollingIntervalS: 0 },
      shares: [{ path: '/srv', tag: 'data', readOnly: true }],
    };
    const ctx = { serial: { kind: 'none' as const } };
    for (const k of DEVICE_KINDS) {
      const saved = JSON.parse(JSON.stringify(k.snapshot.save(k.config(config)) ?? null)) ?? undefined;
      const check = typeof k.snapshot.check === 'function' ? k.snapshot.check : k.snapshot.check.check;
      if (saved !== undefined) check(saved, '$');
      assert.deepEqual(k.snapshot.restore(saved, ctx), k.config(config), k.name);
      const none = k.snapshot.restore(k.snapshot.save(k.config({})), ctx);
      assert.equal(k.config({ [k.configKey]: none }), undefined, `${k.name}: a VM without one restores without one`);
    }
  });
});
