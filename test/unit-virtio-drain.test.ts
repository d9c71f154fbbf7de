/**
 * The queue-drain helpers alone (src/devices/virtio/drain.ts), against the mock driver: notification
 * suppression as virtio 1.2 §2.7.10 puts it (used.flags NO_NOTIFY without VIRTIO_F_EVENT_IDX; with it
 * the flags left at 0 and avail_event moved only when re-arming), the re-check that catches a chain the
 * driver added between the device's last pop and its re-arm (the driver saw notifications off and will
 * not kick), a serve callback that throws, and one interrupt only when something was used. Also the
 * chain walk the copy helpers share.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { MiB } from '../src/common/address.js';
import type { VirtioContext } from '../src/devices/virtio/device.js';
import { drainQueue, KEPT, popOrArm, type ServeChain } from '../src/devices/virtio/drain.js';
import {
  type DescriptorChain,
  Queue,
  QueueError,
  VIRTQ_USED_F_NO_NOTIFY,
  walkChain,
} from '../src/devices/virtio/queue.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';
import { MockSplitQueue, RecordingMemory } from './support/mock-virtq.js';

const RING_BASE = 0x1000;
const BUF = 0x10000;
let mapping: GuestMemoryMapping;
let drv: GuestMemory;
let dev: HookedMemory;

/** The device's view of guest memory, recording accesses; `onWrite16` runs before each 16-bit store. */
class HookedMemory extends RecordingMemory {
  onWrite16: ((gpa: number, v: number) => void) | undefined;
  override write16(gpa: number, v: number): void {
    const hook = this.onWrite16;
    this.onWrite16 = undefined; // one shot: the hook's own driver writes go through drv anyway
    hook?.(gpa, v);
    this.onWrite16 = hook;
    super.write16(gpa, v);
  }
}

before(() => {
  mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: 1 * MiB }]);
  drv = new GuestMemory(mapping.descriptors);
  dev = new HookedMemory(mapping.descriptors);
});
after(() => mapping.release());

interface Rig {
  q: Queue;
  d: MockSplitQueue;
  ctx: VirtioContext;
  /** signalUsed calls, and the interrupts they raised (the transport's needsNotification). */
  signals: number;
  irqs: number;
  /** The used-ring fields' addresses. */
  flagsAddr: number;
  availEventAddr: number;
}

function rig(eventIdx: boolean, size = 8): Rig {
  drv.fill(0, 1 * MiB);
  dev.onWrite16 = undefined;
  const l = MockSplitQueue.packed(size, RING_BASE);
  const q = new Queue(l, { eventIdx, indirect: false });
  const r: Rig = {
    q,
    d: new MockSplitQueue(drv, l),
    signals: 0,
    irqs: 0,
    flagsAddr: l.used,
    availEventAddr: l.used + 4 + 8 * size,
    ctx: {
      mem: dev,
      queues: [q],
      features: 0n,
      config: new DataView(new ArrayBuffer(8)),
      signalUsed: (n) => {
        assert.equal(n, 0);
        r.signals++;
        if (q.needsNotification(dev)) r.irqs++; // what the MMIO transport does
      },
      signalConfig: () => assert.fail('no config change here'),
    },
  };
  dev.take();
  return r;
}

/** A one-buffer chain of `len` device-writable bytes at BUF + 256 * i. */
const add = (r: Rig, i: number, len = 16): number => {
  const head = r.d.addChain([{ addr: BUF + 256 * i, len, write: true }]);
  assert.ok(head !== undefined);
  return head;
};
const writesTo = (addr: number): number => dev.take().filter((a) => a.kind === 'write' && a.gpa === addr).length;
/** The driver's side of §2.7.10: does it kick after publishing avail idx `newIdx` (from `oldIdx`)? */
const driverKicks = (r: Rig, eventIdx: boolean, oldIdx: number, newIdx: number): boolean => {
  if (!eventIdx) return (r.d.usedFlags & VIRTQ_USED_F_NO_NOTIFY) === 0;
  const ev = r.d.availEvent;
  return ((newIdx - ev - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
};

describe('drainQueue: notification suppression', () => {
  test('without event idx: NO_NOTIFY while serving, flags 0 after, avail_event never written', () => {
    const r = rig(false);
    for (let i = 0; i < 3; i++) add(r, i);
    const flagsSeen: number[] = [];
    const used = drainQueue(r.ctx, 0, (c) => {
      flagsSeen.push(r.d.usedFlags);
      return c.writeLen;
    });
    assert.equal(used, 3);
    assert.deepEqual(flagsSeen, [VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY]);
    assert.equal(r.d.usedFlags, 0, 're-armed once the ring is empty');
    const log = dev.take();
    assert.equal(log.filter((a) => a.kind === 'write' && a.gpa === r.availEventAddr).length, 0);
    assert.deepEqual(
      r.d.takeUsed().map((e) => e.len),
      [16, 16, 16],
    );
    assert.equal(r.signals, 1, 'one interrupt for the batch');
    assert.equal(r.irqs, 1);
  });

  test('with event idx: flags never written; avail_event left behind while serving, then the next avail index', () => {
    const r = rig(true);
    r.d.setUsedEvent(0xffff); // the driver wants no interrupt yet (used_event far ahead)
    for (let i = 0; i < 3; i++) add(r, i);
    const eventSeen: number[] = [];
    drainQueue(r.ctx, 0, () => {
      eventSeen.push(r.d.availEvent);
      return 0;
    });
    assert.deepEqual(eventSeen, [0, 0, 0], 'avail_event does not follow the device while it drains');
    assert.equal(r.d.availEvent, 3, 'armed at the next index the device will read');
    assert.equal(writesTo(r.flagsAddr), 0, 'the device leaves used.flags alone with event idx');
    assert.equal(r.signals, 1);
    assert.equal(r.irqs, 0, 'used_event was not passed: the transport raises nothing');
  });

  test('a chain added while serving is taken in the same pass; the driver was not asked to kick', () => {
    for (const eventIdx of [false, true]) {
      const r = rig(eventIdx);
      add(r, 0);
      let kicked = false;
      const heads: number[] = [];
      drainQueue(r.ctx, 0, (c) => {
        heads.push(c.head);
        if (heads.length === 1) {
          const old = r.d.availIdx;
          add(r, 1);
          kicked = driverKicks(r, eventIdx, old, r.d.availIdx);
        }
        return 0;
      });
      assert.equal(heads.length, 2, `eventIdx=${eventIdx}`);
      assert.equal(kicked, false, `eventIdx=${eventIdx}: notifications were suppressed`);
    }
  });

  test('the re-check: a chain published just before the re-arm (no kick) is still served', () => {
    for (const eventIdx of [false, true]) {
      const r = rig(eventIdx);
      add(r, 0);
      let kicked: boolean | undefined;
      const armAddr = eventIdx ? r.availEventAddr : r.flagsAddr;
      // The driver publishes between the device's last pop (ring empty) and its re-arm store, and
      // looks at the suppression fields before that store lands: it sees them off and does not kick.
      dev.onWrite16 = (gpa, v) => {
        if (gpa !== armAddr || kicked !== undefined || (!eventIdx && v !== 0)) return;
        const old = r.d.availIdx;
        add(r, 1);
        kicked = driverKicks(r, eventIdx, old, r.d.availIdx);
      };
      const heads: number[] = [];
      const used = drainQueue(r.ctx, 0, (c) => {
        heads.push(c.head);
        return 0;
      });
      dev.onWrite16 = undefined;
      assert.equal(kicked, false, `eventIdx=${eventIdx}: the late chain came with no kick`);
      assert.equal(heads.length, 2, `eventIdx=${eventIdx}: the re-check found it`);
      assert.equal(used, 2);
      assert.equal(r.q.available(dev), 0);
      assert.equal(r.signals, 1);
      if (eventIdx) assert.equal(r.d.availEvent, 2);
      else assert.equal(r.d.usedFlags, 0);
    }
  });
});

describe('drainQueue: used elements and the interrupt', () => {
  test('an empty ring: re-armed, nothing used, no interrupt', () => {
    const r = rig(true);
    assert.equal(
      drainQueue(r.ctx, 0, () => assert.fail('nothing to serve')),
      0,
    );
    assert.equal(r.signals, 0);
    assert.equal(r.d.availEvent, 0);
  });

  test('a queue the driver did not enable is left alone', () => {
    const r = rig(false);
    assert.equal(
      drainQueue(r.ctx, 1, () => assert.fail('no queue')),
      0,
    );
    assert.equal(r.signals, 0);
    assert.equal(dev.take().length, 0);
  });

  test('kept chains raise no interrupt until returned; one returned out of turn counts', () => {
    const r = rig(false);
    add(r, 0);
    let kept: DescriptorChain | undefined;
    const keep: ServeChain = (c) => {
      if (kept !== undefined) r.q.pushUsed(dev, kept.head, 7); // the one kept before goes back now
      kept = c;
      return KEPT;
    };
    assert.equal(drainQueue(r.ctx, 0, keep), 0);
    assert.equal(r.signals, 0, 'nothing reached the used ring');
    assert.equal(r.q.pending, 1);
    const first = kept?.head;
    add(r, 1);
    assert.equal(drainQueue(r.ctx, 0, keep), 1);
    assert.equal(r.signals, 1);
    assert.deepEqual(r.d.takeUsed(), [{ id: first, len: 7 }]);
  });

  test('idle runs with the ring empty and notifications re-armed, before the one interrupt', () => {
    const r = rig(false);
    add(r, 0);
    add(r, 1);
    let held: DescriptorChain | undefined;
    const order: string[] = [];
    drainQueue(
      r.ctx,
      0,
      (c) => {
        if (held !== undefined) r.q.pushUsed(dev, held.head, 1);
        held = c;
        order.push('serve');
        return KEPT;
      },
      () => {
        assert.equal(r.d.usedFlags, 0, 're-armed before idle');
        assert.equal(r.signals, 0, 'idle comes before the signal');
        if (held !== undefined) r.q.pushUsed(dev, held.head, 2);
        order.push('idle');
      },
    );
    assert.deepEqual(order, ['serve', 'serve', 'idle']);
    assert.equal(r.signals, 1);
    assert.deepEqual(
      r.d.takeUsed().map((e) => e.len),
      [1, 2],
    );
  });

  test('a serve that throws: earlier chains stay used, its chain is neither returned nor served again', () => {
    const r = rig(false);
    const heads = [add(r, 0), add(r, 1), add(r, 2)];
    const boom = new Error('backend exploded');
    const served: number[] = [];
    assert.throws(
      () =>
        drainQueue(r.ctx, 0, (c) => {
          served.push(c.head);
          if (c.head === heads[1]) throw boom;
          return 3;
        }),
      (e) => e === boom,
    );
    assert.deepEqual(served, [heads[0], heads[1]]);
    assert.deepEqual(r.d.takeUsed(), [{ id: heads[0], len: 3 }], 'the failed chain got no completion');
    assert.equal(r.q.pending, 1, 'it stays in flight until the reset that follows');
    assert.equal(r.signals, 0, 'no interrupt: the transport marks the device NEEDS_RESET instead');
    assert.equal(r.d.usedFlags, VIRTQ_USED_F_NO_NOTIFY, 'the queue was left mid-drain');
    // Were the device driven again anyway, the failed chain is not handed out twice.
    served.length = 0;
    drainQueue(r.ctx, 0, (c) => {
      served.push(c.head);
      return 0;
    });
    assert.deepEqual(served, [heads[2]]);
  });

  test('a ring-level error from the queue propagates as a QueueError', () => {
    const r = rig(false);
    r.d.availIdx = 100; // more than the queue size ahead
    assert.throws(
      () => drainQueue(r.ctx, 0, () => 0),
      (e) => e instanceof QueueError && e.code === 'VIRTQ_ERR_AVAIL_INDEX',
    );
    assert.equal(r.signals, 0);
  });
});

describe('popOrArm', () => {
  test('takes what is there without touching the suppression fields', () => {
    const r = rig(true);
    const h = add(r, 0);
    assert.equal(popOrArm(dev, r.q)?.head, h);
    assert.equal(writesTo(r.availEventAddr) + writesTo(r.flagsAddr), 0);
  });

  test('an empty ring re-arms; a buffer published before the re-arm lands is taken', () => {
    for (const eventIdx of [false, true]) {
      const r = rig(eventIdx);
      assert.equal(popOrArm(dev, r.q), undefined);
      if (eventIdx) assert.equal(r.d.availEvent, 0);
      dev.onWrite16 = (gpa) => {
        if (gpa === (eventIdx ? r.availEventAddr : r.flagsAddr)) add(r, 0);
      };
      const c = popOrArm(dev, r.q);
      dev.onWrite16 = undefined;
      assert.ok(c !== undefined, `eventIdx=${eventIdx}`);
      assert.equal(popOrArm(dev, r.q), undefined);
    }
  });
});

describe('walkChain', () => {
  const bufs = [
    { addr: 0x100, len: 4 },
    { addr: 0x200, len: 0 },
    { addr: 0x300, len: 8 },
  ];
  const walk = (offset: number, len: number): [number, number, number][] => {
    const out: [number, number, number][] = [];
    walkChain(bufs, offset, len, (a, n, done) => out.push([a, n, done]));
    return out;
  };
  test('skips the offset, crosses empty buffers, stops at len or the chain end', () => {
    assert.deepEqual(walk(0, 12), [
      [0x100, 4, 0],
      [0x300, 8, 4],
    ]);
    assert.deepEqual(walk(2, 5), [
      [0x102, 2, 0],
      [0x300, 3, 2],
    ]);
    assert.deepEqual(walk(4, 100), [[0x300, 8, 0]]);
    assert.equal(
      walkChain(bufs, 4, 100, () => {}),
      8,
    );
    assert.deepEqual(walk(12, 1), []);
  });
  test('a length that is not positive visits nothing; a negative offset is refused', () => {
    assert.deepEqual(walk(0, 0), []);
    assert.deepEqual(walk(0, -1), []);
    assert.deepEqual(walk(0, Number.NaN), []);
    assert.throws(() => walk(-1, 4), RangeError);
    assert.throws(() => walk(Number.NaN, 4), RangeError);
  });
});
