/**
 * The VMM's handle on the virtio I/O thread (io-thread.ts): started with the slots to serve, held
 * still while a snapshot reads each device side's state (the answer is the thread's 'saved' reply),
 * and stopped — then given back for the next VM once it reported its stop.
 */
import type { Worker } from 'node:worker_threads';
import { SnapshotError } from '../common/errors.js';
import type { RunnerState } from '../devices/virtio/transport/runner-state.js';
import type { RegionDescriptor } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { recycleIoThread, takeIoThread } from './vcpu-threads.js';
import type { VirtioSlot } from './virtio-devices.js';

export interface IoThreadInit {
  memory: RegionDescriptor[];
  slots: VirtioSlot[];
  controlFd: number;
  /** [0]: set to 1 to stop; [1]: 1 while a snapshot holds the thread still. */
  control: SharedArrayBuffer;
  /** Restoring from a snapshot: each slot's device side, in slot order. */
  restore?: RunnerState[] | undefined;
  /** Confine the thread (and the disk threads it starts) with seccomp filters once its devices are built. */
  seccomp: boolean;
}

export type IoThreadMessage =
  // Its modules (koffi among them) are loaded: the process may exit without aborting (vcpu-threads.ts).
  | { type: 'loaded' }
  | { type: 'ready' }
  | { type: 'saved'; states: RunnerState[] }
  | { type: 'save-failed'; message: string }
  | { type: 'stopped'; counters: Record<string, Record<string, number>>; errors: string[] }
  | { type: 'error'; message: string }
  | { type: 'command-done'; seq: number; error?: string | undefined };

/** Asked of the running I/O thread (after its init): a device kind's command() on one slot's device. */
export interface IoThreadCommand {
  type: 'command';
  seq: number;
  slot: number;
  command: unknown;
}

/** How long stop() waits for the thread's 'stopped' before it terminates the thread. */
const STOP_DEADLINE_MS = 5000;

export class IoThreadHandle {
  /** [0]: set to 1 to stop; [1]: 1 while a snapshot holds the thread still. */
  private readonly control = new Int32Array(new SharedArrayBuffer(8));
  private onSaved: ((m: IoThreadMessage) => void) | undefined;
  private readonly commands = new Map<number, (error: string | undefined) => void>();
  /** stop() has begun: no more commands are posted. */
  private stopping = false;
  private seq = 0;
  private worker: Worker | undefined;
  private exited: Promise<void> | undefined;
  /** The I/O thread reported its stop and waits for another VM. */
  private recyclable = false;
  /** The thread confines itself for this VM (and keeps its filter for the next one). */
  private confines = false;
  /** Device counters and errors, as reported by the I/O thread when it stopped. */
  finalCounters: Record<string, Record<string, number>> = {};
  errors: string[] = [];

  /** `controlFd`: the eventfd that wakes the thread for control (stop, hold, host-side changes). */
  constructor(private readonly controlFd: number) {}

  get running(): boolean {
    return this.worker !== undefined;
  }

  /** Starts the thread (once); resolves when it serves. */
  async start(init: Omit<IoThreadInit, 'control'>, fresh = false): Promise<void> {
    if (this.worker) return;
    const w = takeIoThread(fresh);
    this.worker = w;
    this.stopping = false;
    this.confines = init.seccomp;
    let stopped!: () => void;
    this.exited = new Promise((res) => {
      stopped = res;
      w.once('exit', () => res());
    });
    await new Promise<void>((resolve, reject) => {
      w.on('message', (m: IoThreadMessage) => {
        if (m.type === 'ready') resolve();
        else if (m.type === 'saved' || m.type === 'save-failed') this.onSaved?.(m);
        else if (m.type === 'command-done') {
          this.commands.get(m.seq)?.(m.error);
          this.commands.delete(m.seq);
        } else if (m.type === 'stopped') {
          this.finalCounters = m.counters;
          this.errors = m.errors;
          // Done with this VM: the thread waits for the next one (given back in stop()).
          this.recyclable = true;
          stopped();
          // A failure before 'ready' ends this VM's use of the thread too.
          reject(new Error('virtio I/O thread stopped before it was ready'));
        } else if (m.type === 'error') reject(new Error(`virtio I/O thread failed: ${m.message}`));
      });
      w.once('error', reject);
      w.once('exit', () => reject(new Error('virtio I/O thread exited before it was ready')));
      const message: IoThreadInit = { ...init, control: this.control.buffer as SharedArrayBuffer };
      w.postMessage(message);
    });
  }

  /**
   * Runs a device kind's command() on slot `slot`'s device on the thread (which takes it when the
   * control eventfd wakes it); resolves when done, rejects with the thread's one-line error.
   */
  command(slot: number, command: unknown): Promise<void> {
    const w = this.worker;
    if (!w || this.stopping) return Promise.reject(new Error('the virtio I/O thread is not running'));
    const seq = ++this.seq;
    return new Promise<void>((resolve, reject) => {
      this.commands.set(seq, (error) => (error === undefined ? resolve() : reject(new Error(error))));
      const m: IoThreadCommand = { type: 'command', seq, slot, command };
      w.postMessage(m);
      sys.eventfdWrite(this.controlFd);
    });
  }

  /** Holds the thread still; resolves with each device side's state, from the thread's reply. */
  async hold(): Promise<RunnerState[]> {
    if (!this.worker) return [];
    const reply = new Promise<IoThreadMessage>((res) => {
      this.onSaved = res;
    });
    Atomics.store(this.control, 1, 1);
    sys.eventfdWrite(this.controlFd);
    const m = await reply;
    this.onSaved = undefined;
    if (m.type === 'save-failed') {
      this.release();
      throw new SnapshotError('VIREO_ERR_SNAPSHOT', `cannot snapshot the devices: ${m.message}`);
    }
    return m.type === 'saved' ? m.states : [];
  }

  /** Lets the thread go on after hold(). */
  release(): void {
    Atomics.store(this.control, 1, 0);
    Atomics.notify(this.control, 1);
  }

  /**
   * Stops the thread (it touches guest memory and polls the devices' fds: it must be out before
   * either goes) and gives it back for another VM once it reported its stop. Safe to call twice.
   */
  async stop(): Promise<void> {
    if (!this.worker) return;
    this.stopping = true;
    this.release();
    Atomics.store(this.control, 0, 1);
    sys.eventfdWrite(this.controlFd);
    const w = this.worker;
    const t = setTimeout(() => {
      if (!this.recyclable) void w.terminate();
    }, STOP_DEADLINE_MS);
    await this.exited;
    clearTimeout(t);
    this.worker = undefined;
    for (const done of this.commands.values()) done('the VM stopped before the device took the change');
    this.commands.clear();
    if (this.recyclable) recycleIoThread(w, this.confines);
  }
}
