/**
 * A drive's image, whatever its format: raw (file-disk.ts) or qcow2 (qcow2/), chosen by the format
 * the user gave or, without one, by the image's magic (as QEMU probes). What the main thread opens
 * is plain data posted to the I/O thread, which builds the backend from it.
 *
 * Probing has QEMU's known risk: a raw image whose guest wrote qcow2's magic into its first sector
 * would be read as qcow2 on the next open (with a backing file the guest names). As QEMU does, a raw
 * image whose format was probed refuses such writes; give format=raw to allow them.
 */
import { closeSync } from 'node:fs';
import type { BlockBackend } from '../devices/virtio/block.js';
import type { RegionDescriptor } from '../memory/guest-memory.js';
import { withTestFaults } from './fault-disk.js';
import { FileDisk, type FileDiskSpec, openFileDisk } from './file-disk.js';
import { FdImageIo } from './qcow2/image-io.js';
import { buildQcow2, closeLayer, hasQcow2Magic, openQcow2, type Qcow2Spec } from './qcow2/open.js';

export type DiskFormat = 'raw' | 'qcow2';
export type DiskSpec = (FileDiskSpec & { format?: 'raw' }) | Qcow2Spec;

/** Opens a drive's image (and a qcow2 image's backing chain); throws a one-line VireoError. */
export function openDisk(path: string, readOnly: boolean, format?: DiskFormat): DiskSpec {
  const file = openFileDisk(path, readOnly);
  try {
    const qcow2 = format === 'qcow2' || (format === undefined && hasQcow2Magic(new FdImageIo(file.fd, file.size)));
    return qcow2 ? openQcow2(file) : { ...file, format: 'raw', probed: format === undefined };
  } catch (e) {
    closeSync(file.fd);
    throw e;
  }
}

/** Closes every fd a spec holds. */
export function closeDisk(spec: DiskSpec): void {
  if (spec.format === 'qcow2') closeLayer(spec);
  else closeSync(spec.fd);
}

/**
 * The backend for a spec; `pool` gives a raw image threads of its own (a qcow2 image serves inline).
 * Under the tests' VIREO_TEST_DISK_FAULTS, its requests fail as told (fault-disk.ts).
 */
export function createBlockBackend(
  spec: DiskSpec,
  pool?: { memory: readonly RegionDescriptor[]; threads: number },
): BlockBackend {
  return withTestFaults((threads) =>
    spec.format === 'qcow2' ? buildQcow2(spec) : new FileDisk(spec, threads ? pool : undefined),
  );
}
