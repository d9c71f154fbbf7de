/**
 * virtio-blk with its disk I/O threads (src/backends/io-pool.ts): requests that arrive together go to
 * the pool except the last, which the device serves itself; completions come back through the pool's
 * eventfd. Checked against a real image file through the mock MMIO driver: every answer and the data,
 * failures on the pool answering IOERR, a reset with requests in flight (they finish, nothing is pushed
 * afterwards), a snapshot's quiesce (everything answered before the queue is saved), and close
 * releasing the threads and the eventfd.
 */
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FileDisk, type FileDiskSpec, openFileDisk } from '../src/backends/file-disk.js';
import { VIRTIO_BLK_S, VIRTIO_BLK_T, VirtioBlock } from '../src/devices/virtio/block.js';
import type { MockSplitQueue } from './support/mock-virtq.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-blkpool-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const CHUNK = 64 * 1024;
const SECTORS = CHUNK / 512;

function image(name: string, bytes: number): string {
  const p = join(dir, name);
  const b = Buffer.alloc(bytes);
  for (let s = 0; s < bytes / 512; s++) b.write(`sector ${s}`, s * 512);
  writeFileSync(p, b);
  return p;
}

/** The "sector N" label at a guest address. */
const label = (r: Rig, addr: number): string => r.drv.mem.read(addr, 16).toString('latin1').replace(/\0+$/, '');

interface Rig {
  drv: MockMmioDriver;
  q: MockSplitQueue;
  disk: FileDisk;
}

function rig(spec: FileDiskSpec): Rig {
  let disk: FileDisk | undefined;
  const drv = new MockMmioDriver((memory) => {
    disk = new FileDisk(spec, { memory, threads: 2 });
    return new VirtioBlock(disk, { id: 'pool' });
  });
  const q = drv.probe(64)[0] as MockSplitQueue;
  return { drv, q, disk: disk as FileDisk };
}

interface Pending {
  head: number;
  status: number;
  data: number;
  len: number;
}

/** Makes a request available without notifying: header, `out` data or `inLen` bytes to read, status. */
function add(r: Rig, type: number, sector: number, out?: Buffer, inLen = 0, badData = false): Pending {
  const { drv, q } = r;
  const hdr = drv.alloc(16);
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(BigInt(sector), 8);
  drv.mem.write(hdr, h);
  const bufs = [{ addr: hdr, len: 16, write: false }];
  let data = 0;
  if (out) {
    data = drv.alloc(out.length);
    drv.mem.write(data, out);
    bufs.push({ addr: data, len: out.length, write: false });
  }
  if (inLen) {
    data = badData ? 0xfff0_0000 : drv.alloc(inLen);
    bufs.push({ addr: data, len: inLen, write: true });
  }
  const st = drv.alloc(1);
  drv.mem.write8(st, 0xee);
  bufs.push({ addr: st, len: 1, write: true });
  const head = q.addChain(bufs);
  assert.notEqual(head, undefined, 'descriptors available');
  return { head: head as number, status: st, data, len: out?.length ?? inLen };
}

/** Waits (as the I/O thread's epoll would) for the pool's eventfd and runs completions until n are used. */
async function collect(r: Rig, n: number, already: { id: number; len: number }[]): Promise<Map<number, number>> {
  const used = new Map<number, number>();
  for (const u of already) used.set(u.id, u.len);
  const io = r.disk.io;
  assert.ok(io, 'the disk has a pool');
  for (let i = 0; used.size < n && i < 500; i++) {
    io.complete();
    for (const u of r.q.takeUsed()) used.set(u.id, u.len);
    if (used.size < n) await sleep(10);
  }
  assert.equal(used.size, n, 'every request is answered');
  return used;
}

test('requests that arrive together run on the pool; every answer and every byte is right', async () => {
  const path = image('a.img', 2 * 1024 * 1024);
  const r = rig(openFileDisk(path, false));
  try {
    const reads = [3, 9, 17, 25].map((c) => ({ c, p: add(r, VIRTIO_BLK_T.IN, c * SECTORS, undefined, CHUNK) }));
    const writes = [5, 6].map((c) => ({
      c,
      data: Buffer.alloc(CHUNK, 0x40 + c),
      p: undefined as Pending | undefined,
    }));
    for (const w of writes) w.p = add(r, VIRTIO_BLK_T.OUT, w.c * SECTORS, w.data);
    const flush = add(r, VIRTIO_BLK_T.FLUSH, 0);
    const last = add(r, VIRTIO_BLK_T.IN, 30 * SECTORS, undefined, 512);
    r.drv.notify(0);
    const first = r.q.takeUsed();
    assert.deepEqual(
      first.map((u) => u.id),
      [last.head],
      'only the last request is answered by the device thread itself; the rest are on the pool',
    );
    assert.equal(r.disk.io?.pending, 7, 'seven requests in flight on the pool');
    const interrupts = r.drv.interrupts;
    r.q.setUsedEvent(1); // event-idx: interrupt me when the next answer is used
    const used = await collect(r, 8, first);
    for (const { c, p } of reads) {
      assert.equal(r.drv.mem.read8(p.status), VIRTIO_BLK_S.OK);
      assert.equal(used.get(p.head), CHUNK + 1, 'data plus the status byte');
      assert.equal(label(r, p.data), `sector ${c * SECTORS}`);
      assert.equal(label(r, p.data + CHUNK - 512), `sector ${c * SECTORS + SECTORS - 1}`);
    }
    const file = readFileSync(path);
    for (const w of writes) {
      assert.equal(r.drv.mem.read8((w.p as Pending).status), VIRTIO_BLK_S.OK);
      assert.equal(used.get((w.p as Pending).head), 1, 'a write answers only its status byte');
      assert.deepEqual(file.subarray(w.c * CHUNK, (w.c + 1) * CHUNK), w.data, 'the write is in the file');
    }
    assert.equal(r.drv.mem.read8(flush.status), VIRTIO_BLK_S.OK);
    const c = r.drv.device.counters;
    assert.equal(c.reads, 5);
    assert.equal(c.writes, 2);
    assert.equal(c.flushes, 1);
    assert.equal(c.readBytes, 4 * CHUNK + 512);
    assert.equal(c.offloaded, 7);
    assert.equal(c.writeBytes, 2 * CHUNK);
    assert.ok(r.drv.interrupts > interrupts, 'completions interrupt the driver');
  } finally {
    r.disk.close();
    r.drv.release();
  }
});

test('failures: a host error on the pool answers IOERR, a buffer outside guest memory comes back empty; the queue goes on', async () => {
  const path = image('b.img', 1024 * 1024);
  // Opened read-only underneath a writable drive: the pool's pwritev fails with EBADF.
  const spec: FileDiskSpec = { fd: openSync(path, 'r'), path, size: 1024 * 1024, readOnly: false };
  const r = rig(spec);
  try {
    const bad = add(r, VIRTIO_BLK_T.IN, 0, undefined, CHUNK, true);
    const hostErr = add(r, VIRTIO_BLK_T.OUT, 8, Buffer.alloc(512, 1));
    const good = add(r, VIRTIO_BLK_T.IN, 2 * SECTORS, undefined, CHUNK);
    const last = add(r, VIRTIO_BLK_T.IN, 1, undefined, 512);
    r.drv.notify(0);
    const used = await collect(r, 4, r.q.takeUsed());
    // The queue refuses a buffer outside guest memory: the chain comes back empty, unanswered.
    assert.equal(used.get(bad.head), 0);
    assert.equal(r.drv.mem.read8(bad.status), 0xee, 'data outside guest memory: not touched');
    assert.equal(r.drv.device.counters.malformed, 1);
    assert.equal(r.drv.mem.read8(hostErr.status), VIRTIO_BLK_S.IOERR, 'EBADF on the pool');
    assert.equal(r.drv.mem.read8(good.status), VIRTIO_BLK_S.OK);
    assert.equal(label(r, good.data), `sector ${2 * SECTORS}`);
    assert.equal(r.drv.mem.read8(last.status), VIRTIO_BLK_S.OK);
    assert.equal(r.drv.device.counters.ioErrors, 1);
    assert.equal(readFileSync(path)[8 * 512], 0x73, 'nothing was written'); // 's' of "sector 8"
  } finally {
    r.disk.close();
    r.drv.release();
  }
});

test('a reset with requests in flight waits for them and answers none of them afterwards', async () => {
  const r = rig(openFileDisk(image('c.img', 2 * 1024 * 1024), false));
  try {
    const ps = [0, 1, 2, 3, 4].map((c) => add(r, VIRTIO_BLK_T.IN, c * SECTORS, undefined, CHUNK));
    r.drv.notify(0);
    assert.equal(r.q.takeUsed().length, 1);
    r.drv.write(R.STATUS, 0);
    assert.equal(r.drv.status, 0, 'the reset completed');
    assert.equal(r.disk.io?.pending, 0, 'nothing left in flight');
    await sleep(20);
    r.disk.io?.complete();
    assert.equal(r.q.takeUsed().length, 0, 'no answer after the reset');
    // The requests did run (they write guest memory): their data is there, their status is not.
    assert.equal(label(r, ps[1]?.data as number), `sector ${SECTORS}`);
    assert.equal(r.drv.mem.read8(ps[1]?.status as number), 0xee);
    // The device works again after a fresh probe.
    r.q = r.drv.probe(64)[0] as MockSplitQueue;
    const p = add(r, VIRTIO_BLK_T.IN, 7, undefined, 512);
    r.drv.notify(0);
    assert.equal(r.q.takeUsed().length, 1);
    assert.equal(label(r, p.data), 'sector 7');
  } finally {
    r.disk.close();
    r.drv.release();
  }
});

test("a snapshot's save answers every request in flight first", () => {
  const r = rig(openFileDisk(image('d.img', 2 * 1024 * 1024), false));
  try {
    for (const c of [0, 1, 2, 3]) add(r, VIRTIO_BLK_T.IN, c * SECTORS, undefined, CHUNK);
    r.drv.notify(0);
    assert.equal(r.q.takeUsed().length, 1);
    const state = r.drv.side.save();
    assert.equal(r.q.takeUsed().length, 3, 'the other three are answered by save()');
    assert.equal(state.positions[0]?.inFlight, 0, 'nothing in flight in the saved queue');
  } finally {
    r.disk.close();
    r.drv.release();
  }
});

test('close stops the pool and releases its eventfd; the next pool reuses its threads', async () => {
  const fds = (): number => readdirSync('/proc/self/fd').length;
  const threads = (): number => readdirSync('/proc/self/task').length;
  const serve = async (name: string): Promise<number> => {
    const spec = openFileDisk(image(name, 1024 * 1024), false);
    const r = rig(spec);
    add(r, VIRTIO_BLK_T.IN, 0, undefined, 512);
    add(r, VIRTIO_BLK_T.IN, 1, undefined, 512);
    r.drv.notify(0);
    await collect(r, 2, r.q.takeUsed());
    const running = threads();
    r.disk.close();
    r.drv.release();
    closeSync(spec.fd);
    return running;
  };
  await serve('e.img');
  await sleep(100);
  const fd1 = fds();
  const t1 = threads();
  // A thread that ends leaks koffi's per-thread memory: a closed pool's threads wait for the next one.
  assert.equal(await serve('f.img'), t1, 'the second pool starts no thread of its own');
  assert.equal(threads(), t1, 'its threads wait idle again');
  assert.equal(fds(), fd1, 'no fd left open (the eventfd is closed)');
});

test("a probed raw image refuses, on the pool too, a write that would start it with qcow2's magic", async () => {
  const path = image('g.img', 1024 * 1024);
  const r = rig({ ...openFileDisk(path, false), probed: true });
  try {
    const magic = Buffer.alloc(CHUNK);
    magic.write('QFI\xfb', 0, 'latin1');
    const bad = add(r, VIRTIO_BLK_T.OUT, 0, magic);
    const elsewhere = add(r, VIRTIO_BLK_T.OUT, SECTORS, magic);
    const plain = add(r, VIRTIO_BLK_T.OUT, 0, Buffer.alloc(CHUNK, 0x11));
    const last = add(r, VIRTIO_BLK_T.IN, 2 * SECTORS, undefined, 512);
    r.drv.notify(0);
    await collect(r, 4, r.q.takeUsed());
    assert.ok((r.disk.io?.pending ?? 0) === 0);
    assert.equal(r.drv.mem.read8(bad.status), VIRTIO_BLK_S.IOERR, 'the magic at sector 0: refused on the pool');
    assert.equal(r.drv.mem.read8(elsewhere.status), VIRTIO_BLK_S.OK, 'the same bytes elsewhere are data');
    assert.equal(r.drv.mem.read8(plain.status), VIRTIO_BLK_S.OK);
    assert.equal(r.drv.mem.read8(last.status), VIRTIO_BLK_S.OK);
    assert.equal(readFileSync(path).readUInt32BE(0), 0x11111111, 'sector 0 holds the plain write');
    // Inline (the device thread's own path), and not at all for a raw image given as raw.
    assert.throws(
      () => r.disk.writev([magic.subarray(0, 2), magic.subarray(2, 512)], 0),
      /refused a write of qcow2's magic/,
    );
    const given = new FileDisk({ ...openFileDisk(image('h.img', 1024 * 1024), false) });
    assert.equal(given.writev([magic.subarray(0, 512)], 0), 512);
    given.close();
  } finally {
    r.disk.close();
    r.drv.release();
  }
});
