/**
 * The two ways a device takes chains from a split virtqueue, written once (rust-vmm virtio-queue's
 * README loop), so the notification-suppression rules of virtio 1.2 §2.7.10 live in one place:
 *
 * - drainQueue(): for queues the device serves as fast as the driver fills them (TX, requests,
 *   balloon pages, entropy). Driver notifications are suppressed while the device drains: without
 *   VIRTIO_F_EVENT_IDX by used.flags = NO_NOTIFY; with it by leaving avail_event where it was (the
 *   driver kicks only when its avail idx passes avail_event, and the device must leave the flags at 0).
 *   They are re-armed when the ring looks empty (avail_event = next avail index, or flags 0) and the
 *   ring is read again after a full fence: a chain the driver added between the last pop and the
 *   re-arm saw notifications off and will never be kicked, so the device must find it itself.
 * - popOrArm(): for queues the device fills only when it has something to give (RX, events): the next
 *   buffer, and when there is none, notifications re-armed and one more look, for the same reason.
 */
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { VirtioContext } from './device.js';
import type { DescriptorChain, Queue } from './queue.js';

/**
 * What a serve callback returns when the device keeps the chain: it will return it later itself with
 * Queue.pushUsed() (an offloaded block request, the balloon's stats buffer, a held chain).
 */
export const KEPT: unique symbol = Symbol('virtqueue chain kept by the device');

/**
 * What a serve callback returns when it cannot serve the chain now (a backend with no room): the device
 * keeps it, offers it again itself later, and the drain stops there with driver notifications still
 * suppressed (the device comes back on its own wake-up, not on a kick). Only the latest pop is ever
 * held, so a snapshot can give it back to the ring (heldChains).
 */
export const BLOCKED: unique symbol = Symbol('virtqueue drain blocked by the device');

/** Serves one chain: the bytes written into its writable buffers (the used length), KEPT or BLOCKED. */
export type ServeChain = (chain: DescriptorChain) => number | typeof KEPT | typeof BLOCKED;

/**
 * Serves every chain the driver has made available on queue `q`, then interrupts the driver once if
 * the used ring grew (ctx.signalUsed, which applies the driver's own suppression: used_event or
 * NO_INTERRUPT). Returns the used elements written meanwhile, by `serve` or by this loop.
 *
 * A chain served BLOCKED ends the drain at once (notifications left suppressed); `idle` still runs.
 *
 * `idle` runs after the ring was found empty with notifications re-armed, before the signal: a device
 * that holds one chain back (virtio-blk serves the last of a batch on this thread) returns it there so
 * that it shares the one interrupt.
 *
 * When `serve` (or the queue) throws, the chain it was given is neither returned nor retried: it stays
 * in flight (Queue.pending counts it), no interrupt is raised and notifications stay suppressed, and
 * the error goes to the caller. Returning it with length 0 instead would hand the driver a completion
 * the device never made (for a block request, a status byte never written, which may read as OK). The
 * transport marks the device DEVICE_NEEDS_RESET for any error out of process(), and a reset discards
 * the queue with everything in flight, so nothing is used twice either.
 */
export function drainQueue(ctx: VirtioContext, q: number, serve: ServeChain, idle?: () => void): number {
  const queue = ctx.queues[q];
  if (queue === undefined) return 0;
  const mem = ctx.mem;
  const before = queue.usedTotal;
  let blocked = false;
  do {
    queue.disableNotification(mem);
    for (let chain = queue.pop(mem); chain !== undefined; chain = queue.pop(mem)) {
      const len = serve(chain);
      if (len === BLOCKED) {
        blocked = true;
        break;
      }
      if (len !== KEPT) queue.pushUsed(mem, chain.head, len);
    }
  } while (!blocked && queue.enableNotification(mem));
  idle?.();
  const used = queue.usedTotal - before;
  if (used > 0) ctx.signalUsed(q);
  return used;
}

/**
 * The next chain of a queue the device fills (RX, events), or undefined when the driver has none. An
 * empty ring re-arms driver notifications and is read once more, so a buffer added in between is
 * taken now rather than waiting for a kick that will not come. Notifications are never suppressed on
 * such a queue: the device wants to hear of each new buffer while it has something to deliver.
 */
export function popOrArm(mem: GuestMemory, queue: Queue): DescriptorChain | undefined {
  const chain = queue.pop(mem);
  if (chain !== undefined || !queue.enableNotification(mem)) return chain;
  return queue.pop(mem);
}
