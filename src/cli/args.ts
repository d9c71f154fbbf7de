/** Small commander helpers shared by the CLI's command files. */
import { InvalidArgumentError } from 'commander';
import { ConfigError } from '../common/errors.js';

/** An argParser for an integer from 1 to `max` (`what` names the option in the error). */
export function positiveInt(what: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1 || n > max)
      throw new InvalidArgumentError(`${what} must be an integer from 1 to ${max}`);
    return n;
  };
}

/** A config/ parser as a commander argParser: its ConfigError becomes commander's usage error. */
export function cliParser<T>(parse: (v: string) => T): (v: string) => T {
  return (v) => {
    try {
      return parse(v);
    } catch (e) {
      if (e instanceof ConfigError) throw new InvalidArgumentError(e.message);
      throw e;
    }
  };
}

/** `K=V` into a record (repeatable options). */
export function keyValuesSync(v: string, prev: Record<string, string> = {}): Record<string, string> {
  const eq = v.indexOf('=');
  if (eq < 1) throw new InvalidArgumentError(`${JSON.stringify(v)}: give KEY=VALUE`);
  return { ...prev, [v.slice(0, eq)]: v.slice(eq + 1) };
}
