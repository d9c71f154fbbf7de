/**
 * The one key=value option parser every `--flag k=v,k=v` value goes through (Cloud Hypervisor's
 * OptionParser): declared keys and their aliases, an error for an unknown key and for a key given
 * twice, values split at the first `=` (so a value may hold `=`; it may not hold `,`). Each resource's
 * parseX (config/*.ts) turns the map into its XConfig; validateX then checks the facts.
 */
import { ConfigError } from '../common/errors.js';

export interface OptionSpec {
  /** What the options configure, for messages: "drive", "balloon". */
  what: string;
  /** The keys, by their canonical names. */
  keys: readonly string[];
  /** Other names for keys: alias → canonical key. */
  aliases?: Readonly<Record<string, string>>;
  /** How to write the options, for messages: "path=FILE, id=NAME, ro". */
  usage: string;
  /** The key a bare word (no `=`, not a key's name) is the value of, as `--balloon 64`. */
  positional?: string;
}

/**
 * `k=v,k,k=v` → canonical key → value (a key given without `=` maps to ''). Throws ConfigError on an
 * empty text or option, an unknown key and a key given twice (under any of its names).
 */
export function parseOptions(text: string, spec: OptionSpec): Map<string, string> {
  const out = new Map<string, string>();
  if (text === '') throw new ConfigError(`${spec.what} options are empty: use ${spec.usage}`);
  for (const part of text.split(',')) {
    if (part === '') throw new ConfigError(`empty ${spec.what} option in "${text}": use ${spec.usage}`);
    const eq = part.indexOf('=');
    let key = eq < 0 ? part : part.slice(0, eq);
    let value = eq < 0 ? '' : part.slice(eq + 1);
    const known = (k: string): boolean => spec.keys.includes(spec.aliases?.[k] ?? k);
    if (eq < 0 && spec.positional !== undefined && !known(key)) {
      key = spec.positional;
      value = part;
    }
    const canonical = spec.aliases?.[key] ?? key;
    if (!spec.keys.includes(canonical))
      throw new ConfigError(`unknown ${spec.what} option "${part}": use ${spec.usage}`);
    if (out.has(canonical))
      throw new ConfigError(`${spec.what} option ${canonical} is given more than once: give it once`);
    out.set(canonical, value);
  }
  return out;
}

/** A flag's value: '' (the bare key), on, true, 1, yes → true; off, false, 0, no → false. */
export function optionBool(what: string, key: string, value: string): boolean {
  if (['', 'on', 'true', '1', 'yes'].includes(value)) return true;
  if (['off', 'false', '0', 'no'].includes(value)) return false;
  throw new ConfigError(`${what} option ${key}=${value} is not on or off: give ${key}, ${key}=on or ${key}=off`);
}

/** A whole number in decimal digits (at most 15 of them, so it is exact). */
export function optionUint(what: string, key: string, value: string): number {
  if (!/^[0-9]{1,15}$/.test(value)) throw new ConfigError(`${what} ${key} must be a whole number, got "${value}"`);
  return Number(value);
}

/** A value that must not be empty (a path, a name). */
export function optionString(what: string, key: string, value: string): string {
  if (value === '') throw new ConfigError(`${what} option ${key} needs a value: give ${key}=...`);
  return value;
}
