/**
 * Worker entry: the I/O thread. Every virtio device runs here, woken by epoll: queue notifications
 * arrive on ioeventfds straight from KVM, status changes on the control eventfd; interrupts leave
 * through irqfds. No vCPU thread ever waits on this thread (except for a bounded wait on reset).
 */
import { type MessagePort, parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { setPoolSeccomp } from '../backends/io-pool.js';
import type { DeviceTimer, Poller } from '../devices/virtio/device.js';
import { TransportRunner } from '../devices/virtio/transport/runner.js';
import type { RunnerState } from '../devices/virtio/transport/runner-state.js';
import { confine } from '../kvm/seccomp-policy.js';
import { GuestMemory } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { SharedCounters } from './device-counters.js';
import type { IoThreadCommand, IoThreadInit, IoThreadMessage } from './io-thread-handle.js';
import { buildDevice, commandDevice } from './virtio-devices.js';

if (!parentPort) throw new Error('io-thread must run as a worker');
const port: MessagePort = parentPort;
const post = (m: IoThreadMessage): void => port.postMessage(m);
const CONTROL = 0xffffffff;
/** Tokens at and above this are host fds watched for devices; below it, (device << 8) | queue. */
const HOST_FD = 0x40000000;

/**
 * Host fds watched for one device, each with its handler; tokens are the fd number plus HOST_FD.
 * A handler that throws marks its device DEVICE_NEEDS_RESET, like a failing queue.
 */
class FdPoller implements Poller {
  constructor(
    private readonly ep: sys.Epoll,
    private readonly handlers: Map<number, (events: number) => void>,
    private readonly onError: (e: unknown) => void,
  ) {}
  add(fd: number, events: number, handler: (events: number) => void): void {
    this.ep.add(fd, events, HOST_FD + fd);
    this.handlers.set(fd, (ev) => {
      try {
        handler(ev);
      } catch (e) {
        this.onError(e);
      }
    });
  }
  modify(fd: number, events: number): void {
    this.ep.modify(fd, events, HOST_FD + fd);
  }
  remove(fd: number): void {
    if (!this.handlers.delete(fd)) return;
    this.ep.remove(fd);
  }
  timer(handler: () => void): DeviceTimer {
    const fd = sys.timerfd();
    this.add(fd, sys.EPOLLIN, () => {
      sys.eventfdRead(fd);
      handler();
    });
    return {
      set: (ms) => sys.timerfdSet(fd, ms),
      close: () => {
        this.remove(fd);
        sys.close(fd);
      },
    };
  }
}

function run(init: IoThreadInit): void {
  const control = new Int32Array(init.control);
  const mem = new GuestMemory(init.memory);
  const ep = new sys.Epoll();
  const sides: TransportRunner[] = [];
  const handlers = new Map<number, (events: number) => void>();
  const live = init.slots.map((slot) => new SharedCounters(slot.counterNames, slot.counters));
  /** Per device: its model's counters, and protocolErrors from its transport side (no allocation per wake-up). */
  const sources: Record<string, number>[] = [];
  /** Counters reach the VMM thread after every wake-up (metrics read them while the VM runs). */
  const publish = (): void => {
    for (let i = 0; i < sources.length; i++) live[i]?.publish(sources[i] as Record<string, number>);
  };
  try {
    setPoolSeccomp(init.seccomp);
    ep.add(init.controlFd, sys.EPOLLIN, CONTROL);
    init.slots.forEach((slot, i) => {
      const irqFd = slot.irqFd;
      const device = buildDevice(slot.device, init.memory);
      device.attach?.(new FdPoller(ep, handlers, (e) => sides[i]?.deviceError(e)));
      const side = new TransportRunner(slot.mmio, device, mem, () => sys.eventfdWrite(irqFd));
      sides.push(side);
      sources.push(Object.create(device.counters, { protocolErrors: { get: () => side.errors } }));
      slot.queueFds.forEach((fd, q) => {
        ep.add(fd, sys.EPOLLIN, (i << 8) | q);
      });
    });
    if (init.restore)
      sides.forEach((s, i) => {
        s.restore(init.restore?.[i] as RunnerState);
      });
    // Every device built (its files and sockets open, its disk threads started): from here on the
    // thread serves the guest's queues, under its filter.
    confine('io', init.seccomp);
    post({ type: 'ready' });
    for (const s of sides) s.poll();
    while (Atomics.load(control, 0) === 0) {
      ep.wait(-1, (token, events) => {
        if (token >= HOST_FD && token !== CONTROL) {
          handlers.get(token - HOST_FD)?.(events);
          return;
        }
        if (token === CONTROL) {
          sys.eventfdRead(init.controlFd);
          if (Atomics.load(control, 1) === 1) {
            // A snapshot: report every device's side, then stay still until the VMM lets go.
            try {
              post({ type: 'saved', states: sides.map((s) => s.save()) });
            } catch (e) {
              post({ type: 'save-failed', message: e instanceof Error ? e.message : String(e) });
            }
            while (Atomics.load(control, 1) === 1) Atomics.wait(control, 1, 1, 1000);
          }
          // Changes the VMM asked for (posted before the wake-up that brought us here).
          for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
            const c = m.message as IoThreadCommand;
            if (c?.type !== 'command') continue;
            let error: string | undefined;
            try {
              const slot = init.slots[c.slot];
              const side = sides[c.slot];
              if (slot === undefined || side === undefined) throw new Error(`no device on slot ${c.slot}`);
              commandDevice(slot.device, side.device, c.command, { memory: init.memory, seccomp: init.seccomp });
            } catch (e) {
              error = e instanceof Error ? e.message : String(e);
            }
            post({ type: 'command-done', seq: c.seq, error });
          }
          for (const s of sides) {
            s.poll();
            s.hostWake();
          }
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
      publish();
    }
  } catch (e) {
    post({ type: 'error', message: e instanceof Error ? e.message : String(e) });
  } finally {
    for (const s of sides) s.device.close?.();
    ep.close();
    // A change asked for as the VM stopped is not taken (the VMM fails it): it must not be read as
    // the next VM's init.
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
      const c = m.message as IoThreadCommand;
      if (c?.type === 'command') post({ type: 'command-done', seq: c.seq, error: 'the VM stopped' });
    }
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
}

/** One VM after another, as the vCPU threads do (vcpu-thread.ts): an ended thread leaks native memory. */
function serve(init: IoThreadInit | IoThreadCommand): void {
  // A change the VMM asked for as the last VM stopped is no VM's init: failed, and the next message awaited.
  if ((init as IoThreadCommand).type === 'command')
    post({ type: 'command-done', seq: (init as IoThreadCommand).seq, error: 'the VM stopped' });
  else run(init as IoThreadInit);
  port.once('message', serve);
}

port.once('message', serve);
post({ type: 'loaded' });
