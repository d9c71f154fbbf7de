/**
 * The VMM's handle on one vCPU thread (Firecracker's vstate/vcpu.rs VcpuHandle): commands go to the
 * thread through the shared control word (it never returns to its event loop while the guest runs),
 * and each command that has an answer is a promise settled by the thread's reply message — 'paused',
 * 'resumed', 'stopped' — or by the thread's end. Nothing polls.
 */
import type { Worker } from 'node:worker_threads';
import type { Vcpu } from '../kvm/kvm.js';
import * as sys from '../os/sys.js';
import {
  Cmd,
  CTRL_CMD,
  CTRL_SLOTS,
  CTRL_STATE,
  State,
  type VcpuMessage,
  type VcpuStop,
  type VcpuWorkerInit,
} from './protocol.js';

export interface VcpuHandleHooks {
  /** The thread reported why its vCPU stopped (or failed: an 'error' stop). */
  stopped(id: number, stop: VcpuStop): void;
  /** The first exit of this vCPU happened at this time (epoch ms). */
  firstExit(at: number): void;
}

/** What the thread is told besides its vCPU and control word. */
export type VcpuThreadInit<P> = Omit<VcpuWorkerInit<P>, 'vcpu' | 'control'>;

export class VcpuHandle {
  readonly id: number;
  private readonly control = new Int32Array(new SharedArrayBuffer(CTRL_SLOTS * 4));
  /** The OS thread's pthread_t, once it reported 'ready'. */
  private thread: bigint | undefined;
  /** It reported 'paused' and not 'resumed' since. */
  private paused = false;
  /** The OS thread has ended, or left this VM: its pthread_t must not be signalled any more. */
  private gone = false;
  /** It reported its stop and waits for another VM: its owner may give it back to a pool. */
  private _recyclable = false;
  /** Settled when the next 'paused' / 'resumed' reply (or the thread's end) arrives. */
  private replyWaiters: { want: 'paused' | 'resumed'; resolve: () => void }[] = [];
  /** Resolves once the thread serves this vCPU (rejects if it ends or fails before). */
  readonly ready: Promise<void>;
  /** Resolves once the thread is out of this VM (its stop reported, or the thread ended). */
  readonly exited: Promise<void>;

  constructor(
    readonly vcpu: Vcpu,
    readonly worker: Worker,
    init: VcpuThreadInit<unknown>,
    hooks: VcpuHandleHooks,
  ) {
    this.id = vcpu.id;
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    this.ready = new Promise<void>((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    this.ready.catch(() => undefined); // awaited by the builder; a build that failed first must not leave it unhandled
    let exitedResolve!: () => void;
    this.exited = new Promise<void>((res) => {
      exitedResolve = res;
    });
    const out = (): void => {
      this.gone = true;
      this.settleReplies();
      exitedResolve();
    };
    worker.once('exit', () => {
      // A thread that ended before it was ready (it never will be): the build must not wait on it.
      readyReject(new Error(`vCPU ${this.id} thread ended before it was ready`));
      out();
    });
    worker.on('message', (m: VcpuMessage) => {
      switch (m.type) {
        case 'loaded':
          break;
        case 'ready':
          this.thread = m.thread;
          readyResolve();
          break;
        case 'first-exit':
          hooks.firstExit(m.at);
          break;
        case 'paused':
          this.paused = true;
          this.settleReplies('paused');
          break;
        case 'resumed':
          this.paused = false;
          this.settleReplies('resumed');
          break;
        case 'stopped':
          readyResolve();
          // The thread is out of this VM for good (it waits for the next one): never kick it again.
          this._recyclable = true;
          out();
          hooks.stopped(m.id, m.stop);
          break;
      }
    });
    worker.on('error', (e) => {
      readyReject(e);
      hooks.stopped(this.id, { kind: 'error', code: 'VIREO_ERR_VCPU', message: `vCPU thread failed: ${e.message}` });
    });
    const message: VcpuWorkerInit<unknown> = {
      ...init,
      vcpu: vcpu.descriptor,
      control: this.control.buffer as SharedArrayBuffer,
    };
    worker.postMessage(message);
  }

  /** It reported its stop and waits for another VM: safe to give back to a pool. */
  get recyclable(): boolean {
    return this._recyclable;
  }

  private settleReplies(kind?: 'paused' | 'resumed'): void {
    const keep: typeof this.replyWaiters = [];
    for (const w of this.replyWaiters)
      if (kind === undefined || w.want === kind) w.resolve();
      else keep.push(w);
    this.replyWaiters = keep;
  }

  private reply(want: 'paused' | 'resumed'): Promise<void> {
    if (this.gone) return Promise.resolve();
    return new Promise((resolve) => this.replyWaiters.push({ want, resolve }));
  }

  private command(cmd: number): void {
    Atomics.store(this.control, CTRL_CMD, cmd);
    Atomics.notify(this.control, CTRL_CMD);
    this.kick();
  }

  /** Let the vCPU run (from not started, or paused). */
  run(): void {
    this.command(Cmd.RUN);
  }

  /**
   * Let the vCPU enter the guest as soon as its thread is built, without waiting for its 'ready'
   * round trip (a restore whose every state is in place).
   */
  runWhenReady(): void {
    Atomics.store(this.control, CTRL_CMD, Cmd.RUN);
    Atomics.notify(this.control, CTRL_CMD);
  }

  /** Pause; resolves on the thread's 'paused' reply (or once it is out of the VM). */
  pause(): Promise<void> {
    const answered = this.reply('paused');
    this.command(Cmd.PAUSE);
    return answered;
  }

  /**
   * Let a paused vCPU go on; resolves on the thread's 'resumed' reply, at once for a vCPU that never
   * paused (a restored VM's, waiting for its first RUN), or once the thread is out of the VM.
   */
  resume(): Promise<void> {
    const answered = this.paused ? this.reply('resumed') : Promise.resolve();
    this.command(Cmd.RUN);
    return answered;
  }

  /** Ask the thread to stop its vCPU; `exited` resolves when it has. */
  stop(): void {
    this.command(Cmd.STOP);
  }

  /** Force the vCPU out of KVM_RUN: set immediate_exit, then signal its thread. */
  kick(): void {
    // Signalling a joined thread's pthread_t is undefined behaviour (glibc may fault): never do it.
    if (this.gone || Atomics.load(this.control, CTRL_STATE) === State.EXITED) return;
    this.vcpu.run.immediateExit = true;
    if (this.thread !== undefined) sys.pthreadKill(this.thread, sys.KICK_SIGNAL);
  }
}

/** How long stopVcpus() kicks before it terminates the threads that are still in. */
const STOP_DEADLINE_MS = 5000;
/** Between kicks: a signal that arrived just before the thread entered KVM_RUN is sent again. */
const KICK_INTERVAL_MS = 20;

/**
 * Stops every vCPU and resolves once each thread is out of KVM_RUN. Never hangs: kicks repeat (a
 * signal can land just before a thread enters KVM_RUN) until each thread reported its stop; after
 * the deadline, threads still in are terminated.
 */
export async function stopVcpus(handles: readonly VcpuHandle[]): Promise<void> {
  for (const h of handles) h.stop();
  const all = Promise.all(handles.map((h) => h.exited));
  let done = false;
  void all.then(() => {
    done = true;
  });
  const deadline = Date.now() + STOP_DEADLINE_MS;
  while (!done && Date.now() < deadline) {
    await Promise.race([all, new Promise((r) => setTimeout(r, KICK_INTERVAL_MS))]);
    for (const h of handles) h.kick();
  }
  if (!done) await Promise.all(handles.filter((h) => !h.recyclable).map((h) => h.worker.terminate()));
}
