/**
 * Test only: host errors on command under a drive, so the tests can show what a guest sees when its
 * disk fails with EIO (which no file system here gives on demand, and device-mapper's error target
 * is not everywhere). Read where a drive's backend is made, from VIREO_TEST_DISK_FAULTS; unset, as
 * it is outside the tests, nothing changes.
 *
 * The value is rules separated by `;`, each `OP:ERRNO[@FROM-TO][#TIMES]`: OP is read, write or
 * flush; ERRNO is EIO or ENOSPC; FROM-TO a byte range of the disk a read or write must overlap to
 * fail; TIMES how many requests the rule fails (default: all). For example
 * `write:EIO@1048576-1179648;flush:EIO#1` fails every write touching 1 MiB..1 MiB + 128 KiB and the
 * first flush. A drive under rules serves every request on the I/O thread (no pool threads), so each
 * one meets them.
 */
import type { BlockBackend } from '../devices/virtio/block.js';

export const DISK_FAULTS_ENV = 'VIREO_TEST_DISK_FAULTS';

type Op = 'read' | 'write' | 'flush';

export interface FaultRule {
  op: Op;
  code: 'EIO' | 'ENOSPC';
  from: number;
  to: number;
  /** Requests still to fail. */
  left: number;
}

const ERRNO = { EIO: 5, ENOSPC: 28 } as const;

/** Parses VIREO_TEST_DISK_FAULTS; throws on a rule it cannot read (a test's typo must not pass silently). */
export function parseFaultRules(text: string): FaultRule[] {
  return text
    .split(';')
    .map((r) => r.trim())
    .filter((r) => r !== '')
    .map((r) => {
      const m = r.match(/^(read|write|flush):(EIO|ENOSPC)(?:@(\d+)-(\d+))?(?:#(\d+))?$/);
      if (!m) throw new Error(`${DISK_FAULTS_ENV}: cannot read rule ${JSON.stringify(r)} (OP:ERRNO[@FROM-TO][#TIMES])`);
      return {
        op: m[1] as Op,
        code: m[2] as 'EIO' | 'ENOSPC',
        from: m[3] === undefined ? 0 : Number(m[3]),
        to: m[4] === undefined ? Number.POSITIVE_INFINITY : Number(m[4]),
        left: m[5] === undefined ? Number.POSITIVE_INFINITY : Number(m[5]),
      };
    });
}

/** A backend whose requests fail as the rules say; everything else goes to the one underneath. */
export class FaultDisk implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly canDiscard: boolean;
  /** Requests failed by a rule. */
  injected = 0;

  constructor(
    private readonly inner: BlockBackend,
    private readonly rules: FaultRule[],
  ) {
    this.size = inner.size;
    this.readOnly = inner.readOnly;
    this.canDiscard = inner.canDiscard;
  }

  private check(op: Op, position: number, length: number): void {
    for (const r of this.rules) {
      if (r.op !== op || r.left <= 0) continue;
      if (op !== 'flush' && (position + length <= r.from || position >= r.to)) continue;
      r.left--;
      this.injected++;
      throw Object.assign(new Error(`${r.code}: injected by ${DISK_FAULTS_ENV}, ${op}`), {
        code: r.code,
        errno: ERRNO[r.code],
      });
    }
  }

  readv(bufs: Uint8Array[], position: number): number {
    this.check('read', position, byteLength(bufs));
    return this.inner.readv(bufs, position);
  }

  writev(bufs: Uint8Array[], position: number): number {
    this.check('write', position, byteLength(bufs));
    return this.inner.writev(bufs, position);
  }

  flush(): void {
    this.check('flush', 0, 0);
    this.inner.flush();
  }

  discard(position: number, length: number): void {
    this.inner.discard(position, length);
  }

  writeZeroes(position: number, length: number, unmap: boolean): void {
    this.inner.writeZeroes(position, length, unmap);
  }

  writeBack(): void {
    this.inner.writeBack?.();
  }

  close(): void {
    this.inner.close?.();
  }
}

const byteLength = (bufs: readonly Uint8Array[]): number => bufs.reduce((n, b) => n + b.length, 0);

/** The backend under the rules of VIREO_TEST_DISK_FAULTS, or as it is when that is unset. */
export function withTestFaults(make: (pool: boolean) => BlockBackend): BlockBackend {
  const text = process.env[DISK_FAULTS_ENV];
  if (text === undefined || text === '') return make(true);
  return new FaultDisk(make(false), parseFaultRules(text));
}
