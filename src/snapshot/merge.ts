/**
 * Merging a diff snapshot's memory file onto its base, in place (Firecracker users do this with their
 * rebase tool): only the diff's data extents are copied (found with SEEK_DATA/SEEK_HOLE), so the cost
 * follows the diff's size, not the guest's. Crash safety: the base's tag is first rewritten to say
 * "merging <diff>" and synced; then the extents are copied and synced; then the tag names the diff's
 * image. A merge cut short leaves the "merging" mark, which a restore refuses and which the same merge,
 * run again, completes (copying the same extents twice gives the same bytes).
 */
import { closeSync, fsyncSync, readSync, writeSync } from 'node:fs';
import { SnapshotError } from '../common/errors.js';
import { openUserFile } from '../common/files.js';
import * as sys from '../os/sys.js';
import { encodeTag, type MemoryTag, readTag, TAG_SIZE } from './memory-tag.js';

export interface MergeResult {
  /** Bytes of page data copied from the diff. */
  copied: number;
  extents: number;
  /** The image the base now holds (the diff's id). */
  image: string;
  /** The base already held the diff's image: nothing was done. */
  alreadyMerged: boolean;
}

const CHUNK = 1 << 20;

/** Opens a memory file (a FIFO or device is refused, not waited on; its size is checked by its tag). */
function open(path: string, readWrite: boolean, what: string): number {
  return openUserFile(path, {
    what: `${what} memory file`,
    maxBytes: Number.MAX_SAFE_INTEGER,
    readWrite,
    hint: 'give the mem_file_path a snapshot was written to',
    error: (m) => new SnapshotError('VIREO_ERR_SNAPSHOT', m),
  }).fd;
}

function writeTag(fd: number, at: number, tag: MemoryTag): void {
  const page = Buffer.alloc(TAG_SIZE);
  encodeTag(tag, page);
  if (writeSync(fd, page, 0, TAG_SIZE, at) !== TAG_SIZE) throw new Error('short write of the tag');
  fsyncSync(fd);
}

/** The data extents [start, end) of the first `size` bytes of the file at `fd`. */
function dataExtents(fd: number, size: number): [number, number][] {
  const out: [number, number][] = [];
  let at = 0;
  while (at < size) {
    const start = sys.seekExtent(fd, at, sys.SEEK_DATA);
    if (start < 0 || start >= size) break;
    const hole = sys.seekExtent(fd, start, sys.SEEK_HOLE);
    const end = Math.min(hole < 0 ? size : hole, size);
    out.push([start, end]);
    at = end;
  }
  return out;
}

/** Whether another open file holds a lock that keeps an exclusive one from this fd (none without OFD locks). */
function exclusiveHeldElsewhere(fd: number): boolean {
  try {
    return sys.lockFile(fd, 'exclusive') !== undefined;
  } catch (e) {
    if (sys.locksUnsupported(e)) return false;
    throw e;
  }
}

/** Copies the memory diff at `diffPath` into the memory file at `basePath` (see the top of this file). */
export function mergeMemoryFiles(basePath: string, diffPath: string): MergeResult {
  const dfd = open(diffPath, false, 'diff');
  let bfd = -1;
  try {
    const diff = readTag(dfd, diffPath);
    if (diff.kind !== 'diff' || diff.parent === undefined)
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        `${diffPath} holds a full memory image, not a diff: restore it directly, or give a diff's memory file as --diff`,
      );
    bfd = open(basePath, true, 'base');
    // A VM restored from the base maps it and reads its pages not yet copied straight from it (it holds
    // a shared lock while it runs): merging in place would change that guest's RAM under it.
    if (exclusiveHeldElsewhere(bfd))
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        `memory file ${basePath} is in use by a running VM restored from it: stop that VM first (merging in place would change its RAM), or merge onto a copy`,
      );
    const base = readTag(bfd, basePath);
    if (base.size !== diff.size)
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        `${basePath} lays out ${base.size} bytes of guest memory and ${diffPath} ${diff.size}: they are not of the same VM`,
      );
    if (base.merging === undefined && base.id === diff.id)
      return { copied: 0, extents: 0, image: diff.id, alreadyMerged: true };
    const resuming = base.merging === diff.id;
    if (!resuming && base.merging !== undefined)
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        `a merge of diff ${base.merging} into ${basePath} was cut short: run that merge again first`,
      );
    if (!resuming && base.id !== diff.parent)
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        `${diffPath} is a diff of memory image ${diff.parent}, but ${basePath} holds image ${base.id}: merge the diffs in the order they were taken, onto the snapshot the first was taken after`,
      );
    const extents = dataExtents(dfd, diff.size);
    const copied = extents.reduce((s, [a, b]) => s + (b - a), 0);
    // A file system that reports no holes (or coarser ones than pages) would copy zeros over the base.
    if (diff.dataBytes !== undefined && copied !== diff.dataBytes)
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        `${diffPath} shows ${copied} bytes of data where the diff wrote ${diff.dataBytes}: its file system does not keep holes page by page (use ext4, xfs, btrfs or tmpfs)`,
      );
    writeTag(bfd, base.size, { ...base, merging: diff.id });
    const buf = Buffer.alloc(CHUNK);
    for (const [start, end] of extents) {
      for (let o = start; o < end; ) {
        const n = readSync(dfd, buf, 0, Math.min(CHUNK, end - o), o);
        if (n <= 0) throw new Error(`short read of ${diffPath} at ${o}`);
        let w = 0;
        while (w < n) w += writeSync(bfd, buf, w, n - w, o + w);
        o += n;
      }
    }
    fsyncSync(bfd);
    // Onto a full image the result is full; onto a diff, a diff of the same parent holding both.
    const dataBytes =
      base.kind === 'diff' ? dataExtents(bfd, base.size).reduce((s, [a, b]) => s + (b - a), 0) : undefined;
    writeTag(bfd, base.size, { kind: base.kind, id: diff.id, parent: base.parent, size: base.size, dataBytes });
    return { copied, extents: extents.length, image: diff.id, alreadyMerged: false };
  } catch (e) {
    if (e instanceof SnapshotError) throw e;
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `merging ${diffPath} into ${basePath} failed: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; run the merge again`,
    );
  } finally {
    closeSync(dfd);
    if (bfd >= 0) closeSync(bfd);
  }
}
