/**
 * Dirty page tracking on vireo's own writes (what KVM's log cannot see): the GuestMemory write paths
 * mark pages, reads do not, takeDirty merges KVM's bitmap and clears; a virtio-blk read request served
 * by the device (as on the I/O thread) marks exactly the pages it wrote — data, status, used ring —
 * and a write request leaves the guest's data pages clean. The memory tag round-trips and refuses damage.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FileDisk, openFileDisk } from '../src/backends/file-disk.js';
import { VIRTIO_BLK_T, VirtioBlock } from '../src/devices/virtio/block.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';
import { decodeTag, encodeTag, TAG_SIZE } from '../src/snapshot/memory-tag.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { MockMmioDriver } from './support/virtio-driver.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-dirty-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const PAGE = 4096;
const noKvm = (r: { size: number }): Uint8Array => new Uint8Array(Math.ceil(r.size / PAGE / 8));
const dirtyPages = (m: Uint8Array[]): number[] =>
  [...(m[0] as Uint8Array).entries()].filter(([, v]) => v).map(([i]) => i);

test('GuestMemory marks the pages vireo writes, not the ones it reads; takeDirty merges KVM and clears', () => {
  const mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: 64 * PAGE }]);
  mapping.trackDirty();
  try {
    const mem = new GuestMemory(mapping.descriptors);
    assert.equal(mem.tracksDirty, true);
    mem.write32(3 * PAGE + 10, 1);
    mem.write64(5 * PAGE - 4, 1n); // straddles pages 4 and 5
    mem.fill(10 * PAGE + 100, 2 * PAGE); // pages 10..12
    mem.slice(20 * PAGE, 1).set([1]);
    mem.read(30 * PAGE, PAGE);
    mem.readView(31 * PAGE, 10);
    mem.read64(32 * PAGE);
    // Another thread's view over the same descriptors shares the map.
    new GuestMemory(mapping.descriptors).write8(40 * PAGE, 7);
    const kvm = (): Uint8Array => {
      const b = new Uint8Array(8);
      b[6] = 0b0000_0100; // page 6 * 8 + 2 = 50: the guest wrote it
      return b;
    };
    assert.deepEqual(dirtyPages(mem.takeDirty(kvm)), [3, 4, 5, 10, 11, 12, 20, 40, 50]);
    assert.deepEqual(dirtyPages(mem.takeDirty(noKvm)), [], 'taking clears the log');
    mem.restoreDirty([Uint8Array.from({ length: 64 }, (_, i) => (i === 7 ? 1 : 0))]);
    assert.deepEqual(dirtyPages(mem.takeDirty(noKvm)), [7], 'a failed snapshot puts its pages back');
    assert.throws(() => mem.write8(64 * PAGE, 1), /outside guest memory/, 'bounds still checked first');
    assert.deepEqual(dirtyPages(mem.takeDirty(noKvm)), []);
  } finally {
    mapping.release();
  }
  const plain = GuestMemoryMapping.allocate([{ gpa: 0, size: 4 * PAGE }]);
  const mem = new GuestMemory(plain.descriptors);
  mem.write32(0, 1);
  assert.equal(mem.tracksDirty, false);
  assert.deepEqual(dirtyPages(mem.takeDirty(noKvm)), [], 'without tracking only KVM speaks');
  plain.release();
});

test('a virtio-blk read (the device writes guest memory) marks its data, status and used ring pages', () => {
  const img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(64 * 1024, 0x5a));
  const dev = new VirtioBlock(new FileDisk(openFileDisk(img, false)), { id: 'd' });
  const drv = new MockMmioDriver(dev, 4 << 20, true);
  try {
    const q = drv.probe(16)[0] as MockSplitQueue;
    const at = (len: number): number => drv.alloc(len, PAGE);
    const hdr = at(16);
    const data = at(2 * PAGE); // two pages the device fills
    const out = at(PAGE); // a page the device only reads (a write request)
    const st = at(1);
    const h = Buffer.alloc(16);
    h.writeUInt32LE(VIRTIO_BLK_T.IN, 0);
    drv.mem.write(hdr, h);
    drv.mem.fill(out, PAGE, 0x11);
    const head = q.addChain([
      { addr: hdr, len: 16, write: false },
      { addr: data, len: 2 * PAGE, write: true },
      { addr: st, len: 1, write: true },
    ]);
    drv.mem.takeDirty(noKvm); // what the driver (the guest) wrote is KVM's to log
    drv.notify(0);
    assert.equal(q.takeUsed().length, 1);
    assert.equal(drv.mem.read8(data + PAGE), 0x5a, 'the device read the disk into guest memory');
    const pages = dirtyPages(drv.mem.takeDirty(noKvm));
    for (const p of [data / PAGE, data / PAGE + 1, st / PAGE])
      assert.ok(pages.includes(p), `page ${p} written by the device is dirty (${pages})`);
    assert.ok(!pages.includes(hdr / PAGE), 'the request header was only read');
    assert.ok(pages.length <= 4, `only the pages written, plus the used ring: ${pages}`);
    q.recycle(head as number);
    // A write request: the device reads the guest's buffer; only status and used ring change.
    h.writeUInt32LE(VIRTIO_BLK_T.OUT, 0);
    drv.mem.write(hdr, h);
    q.addChain([
      { addr: hdr, len: 16, write: false },
      { addr: out, len: PAGE, write: false },
      { addr: st, len: 1, write: true },
    ]);
    drv.mem.takeDirty(noKvm);
    drv.notify(0);
    assert.equal(q.takeUsed().length, 1);
    const after = dirtyPages(drv.mem.takeDirty(noKvm));
    assert.ok(after.includes(st / PAGE), 'the status byte is dirty');
    assert.ok(!after.includes(out / PAGE), 'the data the device only read is not');
  } finally {
    drv.release();
  }
});

test('the memory tag round-trips and a damaged one reads as none', () => {
  const page = new Uint8Array(TAG_SIZE);
  encodeTag({ kind: 'diff', id: 'b', parent: 'a', size: 1 << 20, dataBytes: 8192 }, page);
  assert.deepEqual(decodeTag(page), { kind: 'diff', id: 'b', parent: 'a', size: 1 << 20, dataBytes: 8192 });
  page[20] = (page[20] as number) ^ 1;
  assert.equal(decodeTag(page), undefined);
  assert.equal(decodeTag(new Uint8Array(TAG_SIZE)), undefined);
});
