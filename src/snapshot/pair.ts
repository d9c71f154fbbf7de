/**
 * Writing a snapshot's two files as a pair. A restore needs the state file and the memory file it
 * was written with (the memory tag's image id ties them), so a new pair replaces an old one only once
 * both new files are whole on disk: each is written to a temporary name beside its target and synced;
 * then the memory file is renamed into place and the state file last, and the directories are synced.
 * A failure before the renames (ENOSPC, EIO, a bad directory) removes the temporaries and leaves the
 * old pair as it was, restorable. The old memory file is kept under a hard link until the state file
 * is in place, so that a failing last rename can put it back.
 *
 * Targets are the user's (the API writes as root): one that exists and is not a regular file — a
 * FIFO, a device node, a directory, or a symbolic link (to anything) — is refused rather than
 * replaced, and the two paths must name two different files.
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  fsyncSync,
  linkSync,
  lstatSync,
  openSync,
  renameSync,
  rmSync,
  type Stats,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { SnapshotError } from '../common/errors.js';
import { kindOf } from '../common/files.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { writeStateFile } from './format.js';
import { type MemoryFileContent, type MemoryFileLayout, writeMemoryFile } from './memory-file.js';

export interface SnapshotPaths {
  statePath: string;
  memPath: string;
}

/** A fresh hidden name beside `path` (random: two writers never share one, and a planted one is refused by O_EXCL). */
const sideName = (path: string, tag: string): string =>
  join(dirname(path), `.${basename(path)}.${tag}-${process.pid}-${randomBytes(4).toString('hex')}`);

/** The target's lstat, or undefined when there is nothing at the path yet. */
function existing(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `cannot write snapshot file ${path}: ${(e as NodeJS.ErrnoException).code}; check the directory`,
    );
  }
}

/** Refuses targets a snapshot must not replace (see the top of this file). */
export function checkSnapshotTargets(p: SnapshotPaths): void {
  if (resolve(p.statePath) === resolve(p.memPath))
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `the snapshot path and the memory file path are both ${p.statePath}: give two different files`,
    );
  const found: Stats[] = [];
  for (const [path, what] of [
    [p.statePath, 'snapshot_path'],
    [p.memPath, 'mem_file_path'],
  ] as const) {
    const st = existing(path);
    if (st === undefined) continue;
    if (!st.isFile())
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT',
        `${what} ${path} is ${kindOf(st)}; a snapshot replaces the file at its path, so it writes only a new or regular file: give another path`,
      );
    found.push(st);
  }
  const [a, b] = found;
  if (a && b && a.dev === b.dev && a.ino === b.ino)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `the snapshot path ${p.statePath} and the memory file path ${p.memPath} are the same file: give two different files`,
    );
}

/** Syncs a directory, so a rename in it survives a crash (file systems that cannot are skipped). */
function syncDir(dir: string): void {
  let fd = -1;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    fsyncSync(fd);
  } catch {
    // EINVAL on file systems without directory fsync: the rename still happened.
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

/**
 * Writes the memory file from `mem`, then the state file `state(layout)` (the state records the
 * memory layout), and replaces the pair at `paths` with them (see the top of this file).
 */
export function writeSnapshotPair(
  paths: SnapshotPaths,
  mem: GuestMemory,
  content: MemoryFileContent,
  state: (layout: MemoryFileLayout) => readonly Uint8Array[],
): MemoryFileLayout {
  checkSnapshotTargets(paths);
  const memTmp = sideName(paths.memPath, 'tmp');
  const stateTmp = sideName(paths.statePath, 'tmp');
  let renamed = false;
  try {
    const layout = writeMemoryFile(memTmp, paths.memPath, mem, content);
    writeStateFile(stateTmp, paths.statePath, state(layout));
    // Again, just before the renames: the write took a while, and the paths are the user's.
    checkSnapshotTargets(paths);
    installPair(paths, memTmp, stateTmp);
    renamed = true;
    return layout;
  } finally {
    if (!renamed) {
      rmSync(memTmp, { force: true });
      rmSync(stateTmp, { force: true });
    }
  }
}

/** Memory file first, state file last; the old memory file comes back if the last rename fails. */
function installPair(paths: SnapshotPaths, memTmp: string, stateTmp: string): void {
  const fail = (path: string, e: unknown): SnapshotError =>
    new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `cannot write snapshot file ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}; check the directory`,
    );
  let backup: string | undefined;
  if (existing(paths.memPath)) {
    backup = sideName(paths.memPath, 'old');
    try {
      linkSync(paths.memPath, backup);
    } catch {
      backup = undefined; // no hard links here: the last rename is then not undoable
    }
  }
  try {
    try {
      renameSync(memTmp, paths.memPath);
    } catch (e) {
      throw fail(paths.memPath, e);
    }
    try {
      renameSync(stateTmp, paths.statePath);
    } catch (e) {
      if (backup !== undefined) {
        try {
          renameSync(backup, paths.memPath);
        } catch {
          // Left under its backup name rather than lost; the message says where.
          const kept = backup;
          backup = undefined;
          throw new SnapshotError(
            'VIREO_ERR_SNAPSHOT',
            `${fail(paths.statePath, e).message}; the previous memory file is kept as ${kept}`,
          );
        }
        backup = undefined;
      }
      throw fail(paths.statePath, e);
    }
  } finally {
    if (backup !== undefined) rmSync(backup, { force: true });
  }
  syncDir(dirname(resolve(paths.memPath)));
  if (dirname(resolve(paths.statePath)) !== dirname(resolve(paths.memPath))) syncDir(dirname(resolve(paths.statePath)));
}
