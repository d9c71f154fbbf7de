/** Device ids (drive_id, iface_id): the one rule for every front end. */
import { ConfigError } from '../common/errors.js';

/**
 * Letters, digits (any script) and underscores: Firecracker's checked_id(), which its API applies to
 * every resource id; vireo's CLI and Vm.create take the same.
 */
export const ID_CHARS = /^[\p{L}\p{N}_]+$/u;

/** Ids name devices in logs, metrics and snapshots: at most this many characters. */
export const MAX_ID_LENGTH = 64;

/** Throws ConfigError unless `id` is 1 to 64 letters, digits or underscores. */
export function validateId(what: string, id: string): void {
  if (typeof id !== 'string' || !ID_CHARS.test(id) || [...id].length > MAX_ID_LENGTH)
    throw new ConfigError(
      `${what} id "${String(id)}" is invalid: use 1-${MAX_ID_LENGTH} letters, digits or underscores`,
    );
}

/** Throws ConfigError when two entries share an id. */
export function validateUniqueIds(what: string, ids: Iterable<string>, hint = ''): void {
  const seen = new Set<string>();
  for (const id of ids) {
    if (seen.has(id)) throw new ConfigError(`${what} id "${id}" is given twice${hint}`);
    seen.add(id);
  }
}
