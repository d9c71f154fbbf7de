/**
 * What a route is: a method and a path template from the spec, the definition its body must match,
 * Firecracker's metric name for the resource, and a handler that turns the checked body into a change
 * of the controller's state. The server does the HTTP, the body checks and the bookkeeping.
 */
import { accessSync, constants } from 'node:fs';
import type { RateLimiterConfig, TokenBucketConfig } from '../devices/virtio/rate-limiter.js';
import type { VmController } from './controller.js';
import { badRequest, osErrorText } from './errors.js';
import type { RateLimiter, TokenBucket } from './types.js';

export type HttpMethod = 'GET' | 'PUT' | 'PATCH';

export interface RouteContext<B> {
  ctl: VmController;
  params: Record<string, string>;
  body: B;
}

export interface RouteResult {
  status: 200 | 204;
  body?: unknown;
  /** The body is already text (Prometheus); otherwise it is sent as JSON. */
  contentType?: string;
  headers?: Record<string, string>;
}

export interface Route {
  method: HttpMethod;
  /** The spec's path template, e.g. /drives/{drive_id}. */
  path: string;
  /** The definition the request body must match (no body allowed when absent). */
  body?: string;
  /** Top-level fields are all optional (PATCH bodies Firecracker takes partially). */
  partial?: boolean;
  /** Firecracker's metric name for the resource (put_api_requests.<metric>_count). */
  metric: string;
  /** Not in Firecracker's API (vireo's own addition). */
  extension?: boolean;
  /** Method syntax on purpose: each route narrows `body` to its own type (see route()). */
  handle(ctx: RouteContext<unknown>): Promise<RouteResult> | RouteResult;
}

export const ok = (body: unknown): RouteResult => ({ status: 200, body });
export const noContent = (headers?: Record<string, string>): RouteResult =>
  headers ? { status: 204, headers } : { status: 204 };

/** Firecracker marks responses to deprecated fields with this header. */
export const DEPRECATION = { Deprecation: 'true' };

/** Defines a route whose handler sees its body as `B` (the server checked it against `body`). */
export function route<B = undefined>(
  r: Omit<Route, 'handle'> & { handle(ctx: RouteContext<B>): Promise<RouteResult> | RouteResult },
): Route {
  return r;
}

const bucketLimits = (b: TokenBucket | undefined): boolean => b !== undefined && b.size > 0;

/** vireo's rate limiter in Firecracker's shape (GET /vm/config of a restored VM). */
export function apiRateLimiter(c: RateLimiterConfig): RateLimiter {
  const bucket = (b: TokenBucketConfig | undefined): TokenBucket | undefined =>
    b === undefined
      ? undefined
      : { size: b.size, refill_time: b.refillTimeMs, ...(b.oneTimeBurst ? { one_time_burst: b.oneTimeBurst } : {}) };
  const out: RateLimiter = {};
  const bw = bucket(c.bandwidth);
  const ops = bucket(c.ops);
  if (bw) out.bandwidth = bw;
  if (ops) out.ops = ops;
  return out;
}

/** Firecracker's rate limiter in vireo's shape (undefined when it limits nothing: absent or size-0 buckets). */
export function rateLimiterConfig(rl: RateLimiter | undefined): RateLimiterConfig | undefined {
  if (!rl || !(bucketLimits(rl.bandwidth) || bucketLimits(rl.ops))) return undefined;
  const bucket = (b: TokenBucket | undefined): TokenBucketConfig | undefined =>
    b === undefined || b.size === 0
      ? undefined
      : { size: b.size, refillTimeMs: b.refill_time, ...(b.one_time_burst ? { oneTimeBurst: b.one_time_burst } : {}) };
  const out: RateLimiterConfig = {};
  const bw = bucket(rl.bandwidth);
  const ops = bucket(rl.ops);
  if (bw) out.bandwidth = bw;
  if (ops) out.ops = ops;
  return out;
}

/** Fails with Firecracker's kind of message when a host file cannot be opened as asked. */
export function checkReadable(path: string, what: string, write = false): void {
  try {
    accessSync(path, constants.R_OK | (write ? constants.W_OK : 0));
  } catch (e) {
    throw badRequest(`${what}: ${osErrorText(e)}`);
  }
}
