/**
 * Worker entry: the I/O thread. Every virtio device runs here, woken by epoll: queue notifications
 * arrive on ioeventfds straight from KVM, status changes on the control eventfd; interrupts leave
 * through irqfds. No vCPU thread ever waits on this thread (except for a bounded wait on reset).
 */
import { type MessagePort, parentPort } from 'node:worker_threads';
import { VirtioMmioDeviceSide } from '../devices/virtio/mmio.js';
import * as sys from '../kvm/sys.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { buildDevice, type IoThreadInit, type IoThreadMessage } from './virtio-devices.js';

if (!parentPort) throw new Error('io-thread must run as a worker');
const port: MessagePort = parentPort;
const post = (m: IoThreadMessage): void => port.postMessage(m);
const CONTROL = 0xffffffff;

function run(init: IoThreadInit): void {
  const control = new Int32Array(init.control);
  const mem = new GuestMemory(init.memory);
  const ep = new sys.Epoll();
  const sides: VirtioMmioDeviceSide[] = [];
  try {
    ep.add(init.controlFd, sys.EPOLLIN, CONTROL);
    init.slots.forEach((slot, i) => {
      const irqFd = slot.irqFd;
      const side = new VirtioMmioDeviceSide(slot.mmio, buildDevice(slot.device), mem, () => sys.eventfdWrite(irqFd));
      sides.push(side);
      slot.queueFds.forEach((fd, q) => {
        ep.add(fd, sys.EPOLLIN, (i << 8) | q);
      });
    });
    post({ type: 'ready' });
    for (const s of sides) s.poll();
    while (Atomics.load(control, 0) === 0) {
      ep.wait(-1, (token) => {
        if (token === CONTROL) {
          sys.eventfdRead(init.controlFd);
          for (const s of sides) s.poll();
          return;
        }
        const i = token >>> 8;
        const q = token & 0xff;
        const slot = init.slots[i];
        const side = sides[i];
        if (slot === undefined || side === undefined) return;
        sys.eventfdRead(slot.queueFds[q] as number);
        side.process(q);
      });
    }
  } catch (e) {
    post({ type: 'error', message: e instanceof Error ? e.message : String(e) });
  } finally {
    ep.close();
  }
  const counters: Record<string, Record<string, number>> = {};
  const errors: string[] = [];
  init.slots.forEach((slot, i) => {
    const side = sides[i];
    if (!side) return;
    counters[slot.name] = { ...side.device.counters, protocolErrors: side.errors };
    if (side.lastError) errors.push(`${slot.name}: ${side.lastError}`);
  });
  post({ type: 'stopped', counters, errors });
  port.close();
}

port.once('message', (init: IoThreadInit) => run(init));
