/**
 * virtio-blk's own persisted state. What a restored disk needs is mostly elsewhere: its image path, id
 * and rate limiter's configuration in the snapshot's configuration, its configuration space
 * (capacity, limits) in the transport record, its queue positions in the side record; a snapshot is
 * refused while any request is in flight (transport/runner.ts save), so none is lost, and a request
 * the rate limiter holds is given back to the ring. Version 2 keeps the rate limiter's buckets (the
 * tokens left, as Firecracker's snapshots do), so a restored drive does not start with full ones;
 * version 1 (before it) is still taken, with full buckets.
 */
import { type Check, checkRecord, int, nullable, object, SchemaError, version } from '../../common/schema.js';
import type { RateLimiterState } from './rate-limiter.js';

export const BLOCK_STATE_VERSION = 2;

export type BlockState = { version: 1 } | { version: 2; rateLimiter: RateLimiterState | null };

const tokens = int(-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
const bucket = nullable(object({ budget: tokens, burst: int(0, Number.MAX_SAFE_INTEGER) }));

const v1 = object({ version: version(1) });
const v2 = object({ version: version(2), rateLimiter: nullable(object({ bandwidth: bucket, ops: bucket })) });

export const checkBlockState: Check = (v, at) => {
  const n = (v as { version?: unknown } | null)?.version;
  if (n === 1) v1(v, at);
  else if (n === 2 || typeof v !== 'object' || v === null || Array.isArray(v)) v2(v, at);
  else throw new SchemaError(`${at}.version`, 'expected state version 1 or 2');
};

/** The record, with whole-token budgets. */
export function saveBlockState(limiter: RateLimiterState | null): BlockState {
  const whole = (b: { budget: number; burst: number } | null) =>
    b === null ? null : { budget: Math.floor(b.budget), burst: Math.floor(b.burst) };
  return {
    version: 2,
    rateLimiter: limiter === null ? null : { bandwidth: whole(limiter.bandwidth), ops: whole(limiter.ops) },
  };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path); the limiter's buckets, if kept. */
export function restoreBlockState(state: unknown): RateLimiterState | null {
  checkRecord<BlockState>(checkBlockState, state, 'virtio-blk');
  return state.version === 2 ? state.rateLimiter : null;
}
