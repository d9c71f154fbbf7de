/** virtio-fs shares: host directories the guest mounts by tag (`mount -t virtiofs TAG /mnt`). */
import { ConfigError } from '../common/errors.js';
import { validateUniqueIds } from './id.js';
import { optionBool, optionString, parseOptions } from './options.js';

export interface ShareConfig {
  /** The host directory. */
  path: string;
  /** What the guest mounts it by: 1-36 letters, digits, '_', '-', '.' (virtio-fs's tag is 36 bytes). */
  tag: string;
  /** The guest may read but never change anything in it (every write is EROFS). */
  readOnly?: boolean | undefined;
}

export const SHARE_TAG = /^[A-Za-z0-9_.-]{1,36}$/;

const SHARE_OPTIONS = {
  what: 'share',
  keys: ['path', 'tag', 'ro'],
  aliases: { readonly: 'ro' },
  usage: 'PATH,tag=NAME[,ro] or path=PATH,tag=NAME[,ro]',
} as const;

/** The CLI's `--share` value: `PATH,tag=NAME[,ro]` (the first part without `=` is the path) or `path=PATH,…`. */
export function parseShare(text: string): ShareConfig {
  const parts = text.split(',');
  const first = parts[0] ?? '';
  const rest = !first.includes('=') && first !== '' ? parts.slice(1) : parts;
  const o = rest.length > 0 ? parseOptions(rest.join(','), SHARE_OPTIONS) : new Map<string, string>();
  const path = rest === parts ? o.get('path') : first;
  if (path === undefined || path === '') throw new ConfigError(`a share needs a directory: use ${SHARE_OPTIONS.usage}`);
  const tag = o.get('tag');
  if (tag === undefined) throw new ConfigError(`share ${path} needs tag=NAME (what the guest mounts it by)`);
  const s: ShareConfig = {
    path,
    tag: optionString('share', 'tag', tag),
    readOnly: o.has('ro') ? optionBool('share', 'ro', o.get('ro') ?? '') : false,
  };
  validateShare(s);
  return s;
}

export function validateShare(s: ShareConfig): void {
  if (typeof s.tag !== 'string' || !SHARE_TAG.test(s.tag))
    throw new ConfigError(`share tag "${String(s.tag)}" is invalid: use 1-36 letters, digits, '_', '-' or '.'`);
  if (typeof s.path !== 'string' || s.path === '' || s.path.includes('\0'))
    throw new ConfigError(`share ${s.tag} needs the path of a host directory`);
  if (s.readOnly !== undefined && typeof s.readOnly !== 'boolean')
    throw new ConfigError(`share ${s.tag}: readOnly must be true or false`);
}

/** Each share, and no tag twice. */
export function validateShares(shares: readonly ShareConfig[]): void {
  for (const s of shares) validateShare(s);
  validateUniqueIds(
    'share',
    shares.map((s) => s.tag),
    ': each share needs its own tag',
  );
}
