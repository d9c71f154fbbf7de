/** virtio-rng: the host's CSPRNG; nothing to open; a rate limiter (Firecracker's entropy device) if given. */
import { randomFillSync } from 'node:crypto';
import { type Check, isObject, object, SchemaError } from '../../common/schema.js';
import type { RngConfig } from '../../config/index.js';
import type { RateLimiterConfig } from '../../devices/virtio/rate-limiter.js';
import { VirtioRng } from '../../devices/virtio/rng.js';
import { checkRngState } from '../../devices/virtio/rng-state.js';
import type { DeviceKind } from '../device-kind.js';
import { RATE_LIMITER } from './limits.js';

const settings = object({ rateLimiter: RATE_LIMITER });
/** A snapshot's `rng`: a boolean (no settings: as before there were any), or the settings. */
const saved: Check = (v, at) => {
  if (typeof v === 'boolean') return;
  if (!isObject(v)) throw new SchemaError(at, 'expected true, false or the device settings');
  settings(v, at);
};

export const rngKind: DeviceKind<RngConfig, { rateLimiter?: RateLimiterConfig | undefined }> = {
  name: 'virtio-rng',
  configKey: 'rng',
  config: (c) => (c.rng ? (c.rng === true ? {} : c.rng) : undefined),
  snapshot: {
    save: (c) => (c === undefined ? false : c.rateLimiter ? { rateLimiter: c.rateLimiter } : true),
    check: saved,
    restore: (s) => (s === true ? {} : isObject(s) ? (s as RngConfig) : undefined),
  },
  open: (c) => ({ devices: [{ name: 'virtio-rng', spec: { rateLimiter: c.rateLimiter } }] }),
  build: (spec) => new VirtioRng((b) => randomFillSync(b), spec.rateLimiter),
  recordCheck: checkRngState,
};
