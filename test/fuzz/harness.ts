/**
 * The hostile-input harness (issue 12 item 4): a target is a parser of guest or user data, driven with
 * fast-check input through the real vireo code, and each case ends in one verdict. `ok` and `refused`
 * (a VireoError, a virtqueue protocol error the transport turns into DEVICE_NEEDS_RESET, an error HTTP
 * status) are both fine; `crash` (any other exception, or a device that no longer serves a well-behaved
 * driver) and `oob` (a guest-memory access outside the RAM the case provided) are findings. The same
 * targets run from test/fuzz.test.ts (a fixed seed, CI) and test/fuzz/main.ts (`npm run fuzz`).
 */
import fc from 'fast-check';
import { VireoError } from '../../src/common/errors.js';
import { QueueError } from '../../src/devices/virtio/queue.js';

export type Verdict =
  | { kind: 'ok' }
  | { kind: 'refused'; why: string }
  | { kind: 'crash'; error: unknown }
  | { kind: 'oob'; what: string };

export const OK: Verdict = { kind: 'ok' };
export const refused = (why: string): Verdict => ({ kind: 'refused', why });
export const crash = (error: unknown): Verdict => ({ kind: 'crash', error });
export const oob = (what: string): Verdict => ({ kind: 'oob', what });

/** A target once set up: it owns what it allocated (guest memory, temp files) until close(). */
export interface Target<T> {
  readonly arbitrary: fc.Arbitrary<T>;
  /** Synchronous for the device and parser targets; a promise for the API's (its handlers are async). */
  run(input: T): Verdict | Promise<Verdict>;
  close?(): void;
}

export interface TargetSpec {
  readonly name: string;
  /**
   * Cases for the fixed-seed CI run: 10k where a case is cheap; fewer, with the reason next to the
   * number, where a case is slow enough that 10k would not fit test/fuzz.test.ts's budget.
   */
  readonly ciCases: number;
  /** Whether run() returns a promise. */
  readonly async?: boolean;
  /** A case longer than this is a finding (default STALL_MS; a target whose case is a VM run needs more). */
  readonly stallMs?: number;
  /** Set-up is lazy so that `--target` pays only for the one it runs. */
  create(): Target<unknown>;
}

/** Declares a target with its input type checked against its arbitrary and run function. */
export function target<T>(
  name: string,
  ciCases: number,
  create: () => Target<T>,
  async = false,
  stallMs?: number,
): TargetSpec {
  return {
    name,
    ciCases,
    async,
    ...(stallMs !== undefined ? { stallMs } : {}),
    create: create as () => Target<unknown>,
  };
}

/**
 * An error a parser of hostile input may end in: vireo's typed errors (GuestMemoryError, SnapshotError,
 * ConfigError, ...) and a virtqueue's protocol error. Anything else (TypeError, RangeError, a plain
 * Error) is a crash: on a vCPU or I/O thread it would end the VM, on the API thread the VMM.
 */
export function isClean(e: unknown): boolean {
  return e instanceof VireoError || e instanceof QueueError;
}

/** Runs `fn`, a case that should end normally or in a clean error. */
export function guarded(fn: () => Verdict | undefined): Verdict {
  try {
    return fn() ?? OK;
  } catch (e) {
    return isClean(e) ? refused(String((e as Error).message)) : crash(e);
  }
}

export interface Report {
  name: string;
  cases: number;
  crashes: number;
  oob: number;
  refused: number;
  ms: number;
  /** The longest case (a guest-driven stall shows here before it is long enough to be a finding). */
  slowestMs: number;
  seed: number;
  /** On a finding: fast-check's path (replay with seed + path), the shrunk input and its verdict. */
  path?: string | undefined;
  counterexample?: unknown;
  verdict?: Verdict | undefined;
}

export interface RunOptions {
  seed: number;
  /** Stop after this many cases ... */
  numRuns?: number;
  /** ... or after this long, whichever is first. */
  timeLimitMs?: number;
  /** Replays one case: fast-check's path from a report. */
  path?: string;
}

/** A case longer than this is a finding (generous: a loaded CI machine must not make one). */
export const STALL_MS = 5000;

/** Runs one target: cases counted up to the first finding (shrinking's re-runs are not counted). */
export async function runTarget(spec: TargetSpec, opts: RunOptions): Promise<Report> {
  const t = spec.create();
  const r: Report = { name: spec.name, cases: 0, crashes: 0, oob: 0, refused: 0, ms: 0, slowestMs: 0, seed: opts.seed };
  let found = false;
  const start = performance.now();
  try {
    const judge = (verdict: Verdict, ms: number): boolean => {
      // A case this long is a stall a guest or a file can cause (a vCPU or the API thread held for
      // seconds): a finding, though nothing threw.
      const v =
        ms > (spec.stallMs ?? STALL_MS) && verdict.kind !== 'crash'
          ? crash(new Error(`the case took ${Math.round(ms)} ms`))
          : verdict;
      if (!found) r.slowestMs = Math.max(r.slowestMs, ms);
      if (!found) {
        r.cases++;
        if (v.kind === 'refused') r.refused++;
      }
      if (v.kind === 'crash' || v.kind === 'oob') {
        if (!found) {
          if (v.kind === 'crash') r.crashes++;
          else r.oob++;
        }
        found = true;
        return false;
      }
      return true;
    };
    const property = spec.async
      ? fc.asyncProperty(t.arbitrary, async (input) => {
          const t0 = performance.now();
          return judge(await t.run(input), performance.now() - t0);
        })
      : fc.property(t.arbitrary, (input) => {
          const t0 = performance.now();
          return judge(t.run(input) as Verdict, performance.now() - t0);
        });
    const details = await fc.check(property as fc.IAsyncProperty<[unknown]>, {
      seed: opts.seed,
      numRuns: opts.numRuns ?? Number.MAX_SAFE_INTEGER,
      ...(opts.timeLimitMs !== undefined
        ? { interruptAfterTimeLimit: opts.timeLimitMs, markInterruptAsFailure: false }
        : {}),
      ...(opts.path !== undefined ? { path: opts.path } : {}),
    });
    if (details.failed && details.counterexample) {
      r.path = details.counterexamplePath ?? undefined;
      r.counterexample = details.counterexample[0];
      try {
        r.verdict = await t.run(details.counterexample[0]);
      } catch (e) {
        r.verdict = crash(e);
      }
      if (!found) r.crashes++; // the property itself threw (a harness fault counts as a crash)
    }
  } finally {
    t.close?.();
  }
  r.ms = performance.now() - start;
  return r;
}

/** The line issue 12 asks for, and what a finding needs to be reproduced. */
export function formatReport(r: Report): string {
  const rate = r.ms > 0 ? Math.round((r.cases * 1000) / r.ms) : 0;
  let line = `${r.name}: ${r.cases} cases, ${r.crashes} crashes, ${r.oob} out-of-bounds (${r.refused} refused, ${(r.ms / 1000).toFixed(1)} s, ${rate}/s, slowest ${r.slowestMs.toFixed(1)} ms, seed ${r.seed})`;
  if (r.verdict !== undefined) {
    const v = r.verdict;
    const what =
      v.kind === 'crash' ? ((v.error as Error)?.stack ?? String(v.error)) : v.kind === 'oob' ? v.what : v.kind;
    line += `\n  replay: --target ${r.name} --seed ${r.seed} --path ${r.path}\n  verdict: ${v.kind}: ${what}`;
    line += `\n  counterexample: ${fc.stringify(r.counterexample)}`;
  }
  return line;
}
