/**
 * The I/O-thread side of a virtio device, for every transport (the rules are in common.ts, the
 * register decoding in mmio.ts): it watches the shared state the vCPU threads write, activates and
 * resets the device (§3.1.1, §2.4), hands it a context over guest memory, runs its queues, and saves
 * and restores its record (runner-state.ts). A transport never reaches into it: it only bumps the
 * generations in the shared state and wakes the I/O thread.
 */
import { checkRecord } from '../../../common/schema.js';
import type { GuestMemory } from '../../../memory/guest-memory.js';
import {
  hasFeature,
  INTERRUPT_CONFIG_CHANGE,
  INTERRUPT_USED_BUFFER,
  STATUS,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  type VirtioContext,
  type VirtioDevice,
} from '../device.js';
import { checkLayout, Queue, QueueError, type QueuePosition } from '../queue.js';
import { Q, TransportRegisters, type TransportSpec } from './common.js';
import { type RunnerState, runnerStateCheck } from './runner-state.js';

/** The side record's own fields; its `device` part is the device's to check (restoreState). */
const SIDE_CHECK = runnerStateCheck(() => {});

/**
 * The I/O-thread side: watches the shared state, activates and resets the device, and gives it a
 * context. Any error from the device while serving a queue marks the device DEVICE_NEEDS_RESET; it
 * never escapes to the VMM.
 */
export class TransportRunner {
  readonly st: TransportRegisters;
  private activeGen = 0;
  private resetGen = 0;
  private configWrites = 0;
  private ctx: VirtioContext | undefined;
  private broken = false;
  errors = 0;
  lastError: string | undefined;

  constructor(
    readonly spec: TransportSpec,
    readonly device: VirtioDevice,
    private readonly mem: GuestMemory,
    /** Raise the device's interrupt line (irqfd). */
    private readonly irq: () => void,
  ) {
    this.st = new TransportRegisters(spec.state);
  }

  get active(): boolean {
    return this.ctx !== undefined && !this.broken;
  }

  /** Look at what the driver changed: reset, activation, configuration writes. */
  poll(): void {
    const s = this.st.s;
    const rg = s.get('resetGen');
    if (rg !== this.resetGen) {
      this.resetGen = rg;
      this.ctx = undefined;
      this.broken = false;
      this.guard(() => this.device.reset());
      s.set('resetAck', rg);
      s.notify('resetAck');
    }
    const ag = s.get('activeGen');
    if (ag !== this.activeGen) {
      this.activeGen = ag;
      if (s.get('status') & STATUS.DRIVER_OK) this.activate();
    }
    const cw = s.get('configWrites');
    if (cw !== this.configWrites) {
      this.configWrites = cw;
      if (this.active) {
        const o = s.get('configWriteOffset');
        const l = s.get('configWriteLength');
        this.guard(() => this.device.configWritten?.(o, l));
      }
    }
  }

  /** Where this side stands, for a snapshot (the device must be quiescent: the VM paused). */
  save(): RunnerState {
    if (this.ctx) this.device.quiesce?.();
    const held = this.device.heldChains?.() ?? [];
    const positions = this.ctx
      ? this.ctx.queues.map((q, i) => {
          if (!q) return null;
          const p = q.position();
          // Chains the device holds unused are the latest pops: rewind over them so they are popped again.
          const h = Math.min(held[i] ?? 0, p.inFlight);
          const at = { ...p, nextAvail: (p.nextAvail - h) & 0xffff, inFlight: p.inFlight - h };
          if (at.inFlight !== 0 && !this.broken)
            throw new Error(`${at.inFlight} request(s) still in flight on queue ${i}: pause the VM before a snapshot`);
          return at;
        })
      : [];
    return {
      version: 1,
      // As read from the registers' int32 slots (runner-state.ts checks them as i32): negative past 2^31.
      activeGen: this.activeGen,
      resetGen: this.resetGen,
      configWrites: this.configWrites,
      active: this.ctx !== undefined,
      broken: this.broken,
      positions,
      device: this.device.saveState?.() ?? { version: 1 },
    };
  }

  /**
   * Continues from a snapshot: the shared registers are already restored (common-state.ts); the
   * record is checked (a restore checked it with the whole body already, body-schema.ts), the device
   * takes its own part (and checks it), then the queues are rebuilt where they stood.
   */
  restore(state: RunnerState): void {
    checkRecord<RunnerState>(SIDE_CHECK, state, 'virtio device side');
    this.activeGen = state.activeGen | 0;
    this.resetGen = state.resetGen | 0;
    this.configWrites = state.configWrites | 0;
    this.device.restoreState?.(state.device);
    if (state.active) this.activate(state.positions);
    this.broken = state.broken;
    if (state.active && !state.broken) this.guard(() => this.device.restored?.());
  }

  private activate(positions?: readonly (QueuePosition | null)[]): void {
    const features = this.st.driverFeatures();
    const qf = {
      eventIdx: hasFeature(features, VIRTIO_F_RING_EVENT_IDX),
      indirect: hasFeature(features, VIRTIO_F_RING_INDIRECT_DESC),
    };
    const queues: (Queue | undefined)[] = [];
    for (let i = 0; i < this.spec.queueMaxSizes.length; i++) {
      if (this.st.q(i, Q.ready) !== 1) {
        queues.push(undefined);
        continue;
      }
      const layout = this.st.layout(i);
      // Checked by the transport at DRIVER_OK; checked again since the guest could race a rewrite.
      if (checkLayout(this.mem, layout, this.spec.queueMaxSizes[i] as number) !== undefined) {
        this.fail('queue layout changed under DRIVER_OK');
        return;
      }
      queues.push(new Queue(layout, qf, positions?.[i] ?? undefined));
    }
    const st = this.st;
    const ctx: VirtioContext = {
      mem: this.mem,
      queues,
      features,
      config: st.configView,
      signalUsed: (q) => {
        const queue = queues[q];
        if (queue === undefined || !queue.needsNotification(this.mem)) return;
        st.raise(INTERRUPT_USED_BUFFER);
        this.irq();
      },
      signalConfig: () => {
        st.s.add('configGeneration', 1);
        st.raise(INTERRUPT_CONFIG_CHANGE);
        this.irq();
      },
    };
    this.ctx = ctx;
    this.broken = false;
    this.guard(() => this.device.activate(ctx));
  }

  /** The driver (or a backend) asks the device to look at queue q. */
  process(q: number): void {
    if (!this.active || q < 0 || q >= this.spec.queueMaxSizes.length) return;
    this.guard(() => this.device.process(q));
  }

  /** The host wants the device to look at its host-side state. */
  hostWake(): void {
    if (this.active && this.device.hostWake) this.guard(() => this.device.hostWake?.());
  }

  /** The host changed device configuration (balloon target, link state): tell the driver. */
  configChanged(): void {
    if (this.ctx) this.ctx.signalConfig();
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.deviceError(e);
    }
  }

  /** The device failed (a ring-level protocol error, or a bug): DEVICE_NEEDS_RESET, never a VMM crash. */
  deviceError(e: unknown): void {
    this.fail(e instanceof QueueError ? `${e.code}: ${e.message}` : String((e as Error)?.message ?? e));
  }

  private fail(why: string): void {
    this.errors++;
    this.lastError = why;
    this.broken = true;
    this.st.needsReset();
    this.irq();
  }
}
