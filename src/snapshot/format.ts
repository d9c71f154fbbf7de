/**
 * The snapshot state file: magic, format version, a JSON body (binary state as base64), and a
 * SHA-256 of everything before it. Written to a temporary name, synced and renamed, so a crash
 * mid-write leaves the previous file (or none), never half of one. Reading checks, in order: the
 * magic, the version, the length, the checksum; each failure has its own code and one clear line.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { SnapshotError } from '../common/errors.js';

export const SNAPSHOT_MAGIC = Buffer.from('VIREOSNP', 'latin1');
/** Bumped on any incompatible change of the body (2: memory image ids, diff snapshots, tagged memory files). */
export const SNAPSHOT_VERSION = 2;
const HEADER = 16; // magic (8), version (4), body length (4)
const DIGEST = 32;

/** Writes `data` to `path` through a temporary file in the same directory and a rename. */
export function writeFileAtomic(path: string, chunks: readonly Uint8Array[]): void {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`);
  let fd = -1;
  try {
    fd = openSync(tmp, 'w', 0o600);
    for (const c of chunks) {
      let off = 0;
      while (off < c.length) off += writeSync(fd, c, off);
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(tmp, path);
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    rmSync(tmp, { force: true });
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new SnapshotError('VIREO_ERR_SNAPSHOT', `cannot write snapshot file ${path}: ${code}; check the directory`);
  }
}

export function encodeStateFile<T>(body: T): Buffer[] {
  const json = Buffer.from(JSON.stringify(body), 'utf8');
  const head = Buffer.alloc(HEADER);
  SNAPSHOT_MAGIC.copy(head, 0);
  head.writeUInt32LE(SNAPSHOT_VERSION, 8);
  head.writeUInt32LE(json.length, 12);
  const digest = createHash('sha256').update(head).update(json).digest();
  return [head, json, digest];
}

/** Reads and verifies a state file; the body is returned as parsed JSON for the caller to check. */
export function decodeStateFile(path: string): unknown {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch (e) {
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `cannot read snapshot ${path}: ${(e as NodeJS.ErrnoException).code}; give the snapshot_path a snapshot was written to`,
    );
  }
  if (b.length < HEADER || !b.subarray(0, 8).equals(SNAPSHOT_MAGIC))
    throw new SnapshotError('VIREO_ERR_SNAPSHOT_CORRUPT', `${path} is not a vireo snapshot (bad magic)`);
  const version = b.readUInt32LE(8);
  if (version !== SNAPSHOT_VERSION)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_VERSION',
      `snapshot ${path} has format version ${version}; this vireo reads version ${SNAPSHOT_VERSION} — restore it with the vireo that wrote it`,
    );
  const len = b.readUInt32LE(12);
  if (b.length !== HEADER + len + DIGEST)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_CORRUPT',
      `snapshot ${path} is ${b.length} bytes, expected ${HEADER + len + DIGEST}: it is truncated or has trailing data`,
    );
  const digest = createHash('sha256')
    .update(b.subarray(0, HEADER + len))
    .digest();
  if (!digest.equals(b.subarray(HEADER + len)))
    throw new SnapshotError('VIREO_ERR_SNAPSHOT_CORRUPT', `snapshot ${path} fails its checksum: the file is corrupted`);
  try {
    return JSON.parse(b.subarray(HEADER, HEADER + len).toString('utf8'));
  } catch {
    throw new SnapshotError('VIREO_ERR_SNAPSHOT_CORRUPT', `snapshot ${path} has an unreadable body`);
  }
}

/** Base64 helpers for binary state inside the JSON body. */
export const b64 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
export const unb64 = (s: string): Buffer => Buffer.from(s, 'base64');
