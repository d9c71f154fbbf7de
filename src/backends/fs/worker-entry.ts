/**
 * Worker entry: one share's FUSE server (worker.ts). Takes submitted requests from the shared ring
 * in order, serves each between guest memory and the host directory (devices/virtio/fs/serve.ts:
 * every range is checked again by this thread's own GuestMemory), stores the result and wakes the
 * I/O thread through the completion eventfd; between requests, answers the snapshot commands. Confined
 * with the fs seccomp filter (kvm/seccomp-policy.ts) once set up, when the VM has seccomp on.
 */
import { type MessagePort, parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { OUTCOMES, serveChain } from '../../devices/virtio/fs/serve.js';
import type { Segment } from '../../devices/virtio/queue.js';
import { confine } from '../../kvm/seccomp-policy.js';
import { GuestMemory } from '../../memory/guest-memory.js';
import * as sys from '../../os/sys.js';
import { PassthroughFs } from './server.js';
import {
  CTL,
  FS_SLOTS,
  type FsControl,
  type FsControlReply,
  type FsWorkerData,
  fsWorkerLayout,
  SLOT_F64,
  SLOT_I32,
  STATE,
} from './worker.js';

function command(server: PassthroughFs, port: MessagePort): FsControlReply {
  const msg = receiveMessageOnPort(port)?.message as FsControl | undefined;
  try {
    if (msg?.op === 'save') return { ok: true, state: server.saveState() };
    if (msg?.op === 'restore') {
      server.restoreState(msg.state);
      return { ok: true };
    }
    return { ok: false, error: 'no command' };
  } catch (e) {
    return { ok: false, error: e instanceof Error ? e.message : String(e) };
  }
}

function serve(data: FsWorkerData): void {
  const { ctl, ring, slots, args } = fsWorkerLayout(data.sab);
  const mem = new GuestMemory(data.memory);
  const server = new PassthroughFs(data.share);
  // The share's root fd is held and guest memory mapped: from here on the thread serves the guest's
  // requests (and the snapshot commands), under its filter.
  confine('fs', data.seccomp);
  let head = 0;
  try {
    while (Atomics.load(ctl, CTL.stop) === 0) {
      if (Atomics.load(ctl, CTL.cmd) !== 0) {
        data.port.postMessage(command(server, data.port));
        Atomics.store(ctl, CTL.cmd, 0);
        Atomics.notify(ctl, CTL.cmd);
        continue;
      }
      const tail = Atomics.load(ctl, CTL.tail);
      if (head === tail) {
        Atomics.wait(ctl, CTL.tail, tail);
        continue;
      }
      const slot = Atomics.load(ring, head & (FS_SLOTS - 1));
      head = (head + 1) | 0;
      const s = slot * SLOT_I32;
      const a = slot * SLOT_F64;
      const nr = slots[s + 1] as number;
      const nw = slots[s + 2] as number;
      const seg = (i: number): Segment => ({ addr: args[a + 2 + 2 * i] as number, len: args[a + 3 + 2 * i] as number });
      const readable = Array.from({ length: nr }, (_, i) => seg(i));
      const writable = Array.from({ length: nw }, (_, i) => seg(nr + i));
      let used = 0;
      let outcome = OUTCOMES.indexOf('serverFailure');
      try {
        const r = serveChain(server, mem, {
          readable,
          writable,
          readLen: args[a] as number,
          writeLen: args[a + 1] as number,
        });
        used = r.used;
        outcome = OUTCOMES.indexOf(r.outcome);
      } catch {
        // A range outside this thread's view of guest memory: nothing written, the request fails.
      }
      slots[s + 3] = used;
      slots[s + 4] = outcome;
      Atomics.store(slots, s, STATE.done);
      Atomics.notify(slots, s);
      sys.eventfdWrite(data.completionFd);
    }
  } finally {
    server.close();
    Atomics.store(ctl, CTL.exited, 1);
    Atomics.notify(ctl, CTL.exited);
    data.port.close();
    parentPort?.close();
  }
}

if (!parentPort) throw new Error('the virtio-fs worker must run as a worker');
parentPort.once('message', (data: FsWorkerData) => serve(data));
