/** virtio-balloon. */
import { ConfigError } from '../common/errors.js';
import { optionBool, optionUint, parseOptions } from './options.js';

export interface BalloonConfig {
  /** Initial target: MiB the guest should give back. */
  amountMiB: number;
  deflateOnOom: boolean;
  /** Ask the guest for statistics every this many seconds (0: never; they can still be requested). */
  statsPollingIntervalS: number;
}

/** The longest balloon statistics interval (Firecracker's is a u16 of seconds). */
export const MAX_STATS_INTERVAL_S = 65535;

const BALLOON_OPTIONS = {
  what: 'balloon',
  keys: ['amount', 'deflate_on_oom', 'stats'],
  aliases: { amount_mib: 'amount', stats_polling_interval_s: 'stats' },
  usage: 'amount=MIB, deflate_on_oom, stats=SECONDS',
  positional: 'amount',
} as const;

/** The CLI's `--balloon` value: `MIB` or `amount=MIB[,deflate_on_oom][,stats=SECONDS]` (Firecracker's fields). */
export function parseBalloon(text: string): BalloonConfig {
  const o = parseOptions(text, BALLOON_OPTIONS);
  const num = (k: string): number => {
    const v = o.get(k);
    return v === undefined ? 0 : optionUint('balloon', k, v);
  };
  const d = o.get('deflate_on_oom');
  const b: BalloonConfig = {
    amountMiB: num('amount'),
    deflateOnOom: d === undefined ? false : optionBool('balloon', 'deflate_on_oom', d),
    statsPollingIntervalS: num('stats'),
  };
  validateBalloon(b);
  return b;
}

/** The balloon on its own and, given the guest's memory size, its target against it. */
export function validateBalloon(b: BalloonConfig, memMiB?: number): void {
  validateBalloonTarget(b.amountMiB, memMiB);
  validateStatsInterval(b.statsPollingIntervalS);
}

export function validateBalloonTarget(mib: number, memMiB?: number): void {
  if (!Number.isInteger(mib) || mib < 0)
    throw new ConfigError(`balloon amount ${mib} MiB is invalid: give a whole number of MiB, 0 or more`);
  if (memMiB !== undefined && mib > memMiB)
    throw new ConfigError(`balloon target ${mib} MiB is larger than the guest's memory (${memMiB} MiB)`);
}

export function validateStatsInterval(s: number): void {
  if (!Number.isInteger(s) || s < 0 || s > MAX_STATS_INTERVAL_S)
    throw new ConfigError(
      `balloon statistics interval ${s} s is invalid: give a whole number of seconds up to ${MAX_STATS_INTERVAL_S} (0: off)`,
    );
}
