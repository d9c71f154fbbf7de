/**
 * Firecracker's rate limiter (its `RateLimiter` object): up to two token buckets, one of bytes
 * (`bandwidth`) and one of operations (`ops`). A bucket holds `size` tokens and refills at `size`
 * per `refillTimeMs`; `oneTimeBurst` tokens more are there at the start and are not refilled. A
 * request takes its tokens from both buckets or waits (the device holds it and asks waitMs() when
 * to try again): nothing is dropped. A request larger than a bucket goes once that bucket is full,
 * and leaves it in debt (negative) by the difference, so the average rate still holds.
 *
 * Time comes from the caller (milliseconds on a monotonic clock), so the buckets are pure and a
 * snapshot keeps their budgets (state(), restored with the same config).
 */

export interface TokenBucketConfig {
  /** Tokens the bucket holds (bytes or operations); 0 means no limit. */
  size: number;
  /** Tokens there once, beyond `size`, spent first and never refilled. */
  oneTimeBurst?: number | undefined;
  /** Milliseconds to refill the whole bucket from empty. */
  refillTimeMs: number;
}

export interface RateLimiterConfig {
  bandwidth?: TokenBucketConfig | undefined;
  ops?: TokenBucketConfig | undefined;
}

/** What a snapshot keeps of a bucket: the tokens left and the one-time burst left. */
export interface TokenBucketState {
  budget: number;
  burst: number;
}

export interface RateLimiterState {
  bandwidth: TokenBucketState | null;
  ops: TokenBucketState | null;
}

/** The largest size and burst taken (2^53 - 1: JSON numbers are exact up to it), and refill time (1000 days). */
const MAX_TOKENS = Number.MAX_SAFE_INTEGER;
const MAX_REFILL_MS = 86_400_000_000;

/** One line saying what is wrong with `c` (undefined when it is a bucket vireo takes). */
export function bucketProblem(c: TokenBucketConfig, what: string): string | undefined {
  const n = (v: unknown, max: number): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;
  if (!n(c.size, MAX_TOKENS)) return `${what}.size must be a whole number of tokens, 0 to 2^53-1`;
  if (c.oneTimeBurst !== undefined && !n(c.oneTimeBurst, MAX_TOKENS))
    return `${what}.one_time_burst must be a whole number of tokens, 0 to 2^53-1`;
  if (!n(c.refillTimeMs, MAX_REFILL_MS)) return `${what}.refill_time must be a whole number of milliseconds`;
  if (c.size > 0 && c.refillTimeMs === 0) return `${what}.refill_time must be above 0 for a bucket of size ${c.size}`;
  return undefined;
}

export class TokenBucket {
  private budget: number;
  private burst: number;
  private last: number;

  constructor(
    readonly config: TokenBucketConfig,
    now: number,
    state?: TokenBucketState,
  ) {
    this.budget = state ? Math.min(state.budget, config.size) : config.size;
    this.burst = state ? Math.min(state.burst, config.oneTimeBurst ?? 0) : (config.oneTimeBurst ?? 0);
    this.last = now;
  }

  private refill(now: number): void {
    const { size, refillTimeMs } = this.config;
    const dt = now - this.last;
    this.last = now;
    if (dt <= 0 || this.budget >= size) return;
    this.budget = Math.min(size, this.budget + (dt * size) / refillTimeMs);
  }

  /** Takes `tokens` if they are there (the burst first); false, taking nothing, if not. */
  take(tokens: number, now: number): boolean {
    this.refill(now);
    if (tokens <= this.burst) {
      this.burst -= tokens;
      return true;
    }
    const rest = tokens - this.burst;
    // More than the bucket holds: it goes when the bucket is full, leaving a debt.
    const need = Math.min(rest, this.config.size);
    if (this.budget + 1e-9 < need) return false;
    this.burst = 0;
    this.budget -= rest;
    return true;
  }

  /** Takes `tokens` whatever is there (the burst first; the budget may go into debt). */
  force(tokens: number, now: number): void {
    this.refill(now);
    const fromBurst = Math.min(this.burst, tokens);
    this.burst -= fromBurst;
    this.budget -= tokens - fromBurst;
  }

  /** Gives back tokens take() took (the other bucket refused the request). */
  giveBack(tokens: number): void {
    this.budget = Math.min(this.config.size, this.budget + tokens);
  }

  /** Milliseconds until take(tokens) can succeed (0: now). */
  waitMs(tokens: number, now: number): number {
    this.refill(now);
    if (tokens <= this.burst) return 0;
    const need = Math.min(tokens - this.burst, this.config.size);
    const missing = need - this.budget;
    if (missing <= 0) return 0;
    return Math.ceil((missing * this.config.refillTimeMs) / this.config.size);
  }

  state(): TokenBucketState {
    return { budget: this.budget, burst: this.burst };
  }
}

const active = (c: TokenBucketConfig | undefined): c is TokenBucketConfig => c !== undefined && c.size > 0;

export class RateLimiter {
  private readonly bandwidth: TokenBucket | undefined;
  private readonly ops: TokenBucket | undefined;

  constructor(
    readonly config: RateLimiterConfig,
    now: number,
    state?: RateLimiterState,
  ) {
    this.bandwidth = active(config.bandwidth)
      ? new TokenBucket(config.bandwidth, now, state?.bandwidth ?? undefined)
      : undefined;
    this.ops = active(config.ops) ? new TokenBucket(config.ops, now, state?.ops ?? undefined) : undefined;
  }

  /** Whether the limiter limits anything. */
  get limits(): boolean {
    return this.bandwidth !== undefined || this.ops !== undefined;
  }

  /** Takes one operation of `bytes` bytes; false (nothing taken) when it must wait. */
  take(bytes: number, now: number): boolean {
    if (this.bandwidth && !this.bandwidth.take(bytes, now)) return false;
    if (this.ops && !this.ops.take(1, now)) {
      this.bandwidth?.giveBack(bytes);
      return false;
    }
    return true;
  }

  /**
   * Charges one operation of `bytes` bytes that already happened (a frame read before its size was
   * known): the buckets may go into debt, which later waits pay.
   */
  charge(bytes: number, now: number): void {
    this.bandwidth?.force(bytes, now);
    this.ops?.force(1, now);
  }

  /** Milliseconds until take(bytes) can succeed. */
  waitMs(bytes: number, now: number): number {
    return Math.max(this.bandwidth?.waitMs(bytes, now) ?? 0, this.ops?.waitMs(1, now) ?? 0);
  }

  state(): RateLimiterState {
    return { bandwidth: this.bandwidth?.state() ?? null, ops: this.ops?.state() ?? null };
  }
}

/** Milliseconds on a monotonic clock. */
export const monotonicMs = (): number => performance.now();
