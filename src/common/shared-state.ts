/**
 * State shared between threads: a SharedArrayBuffer with named int32 slots and a lock.
 * Device state lives here so that any vCPU thread can run the device's logic without waiting
 * on another thread. The layout is each device's own business: a snapshot keeps the device's named
 * record (its *-state.ts), never these bytes.
 */

export class SharedState<K extends string> {
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  private readonly index: Record<K, number>;

  /** `fields` name int32 slots 1..n (slot 0 is the lock); `extraBytes` follow them. */
  constructor(
    fields: readonly K[],
    extraBytes = 0,
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(SharedState.byteLength(fields.length, extraBytes)),
  ) {
    this.i32 = new Int32Array(buffer, 0, fields.length + 1);
    this.u8 = new Uint8Array(buffer);
    this.index = Object.fromEntries(fields.map((f, i) => [f, i + 1])) as Record<K, number>;
  }

  static byteLength(nFields: number, extraBytes: number): number {
    return SharedState.bytesOffset(nFields) + extraBytes;
  }

  /** Where the extra bytes start. */
  static bytesOffset(nFields: number): number {
    return Math.ceil(((nFields + 1) * 4) / 64) * 64;
  }

  get(k: K): number {
    return Atomics.load(this.i32, this.index[k]);
  }

  /**
   * The slot as an unsigned 32-bit value. Registers a guest writes are u32 on the wire but kept as
   * int32 here: anything used as an index, a selector or a count must be read back this way.
   */
  u32(k: K): number {
    return Atomics.load(this.i32, this.index[k]) >>> 0;
  }

  set(k: K, v: number): void {
    Atomics.store(this.i32, this.index[k], v);
  }

  add(k: K, v: number): number {
    return Atomics.add(this.i32, this.index[k], v);
  }

  or(k: K, bits: number): number {
    return Atomics.or(this.i32, this.index[k], bits);
  }

  and(k: K, bits: number): number {
    return Atomics.and(this.i32, this.index[k], bits);
  }

  /** Block this thread until k is no longer `current` or `timeoutMs` passes (never on the main thread). */
  wait(k: K, current: number, timeoutMs: number): void {
    Atomics.wait(this.i32, this.index[k], current, timeoutMs);
  }

  notify(k: K): void {
    Atomics.notify(this.i32, this.index[k]);
  }

  /** Run fn holding the lock. Contention is rare (vCPUs touching one device at once), so spin. */
  locked<T>(fn: () => T): T {
    const i32 = this.i32;
    let spins = 0;
    while (Atomics.compareExchange(i32, 0, 0, 1) !== 0) {
      if (++spins > 1000) {
        Atomics.wait(i32, 0, 1, 1);
        spins = 0;
      }
    }
    try {
      return fn();
    } finally {
      Atomics.store(i32, 0, 0);
      Atomics.notify(i32, 0, 1);
    }
  }

  /** A plain copy of every field and the extra bytes, for tests. */
  snapshot(): Uint8Array {
    return new Uint8Array(this.buffer.slice(0));
  }

  /**
   * Puts saved bytes (a snapshot's) back into a state buffer of the same size. The lock word is left
   * clear: no thread of this process holds it, and a set one from a state file would make every
   * locked() on it spin for ever (a vCPU's first access to the device never returning).
   */
  static restore(buffer: SharedArrayBuffer, bytes: Uint8Array): void {
    new Uint8Array(buffer).set(bytes);
    Atomics.store(new Int32Array(buffer, 0, 1), 0, 0);
  }
}
