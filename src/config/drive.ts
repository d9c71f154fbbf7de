/** virtio-blk drives. */
import { ConfigError } from '../common/errors.js';
import { validateId, validateUniqueIds } from './id.js';
import { optionBool, optionString, parseOptions } from './options.js';

export interface DriveConfig {
  /** Drive id (Firecracker's drive_id); also the serial the guest reads with GET_ID (its first 20 bytes). */
  id: string;
  path: string;
  readOnly?: boolean | undefined;
  /** The image's format; without it, qcow2 when the image starts with qcow2's magic, else raw. */
  format?: 'raw' | 'qcow2' | undefined;
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
