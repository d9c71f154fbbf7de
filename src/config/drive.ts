/** virtio-blk drives. */
import { ConfigError } from '../common/errors.js';
import { bucketProblem, type RateLimiterConfig } from '../devices/virtio/rate-limiter.js';
import { validateId, validateUniqueIds } from './id.js';
import { optionBool, optionString, parseOptions } from './options.js';

export interface DriveConfig {
  /** Drive id (Firecracker's drive_id); also the serial the guest reads with GET_ID (its first 20 bytes). */
  id: string;
  path: string;
  readOnly?: boolean | undefined;
  /** The image's format; without it, qcow2 when the image starts with qcow2's magic, else raw. */
  format?: 'raw' | 'qcow2' | undefined;
  /** Firecracker's rate limiter: bandwidth (bytes) and ops token buckets; requests beyond them wait. */
  rateLimiter?: RateLimiterConfig | undefined;
}

const DRIVE_OPTIONS = {
  what: 'drive',
  keys: ['path', 'id', 'ro', 'format'],
  aliases: { readonly: 'ro' },
  usage: 'path=FILE, id=NAME, ro, format=raw|qcow2',
} as const;

/**
 * The CLI's `--drive` value: `PATH` (no `=`: the whole value is the path) or
 * `path=PATH[,id=ID][,ro]` (ro, readonly, ro=on|off). `index` numbers the default id (drive0, ...).
 */
export function parseDrive(text: string, index: number): DriveConfig {
  const id = `drive${index}`;
  if (!text.includes('=')) {
    if (text === '') throw new ConfigError('a drive needs path=FILE');
    return { id, path: text, readOnly: false };
  }
  const o = parseOptions(text, DRIVE_OPTIONS);
  const path = o.get('path');
  if (path === undefined) throw new ConfigError('a drive needs path=FILE');
  const d: DriveConfig = {
    id: o.has('id') ? optionString('drive', 'id', o.get('id') ?? '') : id,
    path: optionString('drive', 'path', path),
    readOnly: o.has('ro') ? optionBool('drive', 'ro', o.get('ro') ?? '') : false,
  };
  if (o.has('format')) d.format = optionString('drive', 'format', o.get('format') ?? '') as DriveConfig['format'];
  validateDrive(d);
  return d;
}

export function validateDrive(d: DriveConfig): void {
  validateId('drive', d.id);
  if (typeof d.path !== 'string' || d.path === '') throw new ConfigError(`drive ${d.id} needs a path`);
  if (d.format !== undefined && d.format !== 'raw' && d.format !== 'qcow2')
    throw new ConfigError(`drive ${d.id}: format ${String(d.format)} is not raw or qcow2`);
  if (d.rateLimiter !== undefined) validateRateLimiter(`drive ${d.id}: rate_limiter`, d.rateLimiter);
}

/** One line saying what is wrong with a rate limiter (`what` names it). */
export function validateRateLimiter(what: string, r: RateLimiterConfig): void {
  if (typeof r !== 'object' || r === null) throw new ConfigError(`${what} must be an object { bandwidth, ops }`);
  for (const key of Object.keys(r))
    if (key !== 'bandwidth' && key !== 'ops') throw new ConfigError(`${what} has no setting "${key}" (bandwidth, ops)`);
  for (const key of ['bandwidth', 'ops'] as const) {
    const b = r[key];
    if (b === undefined) continue;
    const why =
      typeof b === 'object' && b !== null
        ? bucketProblem(b, `${what}.${key}`)
        : `${what}.${key} must be a token bucket`;
    if (why !== undefined) throw new ConfigError(why);
  }
}

/** Each drive, and no id twice. */
export function validateDrives(drives: readonly DriveConfig[]): void {
  for (const d of drives) validateDrive(d);
  validateUniqueIds(
    'drive',
    drives.map((d) => d.id),
    ': each drive needs its own id',
  );
}
