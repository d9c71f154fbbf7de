/**
 * The memory file's tag: one 4 KiB page after the guest RAM layout saying which memory image the file
 * holds, so that a diff is never mistaken for a whole memory, a diff is merged only onto the image it
 * was taken against, and a merge cut short is noticed. Layout: magic (8), body length (4), JSON body,
 * zeros, and the SHA-256 of the body in the last 32 bytes.
 */
import { createHash } from 'node:crypto';
import { fstatSync, readSync } from 'node:fs';
import { SnapshotError } from '../common/errors.js';

export const TAG_SIZE = 4096;
const MAGIC = Buffer.from('VIREOMEM', 'latin1');
const DIGEST_AT = TAG_SIZE - 32;

export interface MemoryTag {
  /** full: every page of the image; diff: only the pages changed since image `parent` (holes elsewhere). */
  kind: 'full' | 'diff';
  /** The memory image this file holds (a snapshot's memory.id). */
  id: string;
  /** For a diff: the image it applies onto. */
  parent?: string | undefined;
  /** Bytes of guest RAM the file lays out (the tag follows them). */
  size: number;
  /** For a diff: bytes of page data it holds (what a merge copies). */
  dataBytes?: number | undefined;
  /** Set while a diff is being merged into this file: the diff's id (a merge cut short leaves it). */
  merging?: string | undefined;
}

export function encodeTag(tag: MemoryTag, into: Uint8Array): void {
  const json = Buffer.from(JSON.stringify(tag), 'utf8');
  const out = Buffer.from(into.buffer, into.byteOffset, TAG_SIZE);
  out.fill(0);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(json.length, 8);
  json.copy(out, 12);
  createHash('sha256').update(json).digest().copy(out, DIGEST_AT);
}

/** The tag in `page`, or undefined when there is none (or it is damaged). */
export function decodeTag(page: Uint8Array): MemoryTag | undefined {
  const b = Buffer.from(page.buffer, page.byteOffset, page.byteLength);
  if (b.length !== TAG_SIZE || !b.subarray(0, 8).equals(MAGIC)) return undefined;
  const len = b.readUInt32LE(8);
  if (len > DIGEST_AT - 12) return undefined;
  const json = b.subarray(12, 12 + len);
  if (!createHash('sha256').update(json).digest().equals(b.subarray(DIGEST_AT))) return undefined;
  try {
    const t = JSON.parse(json.toString('utf8')) as Partial<MemoryTag>;
    if ((t.kind !== 'full' && t.kind !== 'diff') || typeof t.id !== 'string' || !Number.isSafeInteger(t.size))
      return undefined;
    return t as MemoryTag;
  } catch {
    return undefined;
  }
}

/** Reads the tag at the end of the memory file open at `fd`; a clear error if it has none. */
export function readTag(fd: number, path: string): MemoryTag {
  const bad = (): never => {
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_CORRUPT',
      `memory file ${path} has no valid vireo tag at its end: wrong or truncated file`,
    );
  };
  const fileSize = fstatSync(fd).size;
  if (fileSize < TAG_SIZE) return bad();
  const page = Buffer.alloc(TAG_SIZE);
  if (readSync(fd, page, 0, TAG_SIZE, fileSize - TAG_SIZE) !== TAG_SIZE) return bad();
  const tag = decodeTag(page);
  if (!tag || tag.size + TAG_SIZE !== fileSize) return bad();
  return tag;
}
