/**
 * The snapshot state file: magic, format version, a JSON body (binary state as base64), and a
 * SHA-256 of everything before it — a checksum against damage, not a signature: whoever can write the
 * file can re-compute it, so the body is validated field by field (state.ts) before use. Written to a
 * temporary name and synced; the pair writer (pair.ts) renames it into place after the memory file.
 * Reading checks, in order: that it is a regular file of a sane size, the magic, the version, the
 * length, the checksum; each failure has its own code and one clear line.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, fsyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { SnapshotError } from '../common/errors.js';
import { formatSize, readUserFile } from '../common/files.js';

export const SNAPSHOT_MAGIC = Buffer.from('VIREOSNP', 'latin1');
/**
 * Bumped on any incompatible change of the body (2: memory image ids, diff snapshots, tagged memory
 * files; 3: device state as named, versioned records instead of raw buffer layouts).
 */
export const SNAPSHOT_VERSION = 3;
/** The versions this vireo reads: 2's device layouts are known exactly and converted (v2.ts). */
export const SNAPSHOT_VERSIONS_READ = [2, 3] as const;
const HEADER = 16; // magic (8), version (4), body length (4)
const DIGEST = 32;
/**
 * The largest state file read: 254 vCPUs (~15 KiB of state each: XSAVE, CPUID, MSRs, LAPIC as
 * base64) and the devices come to a few MiB; anything far beyond that is not a vireo state file.
 */
export const STATE_FILE_MAX = 64 << 20;

/** Writes `chunks` to `tmp`, a new file (O_EXCL), and syncs it; on failure it is removed. */
export function writeStateFile(tmp: string, path: string, chunks: readonly Uint8Array[]): void {
  let fd = -1;
  try {
    fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    for (const c of chunks) {
      let off = 0;
      while (off < c.length) off += writeSync(fd, c, off);
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    rmSync(tmp, { force: true });
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `cannot write snapshot file ${path}: ${code}; check the directory and free space`,
    );
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

/** Reads and verifies a state file; the body is returned as parsed JSON for the caller to check, with its format version. */
export function decodeStateFile(path: string): { version: number; body: unknown } {
  const b = readUserFile(path, {
    what: 'snapshot',
    maxBytes: STATE_FILE_MAX,
    bound: `any vireo state file (${formatSize(STATE_FILE_MAX)})`,
    hint: 'give the snapshot_path a snapshot was written to',
    error: (m) => new SnapshotError('VIREO_ERR_SNAPSHOT', m),
  });
  if (b.length < HEADER || !b.subarray(0, 8).equals(SNAPSHOT_MAGIC))
    throw new SnapshotError('VIREO_ERR_SNAPSHOT_CORRUPT', `${path} is not a vireo snapshot (bad magic)`);
  const version = b.readUInt32LE(8);
  if (!(SNAPSHOT_VERSIONS_READ as readonly number[]).includes(version))
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_VERSION',
      `snapshot ${path} has format version ${version}; this vireo reads versions ${SNAPSHOT_VERSIONS_READ.join(' and ')} (it writes ${SNAPSHOT_VERSION}) — restore it with the vireo that wrote it`,
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
    return { version, body: JSON.parse(b.subarray(HEADER, HEADER + len).toString('utf8')) };
  } catch {
    throw new SnapshotError('VIREO_ERR_SNAPSHOT_CORRUPT', `snapshot ${path} has an unreadable body`);
  }
}

/** Base64 helpers for binary state inside the JSON body. */
export const b64 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
export const unb64 = (s: string): Buffer => Buffer.from(s, 'base64');
