/**
 * The memory snapshot file: guest RAM regions one after another, as a sparse file (all-zero pages
 * are holes, so a mostly empty guest writes little). Written to a temporary name and renamed.
 */
import { closeSync, fsyncSync, ftruncateSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { SnapshotError } from '../common/errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';

const PAGE = 4096;
const ZERO = Buffer.alloc(PAGE);

export interface MemoryFileRegion {
  gpa: number;
  size: number;
  /** Where the region starts in the file. */
  offset: number;
}

export interface MemoryFileLayout {
  regions: MemoryFileRegion[];
  /** The file's size in bytes (the sum of the regions). */
  size: number;
  /** Bytes of non-zero pages actually written. */
  written: number;
}

export function writeMemoryFile(path: string, mem: GuestMemory): MemoryFileLayout {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`);
  const regions: MemoryFileRegion[] = [];
  let offset = 0;
  for (const d of mem.descriptors) {
    regions.push({ gpa: d.gpa, size: d.size, offset });
    offset += d.size;
  }
  let fd = -1;
  let written = 0;
  try {
    fd = openSync(tmp, 'w', 0o600);
    ftruncateSync(fd, offset);
    for (const r of regions) {
      const bytes = mem.slice(r.gpa, r.size);
      const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      // Write runs of non-zero pages; zero pages stay holes.
      let run = -1;
      const flush = (end: number): void => {
        if (run < 0) return;
        for (let o = run; o < end; ) o += writeSync(fd, buf, o, end - o, r.offset + o);
        written += end - run;
        run = -1;
      };
      for (let o = 0; o < r.size; o += PAGE) {
        const zero = buf.subarray(o, o + PAGE).equals(ZERO);
        if (!zero && run < 0) run = o;
        else if (zero) flush(o);
      }
      flush(r.size);
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(tmp, path);
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    rmSync(tmp, { force: true });
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `cannot write memory file ${path}: ${code}; check the directory and free space`,
    );
  }
  return { regions, size: offset, written };
}
