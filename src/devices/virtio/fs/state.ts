/**
 * virtio-fs's own persisted state: the FUSE server's tables — the node ids and file handles the guest
 * holds — under a version. The host fds behind them cannot travel, so each is kept by what names it
 * again: a node by its path below the share (raw bytes as hex: names need not be UTF-8) and its
 * lookup count, a handle by its node and open flags. A restore re-opens each one, component by
 * component below the share (backends/fs/tables.ts); one whose path no longer resolves is kept as
 * stale and answers -ESTALE, as an NFS client sees a file removed on the server. The share itself
 * (path, tag, read-only) is the snapshot's configuration, not this record.
 */
import { array, bool, type Check, checkRecord, hexBytes, int, object, u32, version } from '../../../common/schema.js';
import { PATH_MAX } from './abi.js';

export const FS_STATE_VERSION = 1;
/** Bounds on what a record may hold (the server's own caps are below them). */
export const FS_STATE_MAX_NODES = 1 << 20;
export const FS_STATE_MAX_HANDLES = 1 << 16;

export interface FsNodeState {
  id: number;
  nlookup: number;
  /** The node's path below the share, as hex bytes ('' for the root). */
  path: string;
}
export interface FsHandleState {
  fh: number;
  node: number;
  flags: number;
  dir: boolean;
}
export interface FsServerState {
  nodes: FsNodeState[];
  handles: FsHandleState[];
  nextNode: number;
  nextHandle: number;
}

export type FsState = { version: 1; server: FsServerState };

const id = int(1, Number.MAX_SAFE_INTEGER);
export const checkFsServerState: Check = object({
  nodes: array(
    object({ id, nlookup: int(0, Number.MAX_SAFE_INTEGER), path: hexBytes(PATH_MAX) }),
    0,
    FS_STATE_MAX_NODES,
  ),
  handles: array(object({ fh: id, node: id, flags: u32, dir: bool }), 0, FS_STATE_MAX_HANDLES),
  nextNode: id,
  nextHandle: id,
});

export const checkFsState: Check = object({ version: version(FS_STATE_VERSION), server: checkFsServerState });

export function saveFsState(server: FsServerState): FsState & { readonly [k: string]: unknown } {
  return { version: 1, server };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT naming the bad field). */
export function restoreFsState(state: unknown): FsState {
  checkRecord<FsState>(checkFsState, state, 'virtio-fs');
  return state;
}
