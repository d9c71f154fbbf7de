/**
 * Worker entry: one thread of a disk's I/O pool (io-pool.ts). Claims submitted requests from the
 * shared ring, runs each with a blocking system call between the image file and guest memory, stores
 * the result and wakes the I/O thread through the completion eventfd. Never returns to its event loop
 * until told to stop; then it waits for its next pool.
 */
import { fdatasyncSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { confine } from '../kvm/seccomp-policy.js';
import { GuestMemory } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { readvFull, writesQcow2Magic, writevFull } from './file-disk.js';
import { CTL, OP_CODE, POOL_SLOTS, type PoolWorkerData, poolLayout, SLOT_F64, SLOT_I32, STATE } from './io-pool.js';

/** Serves one pool (one disk of one VM) until its stop flag is set. */
function serve(data: PoolWorkerData): void {
  const { ctl, ring, slots, args } = poolLayout(data.sab);
  const mem = new GuestMemory(data.memory);
  // The image is open and memory described: from here on the thread serves the guest's requests.
  confine('disk', data.seccomp);

  /** Whether the request was done in full (a host error, a short transfer or a bad range is a failure). */
  const perform = (slot: number): boolean => {
    const op = slots[slot * SLOT_I32 + 1] as number;
    if (op === OP_CODE.flush) {
      fdatasyncSync(data.fd);
      return true;
    }
    const a = slot * SLOT_F64;
    const n = slots[slot * SLOT_I32 + 2] as number;
    const views: Uint8Array[] = [];
    let total = 0;
    // A read writes guest memory (slice marks its pages for diff snapshots); a write only reads it.
    const reading = op === OP_CODE.read;
    for (let i = 0; i < n; i++) {
      const gpa = args[a + 1 + 2 * i] as number;
      const len = args[a + 2 + 2 * i] as number;
      views.push(reading ? mem.slice(gpa, len) : mem.readView(gpa, len));
      total += len;
    }
    const position = args[a] as number;
    if (!reading && data.guardMagic && writesQcow2Magic(views, position)) return false;
    const done = reading ? readvFull(data.fd, views, position) : writevFull(data.fd, views, position);
    return done === total;
  };

  try {
    while (Atomics.load(ctl, CTL.stop) === 0) {
      const claim = Atomics.load(ctl, CTL.claim);
      const tail = Atomics.load(ctl, CTL.tail);
      if (claim === tail) {
        Atomics.wait(ctl, CTL.tail, tail);
        continue;
      }
      // Read the entry before claiming it: while `claim` has not moved, its request is in flight and
      // unclaimed, so at most POOL_SLOTS - 1 others are and the ring cannot wrap onto it; once claimed,
      // the other workers may finish everything else and the I/O thread may reuse the entry.
      const slot = Atomics.load(ring, claim & (POOL_SLOTS - 1));
      if (Atomics.compareExchange(ctl, CTL.claim, claim, (claim + 1) | 0) !== claim) continue;
      let ok: boolean;
      try {
        ok = perform(slot);
      } catch {
        ok = false;
      }
      slots[slot * SLOT_I32 + 3] = ok ? 1 : 0;
      Atomics.store(slots, slot * SLOT_I32, STATE.done);
      Atomics.notify(slots, slot * SLOT_I32);
      sys.eventfdWrite(data.completionFd);
    }
  } finally {
    Atomics.add(ctl, CTL.exited, 1);
    Atomics.notify(ctl, CTL.exited);
  }
}

// One pool after another (io-pool.ts keeps idle workers for the next disk): an ended thread leaks
// its native modules' memory. Each pool arrives as a message.
if (!parentPort) throw new Error('io-pool-worker must run as a worker');
parentPort.on('message', (data: PoolWorkerData) => serve(data));
