/**
 * Making qcow2 images: an empty version 3 image, or an overlay over a backing file (a clone's disk:
 * its own writes, everything else read from the base). The image is written under a temporary name,
 * synced and renamed into place, so a crash leaves either no image or a whole one.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ConfigError } from '../../common/errors.js';
import { closeDisk, openDisk } from '../disk.js';
import { EXT, LIMITS, QCOW2_MAGIC, V3_HEADER_LENGTH } from './format.js';

export interface CreateQcow2Options {
  /** Virtual size in bytes (rounded up to 512). */
  size: number;
  /** Cluster size as a power of two, 9-21 (default 16: 64 KiB, as qemu-img). */
  clusterBits?: number;
  /** The backing file, stored as given, and its format. */
  backing?: { file: string; format: 'raw' | 'qcow2' } | undefined;
}

/** The bytes of a fresh image: header, extensions, backing name, refcount table and blocks, L1. */
export function qcow2Image(o: CreateQcow2Options): Buffer {
  const bits = o.clusterBits ?? 16;
  if (!Number.isInteger(bits) || bits < LIMITS.minClusterBits || bits > LIMITS.maxClusterBits)
    throw new ConfigError(`cluster size 2^${bits} is outside 512 bytes-2 MiB`);
  const cs = 2 ** bits;
  const size = Math.ceil(o.size / 512) * 512;
  if (!Number.isSafeInteger(o.size) || size < 512 || size > LIMITS.maxSize)
    throw new ConfigError(`image size ${o.size} is not between 512 bytes and 2^52 bytes`);
  const l1Size = Math.ceil(size / (cs * (cs / 8)));
  if (l1Size * 8 > LIMITS.maxL1Bytes) throw new ConfigError(`image size ${size} needs a larger cluster size`);
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / cs));
  const perBlock = (cs * 8) / 16;
  // Metadata clusters: header, refcount table, refcount blocks, L1 table; the blocks cover them all.
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const b = Math.ceil(total / perBlock);
    const t = Math.ceil((b * 8) / cs);
    if (b === blocks && t === tableClusters) break;
    blocks = b;
    tableClusters = t;
  }
  const total = 1 + tableClusters + blocks + l1Clusters;
  const img = Buffer.alloc(total * cs);
  const rtOff = cs;
  const rbOff = rtOff + tableClusters * cs;
  const l1Off = rbOff + blocks * cs;

  img.writeUInt32BE(QCOW2_MAGIC, 0);
  img.writeUInt32BE(3, 4);
  img.writeUInt32BE(bits, 20);
  img.writeBigUInt64BE(BigInt(size), 24);
  img.writeUInt32BE(l1Size, 36);
  img.writeBigUInt64BE(BigInt(l1Off), 40);
  img.writeBigUInt64BE(BigInt(rtOff), 48);
  img.writeUInt32BE(tableClusters, 56);
  img.writeUInt32BE(4, 96); // refcount_order: 16-bit refcounts
  img.writeUInt32BE(V3_HEADER_LENGTH, 100);
  let at = V3_HEADER_LENGTH;
  if (o.backing) {
    const fmt = Buffer.from(o.backing.format, 'latin1');
    img.writeUInt32BE(EXT.backingFormat, at);
    img.writeUInt32BE(fmt.length, at + 4);
    fmt.copy(img, at + 8);
    at += 8 + Math.ceil(fmt.length / 8) * 8;
  }
  at += 8; // the end-of-extensions marker (zeroes)
  if (o.backing) {
    const name = Buffer.from(o.backing.file, 'utf8');
    if (name.length === 0 || name.length > LIMITS.maxBackingName || name.includes(0))
      throw new ConfigError(`backing file name ${o.backing.file} must be 1-${LIMITS.maxBackingName} bytes without NUL`);
    if (at + name.length > cs) throw new ConfigError('the backing file name does not fit the first cluster');
    img.writeBigUInt64BE(BigInt(at), 8);
    img.writeUInt32BE(name.length, 16);
    name.copy(img, at);
  }
  for (let b = 0; b < blocks; b++) img.writeBigUInt64BE(BigInt(rbOff + b * cs), rtOff + b * 8);
  for (let c = 0; c < total; c++) img.writeUInt16BE(1, rbOff + c * 2);
  return img;
}

/** Writes a fresh image to `path` (temporary name, fsync, rename, fsync of the directory). */
export function createQcow2(path: string, o: CreateQcow2Options): void {
  const img = qcow2Image(o);
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'wx', 0o644);
  try {
    let off = 0;
    while (off < img.length) off += writeSync(fd, img, off, img.length - off, off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/**
 * A version 3 overlay over `backingPath` (raw or qcow2, found by its magic): reads of clusters the
 * overlay has not written come from the backing file. The backing file is stored as an absolute path
 * (the overlay works from any directory); `size` defaults to the backing file's virtual size.
 */
export function createQcow2Overlay(path: string, backingPath: string, opts: { size?: number } = {}): void {
  const abs = resolve(backingPath);
  if (!existsSync(abs)) throw new ConfigError(`backing image ${abs} does not exist`);
  const base = openDisk(abs, true);
  let size: number;
  let format: 'raw' | 'qcow2';
  try {
    size = base.size;
    format = base.format === 'qcow2' ? 'qcow2' : 'raw';
  } finally {
    closeDisk(base);
  }
  createQcow2(path, { size: opts.size ?? size, backing: { file: abs, format } });
}
