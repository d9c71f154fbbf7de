/**
 * Opening a qcow2 image and its backing chain for a drive. In the main thread: the image and every
 * backing file are opened (backing files read-only, with a shared lock, as QEMU opens them), each
 * header is checked, names are resolved as QEMU resolves them (relative to the directory of the image
 * that names them), and the chain is refused when it loops or is deeper than MAX_CHAIN. The result is
 * plain data (fds and paths) that the I/O thread builds the backend from (buildQcow2).
 */
import { closeSync, fdatasyncSync, fstatSync, writeSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { type FileDiskSpec, openFileDisk } from '../file-disk.js';
import { parseHeader, QCOW2_MAGIC, Qcow2Error, type Qcow2Header } from './format.js';
import { type DiskLayer, FdImageIo, type ImageIo, RawLayer } from './image-io.js';
import { Qcow2Disk } from './qcow2-disk.js';

/** Backing files below an image at most (QEMU has no small limit; a chain this deep is a mistake). */
export const MAX_CHAIN = 16;

/** A layer of a chain: a raw file, or a qcow2 image with its own backing layer. */
export interface LayerSpec {
  format: 'raw' | 'qcow2';
  fd: number;
  path: string;
  /** The file's size in bytes at open. */
  fileSize: number;
  backing?: LayerSpec | undefined;
}

/** A qcow2 drive, as the VMM posts it to the I/O thread. */
export interface Qcow2Spec extends LayerSpec {
  format: 'qcow2';
  /** Virtual size in bytes. */
  size: number;
  readOnly: boolean;
}

/** The first cluster of an image (or all of it when shorter), enough for its header and extensions. */
export function readHead(io: ImageIo): Buffer {
  const first = Buffer.alloc(Math.min(io.size(), 4096));
  io.readv([first], 0);
  if (first.length < 24) return first;
  const bits = first.readUInt32BE(20);
  const want = bits >= 9 && bits <= 21 ? Math.min(io.size(), 2 ** bits) : first.length;
  if (want <= first.length) return first;
  const head = Buffer.alloc(want);
  io.readv([head], 0);
  return head;
}

/** Whether the file starts with qcow2's magic. */
export function hasQcow2Magic(io: ImageIo): boolean {
  if (io.size() < 4) return false;
  const b = Buffer.alloc(4);
  return io.readv([b], 0) === 4 && b.readUInt32BE(0) === QCOW2_MAGIC;
}

/**
 * Turns an opened image file into a qcow2 drive spec: checks its header, refuses what cannot be
 * written when it is writable (dirty or corrupt images, internal snapshots), clears auto-clear feature
 * bits before the first write (the spec's rule for features vireo does not keep up to date), and opens
 * its backing chain. Closes every fd it opened on failure; the image's own fd stays the caller's.
 */
export function openQcow2(file: FileDiskSpec): Qcow2Spec {
  const io = new FdImageIo(file.fd, file.size);
  const h = parseHeader(readHead(io), file.size, file.path);
  if (!file.readOnly) {
    const fix = 'run qemu-img check -r all on it, or attach it read-only';
    if (h.corrupt) throw new Qcow2Error(`qcow2 image ${file.path} is marked corrupt; ${fix}`);
    if (h.dirty) throw new Qcow2Error(`qcow2 image ${file.path} is marked dirty (refcounts need a repair); ${fix}`);
    if (h.nbSnapshots > 0)
      throw new Qcow2Error(
        `qcow2 image ${file.path} has internal snapshots, which vireo cannot write; attach it read-only or remove them (qemu-img snapshot -d)`,
      );
  }
  const backing = openBacking(file.path, h, [identity(file.fd)], 1);
  try {
    if (!file.readOnly && h.autoclear !== 0n) {
      if (writeSync(file.fd, Buffer.alloc(8), 0, 8, 88) !== 8)
        throw new Qcow2Error(`qcow2 image ${file.path}: short header write`);
      fdatasyncSync(file.fd);
    }
  } catch (e) {
    closeLayer(backing);
    throw e;
  }
  return {
    format: 'qcow2',
    fd: file.fd,
    path: file.path,
    fileSize: file.size,
    size: h.size,
    readOnly: file.readOnly,
    backing,
  };
}

const identity = (fd: number): string => {
  const st = fstatSync(fd);
  return `${st.dev}:${st.ino}`;
};

/** Opens the backing file an image names (and its own, and so on); undefined when it names none. */
function openBacking(ofPath: string, h: Qcow2Header, seen: string[], depth: number): LayerSpec | undefined {
  if (h.backingFile === undefined) return undefined;
  if (depth > MAX_CHAIN) throw new Qcow2Error(`qcow2 image ${ofPath}: the backing chain is deeper than ${MAX_CHAIN}`);
  const path = isAbsolute(h.backingFile) ? h.backingFile : resolve(dirname(ofPath), h.backingFile);
  let file: FileDiskSpec;
  try {
    file = openFileDisk(path, true);
  } catch (e) {
    throw new Qcow2Error(`qcow2 image ${ofPath}: its backing file ${path}: ${(e as Error).message}`);
  }
  try {
    const id = identity(file.fd);
    if (seen.includes(id)) throw new Qcow2Error(`qcow2 image ${ofPath}: the backing chain loops back to ${path}`);
    const io = new FdImageIo(file.fd, file.size);
    const format = h.backingFormat ?? (hasQcow2Magic(io) ? 'qcow2' : 'raw');
    if (format === 'raw') return { format, fd: file.fd, path, fileSize: file.size };
    const bh = parseHeader(readHead(io), file.size, path);
    const backing = openBacking(path, bh, [...seen, id], depth + 1);
    return { format, fd: file.fd, path, fileSize: file.size, backing };
  } catch (e) {
    closeSync(file.fd);
    throw e;
  }
}

/** Closes the fds of a chain (the layers below a drive). */
export function closeLayer(layer: LayerSpec | undefined): void {
  for (let l = layer; l !== undefined; l = l.backing) {
    try {
      closeSync(l.fd);
    } catch {
      // already closed
    }
  }
}

/** The backend for a qcow2 drive spec (in the I/O thread, or in the main thread for its features). */
export function buildQcow2(spec: Qcow2Spec): Qcow2Disk {
  return buildImage(spec, spec.readOnly);
}

function buildImage(spec: LayerSpec, readOnly: boolean): Qcow2Disk {
  const io = new FdImageIo(spec.fd, spec.fileSize);
  const header = parseHeader(readHead(io), spec.fileSize, spec.path);
  return new Qcow2Disk({ io, header, name: spec.path, readOnly, backing: buildLayer(spec.backing) });
}

function buildLayer(spec: LayerSpec | undefined): DiskLayer | undefined {
  if (spec === undefined) return undefined;
  if (spec.format === 'raw') return new RawLayer(new FdImageIo(spec.fd, spec.fileSize), spec.fileSize);
  return buildImage(spec, true);
}
