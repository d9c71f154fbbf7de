/**
 * A device's counters in a SharedArrayBuffer: the I/O thread publishes them as it serves (one 64-bit
 * slot per named counter), and the VMM thread reads current values while the VM runs — for /metrics,
 * FlushMetrics and vm.deviceCounters() — without a message or a wait on the I/O thread.
 */

export class SharedCounters {
  private readonly slots: BigInt64Array;
  /** What this side last published, so unchanged counters cost a comparison only. */
  private readonly published: Float64Array;

  /** `names` are the counters, in a fixed order both threads agree on. */
  constructor(
    readonly names: readonly string[],
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(Math.max(1, names.length) * 8),
  ) {
    this.slots = new BigInt64Array(buffer, 0, names.length);
    this.published = new Float64Array(names.length);
  }

  /** Stores every named value that changed since the last call (the writer's side). */
  publish(values: Readonly<Record<string, number>>): void {
    const names = this.names;
    for (let i = 0; i < names.length; i++) {
      const v = values[names[i] as string] ?? 0;
      if (v === this.published[i]) continue;
      this.published[i] = v;
      Atomics.store(this.slots, i, BigInt(Math.trunc(v)));
    }
  }

  /** The values as last published (any thread). */
  read(): Record<string, number> {
    const out: Record<string, number> = {};
    this.names.forEach((name, i) => {
      out[name] = Number(Atomics.load(this.slots, i));
    });
    return out;
  }
}
