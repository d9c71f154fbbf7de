/**
 * Helpers for the qcow2 tests: Debian's qemu-img and qemu-io (qemu-utils, installed by setup), a
 * seeded workload applied both to a backend and to the bytes it should leave, and an in-memory image
 * file that records every access outside the file.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeDisk, createBlockBackend, type DiskFormat, openDisk } from '../../src/backends/disk.js';
import type { ImageIo } from '../../src/backends/qcow2/image-io.js';
import type { BlockBackend } from '../../src/devices/virtio/block.js';

/** Runs a qemu tool; throws with its output when it fails (unless `allow` lists the status). */
export function qemu(
  tool: 'qemu-img' | 'qemu-io',
  args: string[],
  allow: number[] = [0],
): { status: number; out: string } {
  const r = spawnSync(tool, args, { encoding: 'utf8' });
  if (r.error)
    throw new Error(`${tool} is needed (Debian's qemu-utils, installed by scripts/setup.sh): ${r.error.message}`);
  const out = `${r.stdout}${r.stderr}`;
  if (!allow.includes(r.status ?? -1)) throw new Error(`${tool} ${args.join(' ')} → ${r.status}: ${out}`);
  return { status: r.status ?? -1, out };
}

/** qemu-img convert -O raw of an image: its content as QEMU reads it. */
export function qemuContent(path: string, rawOut: string): Buffer {
  execFileSync('qemu-img', ['convert', '-O', 'raw', path, rawOut]);
  return execFileSync('cat', [rawOut], { maxBuffer: 1 << 30 });
}

/** Opens a drive as the VMM does and runs fn on its backend; closes both. */
export function withDisk<T>(path: string, readOnly: boolean, fn: (d: BlockBackend) => T, format?: DiskFormat): T {
  const spec = openDisk(path, readOnly, format);
  const d = createBlockBackend(spec);
  try {
    return fn(d);
  } finally {
    d.close?.();
    closeDisk(spec);
  }
}

/** The whole disk as the backend reads it, in 1 MiB requests. */
export function readAll(d: BlockBackend): Buffer {
  const out = Buffer.alloc(d.size);
  for (let off = 0; off < d.size; off += 1 << 20) d.readv([out.subarray(off, Math.min(d.size, off + (1 << 20)))], off);
  return out;
}

/** A small deterministic PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Applies `ops` random sector-aligned writes, write-zeroes and discards to a backend and to
 * `expected` (what the disk must read after: a discard zeroes the whole clusters it covers, as the
 * qcow2 backend does in a version 3 image).
 */
export function workload(d: BlockBackend, expected: Buffer, seed: number, ops: number, clusterSize: number): void {
  const r = prng(seed);
  const sectors = Math.floor(d.size / 512);
  for (let i = 0; i < ops; i++) {
    const kind = r();
    const start = Math.floor(r() * sectors);
    const max = Math.min(sectors - start, kind < 0.1 ? 4096 : 300);
    const n = 1 + Math.floor(r() * max);
    const pos = start * 512;
    const len = Math.min(n * 512, d.size - pos);
    if (kind < 0.75) {
      const data = Buffer.alloc(len);
      for (let k = 0; k < len; k += 512) data.fill((i * 7 + k / 512) & 0xff, k, k + 512);
      // Split into a few guest buffers, as a virtqueue chain would be.
      const cut = Math.floor(len / 1024) * 512;
      d.writev(cut > 0 ? [data.subarray(0, cut), data.subarray(cut)] : [data], pos);
      data.copy(expected, pos);
    } else if (kind < 0.9) {
      d.writeZeroes(pos, len, r() < 0.5);
      expected.fill(0, pos, pos + len);
    } else {
      d.discard(pos, len);
      const a = Math.ceil(pos / clusterSize) * clusterSize;
      const b = Math.floor((pos + len) / clusterSize) * clusterSize;
      if (b > a) expected.fill(0, a, b);
    }
    if (r() < 0.05) d.flush();
  }
}

/** Whether qemu-img check found nothing wrong (no errors, no leaks). */
export function qemuCheck(path: string): { clean: boolean; out: string } {
  const r = qemu('qemu-img', ['check', path], [0, 1, 2, 3]);
  return { clean: r.status === 0 && r.out.includes('No errors were found'), out: r.out };
}

/** An image file in memory; every access past its end is recorded (`outside`), and reads stop there. */
export class MemIo implements ImageIo {
  outside: string[] = [];
  writes = 0;
  constructor(public data: Buffer) {}
  size(): number {
    return this.data.length;
  }
  readv(bufs: Uint8Array[], position: number): number {
    let off = position;
    let total = 0;
    for (const b of bufs) total += b.length;
    if (!Number.isSafeInteger(position) || position < 0 || position + total > this.data.length)
      this.outside.push(`read ${total} at ${position} of ${this.data.length}`);
    for (const b of bufs) {
      if (off >= this.data.length) break;
      const n = Math.min(b.length, this.data.length - off);
      b.set(this.data.subarray(off, off + n));
      off += n;
      if (n < b.length) break;
    }
    return off - position;
  }
  writev(bufs: Uint8Array[], position: number): number {
    let total = 0;
    for (const b of bufs) total += b.length;
    if (!Number.isSafeInteger(position) || position < 0 || position > 2 ** 32)
      throw new Error(`write at ${position}: not a place a small image grows to`);
    if (position + total > this.data.length) {
      const grown = Buffer.alloc(position + total);
      this.data.copy(grown);
      this.data = grown;
    }
    let off = position;
    for (const b of bufs) {
      this.data.set(b, off);
      off += b.length;
    }
    this.writes++;
    return total;
  }
  sync(): void {}
  punch(): void {}
}
