import { type Field, int, object, opt } from '../../common/schema.js';

/** Bounds on what a snapshot's configuration may hold (its check refuses more). */
export const PATH = 4096;
export const NAME = 256;
/** More than any vireo VM has (virtio-mmio slots). */
export const MAX_DEVICES = 64;

const bucket = opt(
  object({
    size: int(0, Number.MAX_SAFE_INTEGER),
    oneTimeBurst: opt(int(0, Number.MAX_SAFE_INTEGER)),
    refillTimeMs: int(0, 86_400_000_000),
  }),
);
/** A rate limiter (RateLimiterConfig) in a snapshot's configuration, optional where it stands. */
export const RATE_LIMITER: Field = opt(object({ bandwidth: bucket, ops: bucket }));
