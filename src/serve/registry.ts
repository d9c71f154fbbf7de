/**
 * The sandboxes `vireo serve` holds: what E2B's control plane reports of each (template, metadata,
 * envs, start and end times, state, size) beside the running sandbox itself, and each one's lifetime —
 * a sandbox past its end is killed and its files removed. A paused sandbox's clock stops (E2B keeps
 * paused sandboxes); resuming it gives it a new end.
 */
import { timingSafeEqual } from 'node:crypto';
import type { AgentEndpoint } from '../agent/connector.js';
import type { Launched } from './templates.js';

export type SandboxState = 'running' | 'paused';

export interface SandboxRecord {
  readonly sandboxId: string;
  readonly templateID: string;
  readonly startedAt: Date;
  endAt: Date;
  state: SandboxState;
  readonly metadata: Readonly<Record<string, string>>;
  readonly envs: Readonly<Record<string, string>>;
  /** The envd access token the agent was given at /init: every envd request must carry it. */
  readonly envdAccessToken: string;
  /** Set when the sandbox was made with `network.allowPublicTraffic: false`: guest ports then need it. */
  readonly trafficAccessToken: string | undefined;
  readonly launched: Launched;
  /** The agent (49983); a guest port is reached through it. */
  readonly endpoint: AgentEndpoint;
  /** While paused: how long it had left. */
  remainingMs: number;
}

/** The most one timer can wait (setTimeout's limit); a longer lifetime is re-armed on the way. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class Registry {
  private readonly records = new Map<string, SandboxRecord>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly killing = new Map<string, Promise<void>>();

  constructor(private readonly onExpired: (id: string, e?: unknown) => void = () => undefined) {}

  add(rec: SandboxRecord): void {
    this.records.set(rec.sandboxId, rec);
    this.arm(rec);
  }

  get(id: string): SandboxRecord | undefined {
    return this.records.get(id);
  }

  all(): SandboxRecord[] {
    return [...this.records.values()];
  }

  get size(): number {
    return this.records.size;
  }

  /** The sandbox whose envd access token is `token` (constant time per sandbox). */
  byToken(id: string, token: string | undefined): SandboxRecord | undefined {
    const rec = this.records.get(id);
    return rec && token !== undefined && sameSecret(token, rec.envdAccessToken) ? rec : undefined;
  }

  /** A new end, `ms` from now (E2B's timeout); a paused sandbox keeps it for when it resumes. */
  setTimeout(rec: SandboxRecord, ms: number): void {
    rec.endAt = new Date(Date.now() + ms);
    rec.remainingMs = ms;
    this.arm(rec);
  }

  pauseClock(rec: SandboxRecord): void {
    rec.remainingMs = Math.max(1, rec.endAt.getTime() - Date.now());
    this.disarm(rec.sandboxId);
  }

  resumeClock(rec: SandboxRecord, ms?: number): void {
    this.setTimeout(rec, ms ?? rec.remainingMs);
  }

  /** Stops the sandbox, removes its files and forgets it. Idempotent; the record goes at once. */
  kill(id: string): Promise<void> {
    const running = this.killing.get(id);
    if (running) return running;
    const rec = this.records.get(id);
    if (!rec) return Promise.resolve();
    this.records.delete(id);
    this.disarm(id);
    const p = rec.launched.kill().finally(() => this.killing.delete(id));
    this.killing.set(id, p);
    return p;
  }

  /** Kills every sandbox (the service is closing). */
  async killAll(): Promise<void> {
    await Promise.allSettled([...this.records.keys(), ...this.killing.keys()].map((id) => this.kill(id)));
    await Promise.allSettled([...this.killing.values()]);
  }

  private arm(rec: SandboxRecord): void {
    this.disarm(rec.sandboxId);
    if (rec.state !== 'running') return;
    const left = rec.endAt.getTime() - Date.now();
    const t = setTimeout(
      () => {
        if (rec.endAt.getTime() - Date.now() > 0) {
          this.arm(rec);
          return;
        }
        this.kill(rec.sandboxId).then(
          () => this.onExpired(rec.sandboxId),
          (e: unknown) => this.onExpired(rec.sandboxId, e),
        );
      },
      Math.min(Math.max(left, 0), MAX_TIMER_MS),
    );
    t.unref();
    this.timers.set(rec.sandboxId, t);
  }

  private disarm(id: string): void {
    const t = this.timers.get(id);
    if (t) clearTimeout(t);
    this.timers.delete(id);
  }
}

/** Whether two secrets are equal, in time that does not depend on where they differ. */
export function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
