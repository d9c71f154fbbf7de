/**
 * Sequential throughput of the qcow2 backend against the raw one, through the BlockBackend interface
 * the virtio-blk device calls (no guest: this measures the backend, not the virtqueue): 1 MiB
 * requests over an image of VIREO_BENCH_QCOW2_MIB MiB (default 256) in a temporary directory under
 * $TMPDIR, the host page cache warm as a guest's would be. Rows: raw write (into a sparse file) and
 * read; qcow2 write into a fresh image (every cluster allocated), overwrite (in place), read; an overlay
 * read through to its raw backing file; and a compressed image (qemu-img convert -c) read. Each is
 * the median of VIREO_BENCH_QCOW2_RUNS (default 3); the write rows exclude the final flush, which is
 * timed on its own (the disk's speed more than the backend's).
 *
 *   npm run -s build && flock /tmp/vireo-lane.lock node dist/bench/qcow2.js
 */
import { execFileSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeDisk, createBlockBackend, openDisk } from '../src/backends/disk.js';
import { createQcow2, createQcow2Overlay } from '../src/backends/qcow2/create.js';
import type { BlockBackend } from '../src/devices/virtio/block.js';

const MiB = 2 ** 20;
const SIZE = Number(process.env.VIREO_BENCH_QCOW2_MIB ?? 256) * MiB;
const RUNS = Number(process.env.VIREO_BENCH_QCOW2_RUNS ?? 3);
const REQ = MiB;
const dir = mkdtempSync(join(tmpdir(), 'vireo-bench-qcow2-'));

const buf = Buffer.alloc(REQ);
for (let i = 0; i < REQ; i += 4) buf.writeUInt32LE((i * 2654435761) >>> 0, i);

function open(path: string, readOnly: boolean): { d: BlockBackend; done: () => void } {
  const spec = openDisk(path, readOnly);
  const d = createBlockBackend(spec);
  return {
    d,
    done: () => {
      d.close?.();
      closeDisk(spec);
    },
  };
}

/** MiB/s of one pass of 1 MiB requests; `write` or read. */
function pass(d: BlockBackend, write: boolean): number {
  const t0 = performance.now();
  // Split each request in two buffers, as a guest's chain would be.
  const views = [buf.subarray(0, REQ / 2), buf.subarray(REQ / 2)];
  for (let off = 0; off < SIZE; off += REQ) {
    if (write) d.writev(views, off);
    else d.readv(views, off);
  }
  return SIZE / MiB / ((performance.now() - t0) / 1000);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

interface Row {
  what: string;
  mibs: number;
  flushMs?: number;
}
const rows: Row[] = [];

function measure(what: string, setup: () => string, run: (path: string) => { mibs: number; flushMs?: number }): void {
  const r: { mibs: number; flushMs?: number }[] = [];
  for (let i = 0; i < RUNS; i++) {
    const path = setup();
    r.push(run(path));
  }
  const flush = r.map((x) => x.flushMs).filter((x): x is number => x !== undefined);
  rows.push({ what, mibs: median(r.map((x) => x.mibs)), ...(flush.length ? { flushMs: median(flush) } : {}) });
}

function writeRun(path: string): { mibs: number; flushMs: number } {
  const { d, done } = open(path, false);
  const mibs = pass(d, true);
  const t0 = performance.now();
  d.flush();
  const flushMs = performance.now() - t0;
  done();
  return { mibs, flushMs };
}
function readRun(path: string): { mibs: number } {
  const { d, done } = open(path, true);
  const mibs = pass(d, false);
  done();
  return { mibs };
}

try {
  const raw = join(dir, 'disk.raw');
  const fresh = (): string => {
    rmSync(raw, { force: true });
    const fd = openSync(raw, 'w');
    ftruncateSync(fd, SIZE);
    closeSync(fd);
    return raw;
  };
  measure('raw: write (sparse file)', fresh, writeRun);
  measure('raw: read', () => raw, readRun);

  const q = join(dir, 'disk.qcow2');
  const freshQ = (): string => {
    rmSync(q, { force: true });
    createQcow2(q, { size: SIZE });
    return q;
  };
  measure('qcow2: write (allocating)', freshQ, writeRun);
  measure('qcow2: overwrite (in place)', () => q, writeRun);
  measure('qcow2: read', () => q, readRun);

  const ov = join(dir, 'overlay.qcow2');
  measure(
    'qcow2 overlay: read through to a raw base',
    () => {
      rmSync(ov, { force: true });
      createQcow2Overlay(ov, raw);
      return ov;
    },
    readRun,
  );

  const c = join(dir, 'compressed.qcow2');
  execFileSync('qemu-img', ['convert', '-c', '-O', 'qcow2', raw, c]);
  measure('qcow2: read compressed (qemu-img convert -c)', () => c, readRun);

  const rawWrite = rows[0]?.mibs ?? 1;
  const rawRead = rows[1]?.mibs ?? 1;
  console.log(`\nqcow2 vs raw backend, sequential 1 MiB requests over ${SIZE / MiB} MiB (median of ${RUNS})\n`);
  console.log('| case | MiB/s | vs raw | final flush |');
  console.log('| --- | ---: | ---: | ---: |');
  for (const r of rows) {
    const ref = r.what.includes('write') ? rawWrite : rawRead;
    const flush = r.flushMs !== undefined ? `${r.flushMs.toFixed(0)} ms` : '';
    console.log(`| ${r.what} | ${r.mibs.toFixed(0)} | ${(r.mibs / ref).toFixed(2)}× | ${flush} |`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
