/**
 * virtio-blk and the virtio-mmio transport, driven by a mock guest driver through the registers: the
 * probe handshake, the status state machine (FEATURES_OK refused, DEVICE_NEEDS_RESET on a bad queue,
 * reset), and every request type against a real image file, plus host errors (EIO, ENOSPC, short
 * reads) from a failing backend: each answers VIRTIO_BLK_S_IOERR and the next request still works.
 */
import assert from 'node:assert/strict';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { closeDisk, createBlockBackend, openDisk } from '../src/backends/disk.js';
import { FileDisk, openFileDisk } from '../src/backends/file-disk.js';
import { createQcow2Overlay } from '../src/backends/qcow2/create.js';
import { parseHeader } from '../src/backends/qcow2/format.js';
import { FdImageIo, RawLayer } from '../src/backends/qcow2/image-io.js';
import { readHead } from '../src/backends/qcow2/open.js';
import { Qcow2Disk } from '../src/backends/qcow2/qcow2-disk.js';
import {
  type BlockBackend,
  VIRTIO_BLK_F,
  VIRTIO_BLK_S,
  VIRTIO_BLK_T,
  VirtioBlock,
} from '../src/devices/virtio/block.js';
import { INTERRUPT_CONFIG_CHANGE, STATUS, VIRTIO_F_VERSION_1 } from '../src/devices/virtio/device.js';
import { MMIO_MAGIC } from '../src/devices/virtio/transport/mmio.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-blk-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function image(name: string, bytes: number): string {
  const p = join(dir, name);
  const b = Buffer.alloc(bytes);
  for (let s = 0; s < bytes / 512; s++) b.write(`sector ${s}`, s * 512);
  writeFileSync(p, b);
  return p;
}

interface Rig {
  drv: MockMmioDriver;
  q: MockSplitQueue;
  dev: VirtioBlock;
}

function rig(backend: BlockBackend, probe = true): Rig {
  const dev = new VirtioBlock(backend, { id: 'disk-serial-0' });
  const drv = new MockMmioDriver(dev);
  const q = probe ? (drv.probe(16)[0] as MockSplitQueue) : (undefined as unknown as MockSplitQueue);
  return { drv, q, dev };
}

interface Result {
  status: number;
  usedLen: number;
  data: Buffer;
}

/** One request: header (type, sector), `out` data, `inLen` bytes to read back, then the status byte. */
function request(r: Rig, type: number, sector: bigint, out: Buffer = Buffer.alloc(0), inLen = 0): Result {
  const { drv, q } = r;
  const hdr = drv.alloc(16);
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(sector, 8);
  drv.mem.write(hdr, h);
  const bufs = [{ addr: hdr, len: 16, write: false }];
  if (out.length) {
    const a = drv.alloc(out.length);
    drv.mem.write(a, out);
    bufs.push({ addr: a, len: out.length, write: false });
  }
  const inAddr = inLen ? drv.alloc(inLen) : 0;
  if (inLen) bufs.push({ addr: inAddr, len: inLen, write: true });
  const st = drv.alloc(1);
  drv.mem.write8(st, 0xee);
  bufs.push({ addr: st, len: 1, write: true });
  const head = q.addChain(bufs);
  assert.notEqual(head, undefined, 'descriptors available');
  drv.notify(0);
  const used = q.takeUsed();
  assert.equal(used.length, 1, 'the request completes');
  q.recycle(head as number);
  return { status: drv.mem.read8(st), usedLen: (used[0] as { len: number }).len, data: drv.mem.read(inAddr, inLen) };
}

test('probe: magic, version 2, device id 2, features, capacity and GET_ID serial', () => {
  const r = rig(new FileDisk(openFileDisk(image('a.img', 64 * 1024), false)), false);
  try {
    assert.equal(r.drv.read(R.MAGIC), MMIO_MAGIC);
    assert.equal(r.drv.read(R.VERSION), 2);
    assert.equal(r.drv.read(R.DEVICE_ID), 2);
    const f = r.drv.deviceFeatures();
    for (const b of [VIRTIO_F_VERSION_1, VIRTIO_BLK_F.FLUSH, VIRTIO_BLK_F.DISCARD, VIRTIO_BLK_F.WRITE_ZEROES])
      assert.ok(f & (1n << b), `feature ${b} offered`);
    assert.equal(Buffer.from(r.drv.readConfig(0, 8)).readBigUInt64LE(0), 128n, 'capacity in sectors');
    r.drv.probe(16);
    r.q = r.drv.queues[0] as MockSplitQueue;
    const id = request(r, VIRTIO_BLK_T.GET_ID, 0n, undefined, 20);
    assert.equal(id.status, VIRTIO_BLK_S.OK);
    assert.equal(id.data.toString('utf8').replace(/\0+$/, ''), 'disk-serial-0');
  } finally {
    r.drv.release();
  }
});

test('status machine: FEATURES_OK refused for unoffered or legacy features; bad queue → NEEDS_RESET; reset recovers', () => {
  const r = rig(new FileDisk(openFileDisk(image('b.img', 64 * 1024), false)), false);
  try {
    assert.equal(r.drv.negotiate(1n << 40n), false, 'a feature the device did not offer');
    assert.equal(r.drv.negotiate(1n << VIRTIO_BLK_F.FLUSH), false, 'no VERSION_1: legacy is not supported');
    assert.equal(r.drv.negotiate((1n << VIRTIO_F_VERSION_1) | (1n << VIRTIO_BLK_F.FLUSH)), true);
    // A queue of size 3 (not a power of two): DRIVER_OK is refused and the device asks for a reset.
    r.drv.setupQueue(0, 16, { size: 3, desc: 0x20000, avail: 0x21000, used: 0x22000 });
    assert.equal(r.drv.driverOk(), false);
    assert.ok(r.drv.status & STATUS.DEVICE_NEEDS_RESET);
    assert.ok(r.drv.read(R.INTERRUPT_STATUS) & INTERRUPT_CONFIG_CHANGE);
    // Rings outside guest memory: refused the same way.
    r.drv.negotiate(1n << VIRTIO_F_VERSION_1);
    r.drv.setupQueue(0, 16, { size: 16, desc: 0xfff00000, avail: 0x21000, used: 0x22000 });
    assert.equal(r.drv.driverOk(), false);
    // Reset, then a proper probe works.
    r.drv.write(R.STATUS, 0);
    assert.equal(r.drv.status, 0);
    r.drv.probe(16);
    r.q = r.drv.queues[0] as MockSplitQueue;
    assert.equal(request(r, VIRTIO_BLK_T.IN, 1n, undefined, 512).data.toString('latin1', 0, 8), 'sector 1');
  } finally {
    r.drv.release();
  }
});

test('read, write, flush, discard and write-zeroes reach the image file', () => {
  const path = image('c.img', 64 * 1024);
  const r = rig(new FileDisk(openFileDisk(path, false)));
  try {
    const rd = request(r, VIRTIO_BLK_T.IN, 3n, undefined, 1024);
    assert.equal(rd.status, VIRTIO_BLK_S.OK);
    assert.equal(rd.usedLen, 1025, 'data plus the status byte');
    assert.equal(rd.data.toString('latin1', 0, 8), 'sector 3');
    assert.equal(rd.data.toString('latin1', 512, 520), 'sector 4');
    const data = Buffer.alloc(1024, 0x5a);
    assert.equal(request(r, VIRTIO_BLK_T.OUT, 10n, data).status, VIRTIO_BLK_S.OK);
    assert.equal(request(r, VIRTIO_BLK_T.FLUSH, 0n).status, VIRTIO_BLK_S.OK);
    assert.deepEqual(readFileSync(path).subarray(10 * 512, 12 * 512), data, 'the write is in the file');
    const seg = (sector: bigint, n: number, flags = 0): Buffer => {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(sector, 0);
      b.writeUInt32LE(n, 8);
      b.writeUInt32LE(flags, 12);
      return b;
    };
    assert.equal(request(r, VIRTIO_BLK_T.DISCARD, 0n, seg(10n, 2)).status, VIRTIO_BLK_S.OK);
    assert.deepEqual(readFileSync(path).subarray(10 * 512, 12 * 512), Buffer.alloc(1024), 'discarded sectors read 0');
    assert.equal(request(r, VIRTIO_BLK_T.WRITE_ZEROES, 0n, seg(20n, 1)).status, VIRTIO_BLK_S.OK);
    assert.deepEqual(readFileSync(path).subarray(20 * 512, 21 * 512), Buffer.alloc(512));
    assert.equal(readFileSync(path).toString('latin1', 21 * 512, 21 * 512 + 9), 'sector 21', 'neighbours untouched');
    assert.equal(
      request(r, VIRTIO_BLK_T.DISCARD, 0n, seg(0n, 1, 1)).status,
      VIRTIO_BLK_S.UNSUPP,
      'unmap flag on discard',
    );
    assert.equal(statSync(path).size, 64 * 1024, 'the image keeps its size');
    assert.equal(r.dev.counters.writes, 1);
  } finally {
    r.drv.release();
  }
});

test('bad requests: out of range, partial sectors, unknown type, read-only writes; the next request works', () => {
  const r = rig(new FileDisk(openFileDisk(image('d.img', 64 * 1024), false)));
  try {
    assert.equal(request(r, VIRTIO_BLK_T.IN, 127n, undefined, 1024).status, VIRTIO_BLK_S.IOERR, 'past the end');
    assert.equal(request(r, VIRTIO_BLK_T.IN, 2n ** 63n, undefined, 512).status, VIRTIO_BLK_S.IOERR, 'huge sector');
    assert.equal(request(r, VIRTIO_BLK_T.IN, 0n, undefined, 100).status, VIRTIO_BLK_S.IOERR, 'not whole sectors');
    assert.equal(request(r, 0x7777, 0n, undefined, 512).status, VIRTIO_BLK_S.UNSUPP, 'unknown type');
    assert.equal(request(r, VIRTIO_BLK_T.IN, 127n, undefined, 512).data.toString('latin1', 0, 10), 'sector 127');
  } finally {
    r.drv.release();
  }
  const ro = rig(new FileDisk(openFileDisk(image('e.img', 64 * 1024), true)), false);
  try {
    assert.ok(ro.drv.deviceFeatures() & (1n << VIRTIO_BLK_F.RO), 'RO offered');
    ro.drv.probe(16);
    ro.q = ro.drv.queues[0] as MockSplitQueue;
    assert.equal(request(ro, VIRTIO_BLK_T.OUT, 0n, Buffer.alloc(512)).status, VIRTIO_BLK_S.IOERR);
    assert.equal(request(ro, VIRTIO_BLK_T.IN, 0n, undefined, 512).status, VIRTIO_BLK_S.OK);
  } finally {
    ro.drv.release();
  }
});

/** A backend whose next call fails the way a host can: errno codes and short transfers. */
class FailingDisk implements BlockBackend {
  readonly size = 64 * 1024;
  readonly readOnly = false;
  readonly canDiscard = true;
  fail: 'EIO' | 'ENOSPC' | 'short' | undefined;
  private take(): void {
    const f = this.fail;
    this.fail = undefined;
    if (f && f !== 'short') throw Object.assign(new Error(f), { code: f });
  }
  readv(bufs: Uint8Array[]): number {
    const short = this.fail === 'short';
    this.take();
    const total = bufs.reduce((s, b) => s + b.length, 0);
    return short ? total - 1 : total;
  }
  writev(bufs: Uint8Array[]): number {
    const short = this.fail === 'short';
    this.take();
    const total = bufs.reduce((s, b) => s + b.length, 0);
    return short ? total - 100 : total;
  }
  flush(): void {
    this.take();
  }
  discard(): void {
    this.take();
  }
  writeZeroes(): void {
    this.take();
  }
}

test('host errors (EIO, ENOSPC, short read, short write) answer IOERR; the next request succeeds', () => {
  const disk = new FailingDisk();
  const r = rig(disk);
  try {
    const cases: [FailingDisk['fail'], () => Result][] = [
      ['EIO', () => request(r, VIRTIO_BLK_T.IN, 0n, undefined, 512)],
      ['ENOSPC', () => request(r, VIRTIO_BLK_T.OUT, 0n, Buffer.alloc(512))],
      ['short', () => request(r, VIRTIO_BLK_T.IN, 0n, undefined, 512)],
      ['short', () => request(r, VIRTIO_BLK_T.OUT, 0n, Buffer.alloc(512))],
      ['EIO', () => request(r, VIRTIO_BLK_T.FLUSH, 0n)],
    ];
    for (const [fail, run] of cases) {
      disk.fail = fail;
      assert.equal(run().status, VIRTIO_BLK_S.IOERR, `${fail} → IOERR`);
      assert.equal(request(r, VIRTIO_BLK_T.IN, 1n, undefined, 512).status, VIRTIO_BLK_S.OK, `after ${fail}`);
    }
    assert.equal(r.dev.counters.ioErrors, cases.length);
    assert.equal(r.drv.status & STATUS.DEVICE_NEEDS_RESET, 0, 'host errors never break the device');
  } finally {
    r.drv.release();
  }
});

test('a malformed chain is returned empty; a ring-level error sets NEEDS_RESET; reset and re-probe recover', () => {
  const r = rig(new FileDisk(openFileDisk(image('f.img', 64 * 1024), false)));
  try {
    // Header only, no status byte: nothing can be answered.
    const hdr = r.drv.alloc(16);
    const head = r.q.addChain([{ addr: hdr, len: 16, write: false }]) as number;
    r.drv.notify(0);
    assert.deepEqual(r.q.takeUsed(), [{ id: head, len: 0 }]);
    r.q.recycle(head);
    assert.equal(r.dev.counters.malformed, 1);
    assert.equal(request(r, VIRTIO_BLK_T.IN, 2n, undefined, 512).status, VIRTIO_BLK_S.OK, 'the queue goes on');
    // avail.idx jumps by more than the queue size: the device cannot trust the ring any more.
    r.q.availIdx = r.q.availIdx + 100;
    const before = r.drv.interrupts;
    r.drv.notify(0);
    assert.ok(r.drv.status & STATUS.DEVICE_NEEDS_RESET);
    assert.ok(r.drv.interrupts > before, 'a configuration interrupt tells the driver');
    r.drv.write(R.STATUS, 0);
    r.drv.probe(16);
    r.q = r.drv.queues[0] as MockSplitQueue;
    assert.equal(request(r, VIRTIO_BLK_T.IN, 5n, undefined, 512).data.toString('latin1', 0, 8), 'sector 5');
  } finally {
    r.drv.release();
  }
});

test('opening a drive: a missing file, a directory and a too-small file give one clear line', () => {
  assert.throws(() => openFileDisk(join(dir, 'nope.img'), false), /cannot open drive image .*ENOENT; create it first/);
  assert.throws(() => openFileDisk(dir, false), /is not a regular file/);
  const tiny = join(dir, 'tiny.img');
  closeSync(openSync(tiny, 'w'));
  assert.throws(() => openFileDisk(tiny, false), /smaller than one 512-byte sector/);
});

test('a qcow2 overlay behind the device: quiesce (before a snapshot) writes its tables back, so the image opened afresh reads what the guest wrote; discard and write-zeroes', () => {
  const base = image('q-base.img', 256 * 1024);
  const overlay = join(dir, 'q-clone.qcow2');
  createQcow2Overlay(overlay, base);
  const spec = openDisk(overlay, false);
  const r = rig(createBlockBackend(spec));
  const baseFd = openSync(base, 'r');
  /** The image as a restore in another process would find it: a fresh open of the file, no lock. */
  const fresh = (sector: number, bytes: number): Buffer => {
    const fd = openSync(overlay, 'r');
    try {
      const io = new FdImageIo(fd, fstatSync(fd).size);
      const d = new Qcow2Disk({
        io,
        header: parseHeader(readHead(io), io.size(), overlay),
        name: overlay,
        readOnly: true,
        backing: new RawLayer(new FdImageIo(baseFd, 256 * 1024), 256 * 1024),
      });
      const b = Buffer.alloc(bytes);
      d.readv([b], sector * 512);
      return b;
    } finally {
      closeSync(fd);
    }
  };
  try {
    const f = r.drv.deviceFeatures();
    assert.ok(
      f & (1n << VIRTIO_BLK_F.DISCARD) && f & (1n << VIRTIO_BLK_F.WRITE_ZEROES),
      'discard and write-zeroes offered',
    );
    const data = Buffer.alloc(4096, 0x7e);
    assert.equal(request(r, VIRTIO_BLK_T.OUT, 9n, data).status, VIRTIO_BLK_S.OK);
    assert.equal(
      request(r, VIRTIO_BLK_T.IN, 8n, undefined, 1024).data.subarray(512).equals(data.subarray(0, 512)),
      true,
    );
    assert.equal(fresh(9, 512).toString('latin1').replace(/\0+$/, ''), 'sector 9', 'not yet described on disk');
    r.dev.quiesce();
    assert.ok(fresh(9, 4096).equals(data), 'after quiesce, a fresh open reads the write');
    assert.equal(fresh(8, 512).toString('latin1').replace(/\0+$/, ''), 'sector 8', 'the base shows through around it');
    // Write-zeroes over the first cluster (128 sectors) and a discard of the second: both read as zeroes.
    const seg = (sector: number, n: number, flags: number): Buffer => {
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(BigInt(sector), 0);
      b.writeUInt32LE(n, 8);
      b.writeUInt32LE(flags, 12);
      return b;
    };
    assert.equal(request(r, VIRTIO_BLK_T.WRITE_ZEROES, 0n, seg(0, 128, 1)).status, VIRTIO_BLK_S.OK);
    assert.equal(request(r, VIRTIO_BLK_T.DISCARD, 0n, seg(128, 128, 0)).status, VIRTIO_BLK_S.OK);
    r.dev.quiesce();
    assert.ok(fresh(0, 256 * 512).equals(Buffer.alloc(256 * 512)), 'zeroed and discarded clusters read as zeroes');
    assert.equal(fresh(256, 512).toString('latin1').replace(/\0+$/, ''), 'sector 256');
  } finally {
    r.dev.close();
    r.drv.release();
    closeDisk(spec);
    closeSync(baseFd);
  }
});
