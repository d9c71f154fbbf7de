/**
 * Checks for JSON that vireo reads back from a file it does not trust (a snapshot's body, a device's
 * persisted state record): each check throws a SchemaError naming the JSON path of the first bad
 * value ($.devices.serial.rxFifo[3]) with what was expected, so a damaged or hostile file is refused
 * with one clear line instead of a TypeError deep in a restore. Unknown keys are refused too: a record
 * this vireo did not write is not guessed at.
 *
 * Hand-written combinators rather than a compiled JSON Schema: a restore is on the clock (a few ms),
 * and these cost nothing to set up. They live in common/ so that devices (which may not import
 * snapshot/) validate their own records with the same rules the whole-body check uses.
 */
import { SnapshotError } from './errors.js';

/** Throws SchemaError on the first bad field; `at` is the JSON path of `v`. */
export type Check = (v: unknown, at: string) => void;

export class SchemaError extends Error {
  constructor(
    readonly at: string,
    readonly why: string,
  ) {
    super(`${at}: ${why}`);
  }
}

export const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

export const int =
  (min: number, max: number): Check =>
  (v, at) => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max)
      throw new SchemaError(at, `expected an integer from ${min} to ${max}`);
  };
export const u8 = int(0, 0xff);
export const u16 = int(0, 0xffff);
export const u32 = int(0, 0xffffffff);
/** A value kept in a SharedState int32 slot and saved as read (SharedState.get): negative past 2^31. */
export const i32 = int(-0x8000_0000, 0x7fff_ffff);
export const bool: Check = (v, at) => {
  if (typeof v !== 'boolean') throw new SchemaError(at, 'expected true or false');
};
export const str =
  (maxLength: number): Check =>
  (v, at) => {
    if (typeof v !== 'string' || v.length > maxLength)
      throw new SchemaError(at, `expected a string of at most ${maxLength}`);
  };
export const oneOf =
  (...values: readonly string[]): Check =>
  (v, at) => {
    if (typeof v !== 'string' || !values.includes(v)) throw new SchemaError(at, `expected one of ${values.join(', ')}`);
  };
/** The record's format version: exactly `version` (a reader that knows older ones upgrades them first). */
export const version =
  (current: number): Check =>
  (v, at) => {
    if (v !== current) throw new SchemaError(at, `expected state version ${current}`);
  };
/** Bytes as lowercase hex, at most `maxBytes` of them. */
export const hexBytes =
  (maxBytes: number): Check =>
  (v, at) => {
    if (typeof v !== 'string' || v.length % 2 !== 0 || v.length > maxBytes * 2 || !/^[0-9a-f]*$/.test(v))
      throw new SchemaError(at, `expected at most ${maxBytes} bytes as lowercase hex`);
  };

export const array =
  (item: Check, min: number, max: number): Check =>
  (v, at) => {
    if (!Array.isArray(v) || v.length < min || v.length > max)
      throw new SchemaError(at, min === max ? `expected a list of ${min}` : `expected a list of ${min} to ${max}`);
    v.forEach((x, i) => {
      item(x, `${at}[${i}]`);
    });
  };
export const tuple =
  (...items: Check[]): Check =>
  (v, at) => {
    if (!Array.isArray(v) || v.length !== items.length) throw new SchemaError(at, `expected a list of ${items.length}`);
    items.forEach((c, i) => {
      c(v[i], `${at}[${i}]`);
    });
  };
export const nullable =
  (c: Check): Check =>
  (v, at) => {
    if (v !== null) c(v, at);
  };

export interface Field {
  check: Check;
  optional?: boolean;
}
export const opt = (check: Check): Field => ({ check, optional: true });
export const object =
  (fields: Record<string, Check | Field>): Check =>
  (v, at) => {
    if (!isObject(v)) throw new SchemaError(at, 'expected an object');
    for (const key of Object.keys(v))
      if (!Object.hasOwn(fields, key)) throw new SchemaError(`${at}.${key}`, 'unknown field');
    for (const [key, f] of Object.entries(fields)) {
      const { check, optional } = typeof f === 'function' ? { check: f, optional: false } : f;
      if (!Object.hasOwn(v, key) || v[key] === undefined) {
        if (!optional) throw new SchemaError(`${at}.${key}`, 'missing');
        continue;
      }
      check(v[key], `${at}.${key}`);
    }
  };

/**
 * Checks a device's state record before a restore puts it in place: a bad field is a SnapshotError
 * VIREO_ERR_SNAPSHOT_CORRUPT with the field's path (`what` names the record, e.g. "serial").
 */
export function checkRecord<T>(check: Check, v: unknown, what: string): asserts v is T {
  try {
    check(v, '$');
  } catch (e) {
    if (!(e instanceof SchemaError)) throw e;
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_CORRUPT',
      `${what} state is bad at ${e.at}: ${e.why}; it was damaged or not written by this vireo`,
    );
  }
}
