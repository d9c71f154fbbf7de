/**
 * virtio-console (virtio 1.2 §5.3), a single port: the guest's hvc0. Output goes to a host sink,
 * input comes from a host fd watched on the I/O thread. Input is read only while the guest has
 * receive buffers posted, so a guest that stops reading applies back-pressure to the host instead
 * of making the device buffer without bound.
 */

import { fromHex, toHex } from '../../common/hex.js';
import { CONSOLE_INPUT_CHUNK, checkConsoleRecord } from './console-state.js';
import {
  bit,
  type DeviceStateRecord,
  POLL_IN,
  type Poller,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from './device.js';
import { drainQueue } from './drain.js';
import { readFromChain, writeToChain } from './queue.js';

export const VIRTIO_CONSOLE_F_SIZE = 0n;
const RX = 0;
const TX = 1;
const QUEUE_SIZE = 64;
/** Bytes taken from one transmit chain at most (the guest's writes are at most a page each). */
const MAX_TX_CHAIN = 64 * 1024;

/** The host end of the console. */
export interface ConsoleBackend {
  /** Guest output. */
  write(bytes: Uint8Array): void;
  /** An fd to watch for input (non-blocking), or -1 for none. */
  readonly inputFd: number;
  /** Reads available input into buf; returns 0 when there is none right now, -1 at end of input. */
  read(buf: Uint8Array): number;
}

export class VirtioConsole implements VirtioDevice {
  readonly deviceType = VIRTIO_ID.console;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features = bit(VIRTIO_CONSOLE_F_SIZE) | bit(VIRTIO_F_RING_EVENT_IDX);
  readonly configSpace: Uint8Array;
  readonly counters = { rxBytes: 0, txBytes: 0, malformed: 0 };
  private ctx: VirtioContext | undefined;
  private poller: Poller | undefined;
  private watching = false;
  private eof = false;
  private readonly chunk = new Uint8Array(CONSOLE_INPUT_CHUNK);

  constructor(
    private readonly backend: ConsoleBackend,
    size = { cols: 80, rows: 25 },
  ) {
    const cfg = new DataView(new ArrayBuffer(12));
    cfg.setUint16(0, size.cols, true);
    cfg.setUint16(2, size.rows, true);
    cfg.setUint32(4, 1, true); // max_nr_ports
    this.configSpace = new Uint8Array(cfg.buffer);
  }

  attach(poller: Poller): void {
    this.poller = poller;
  }

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.process(TX);
    this.process(RX);
  }

  reset(): void {
    this.ctx = undefined;
    this.watch(false);
  }

  /** Input read from the host but not delivered yet goes with the snapshot (its fd has given it up). */
  saveState(): DeviceStateRecord {
    return { version: 1, pendingInput: toHex(this.pending) };
  }

  /** Called before the restored device is activated: activation delivers the input. */
  restoreState(state: unknown): void {
    checkConsoleRecord(state);
    this.pending = fromHex(state.pendingInput);
  }

  close(): void {
    this.watch(false);
  }

  process(q: number): void {
    if (q === TX) this.transmit();
    else if (q === RX) {
      if (this.pending.length > 0) this.receive();
      else this.watch(!this.eof && this.hasRxBuffers());
    }
  }

  private hasRxBuffers(): boolean {
    const ctx = this.ctx;
    const rx = ctx?.queues[RX];
    // Re-arm notifications when empty, or the driver's next buffer would go unannounced (event-idx).
    return ctx !== undefined && rx !== undefined && (rx.available(ctx.mem) > 0 || rx.enableNotification(ctx.mem));
  }

  /** Watch the input fd only while there is somewhere to put what it gives. */
  private watch(on: boolean): void {
    const fd = this.backend.inputFd;
    if (fd < 0 || this.poller === undefined || on === this.watching) return;
    this.watching = on;
    if (on) this.poller.add(fd, POLL_IN, () => this.receive());
    else this.poller.remove(fd);
  }

  /** Input read from the host that did not fit the guest's buffers yet. */
  private pending: Uint8Array = new Uint8Array(0);

  private receive(): void {
    const ctx = this.ctx;
    const rx = ctx?.queues[RX];
    if (ctx === undefined || rx === undefined) {
      this.watch(false);
      return;
    }
    const mem = ctx.mem;
    let served = 0;
    for (;;) {
      // No buffer: re-arm notifications and look once more, so a buffer posted meanwhile is not missed.
      if (rx.available(mem) === 0 && !rx.enableNotification(mem)) break;
      if (this.pending.length === 0) {
        const n = this.backend.read(this.chunk);
        if (n < 0) this.eof = true;
        if (n <= 0) break;
        this.pending = this.chunk.subarray(0, n);
      }
      const chain = rx.pop(mem);
      if (chain === undefined) break;
      served++;
      if (chain.error !== undefined || chain.writeLen === 0) {
        this.counters.malformed++;
        rx.pushUsed(mem, chain.head, 0);
        continue;
      }
      const n = Math.min(chain.writeLen, this.pending.length);
      writeToChain(mem, chain.writable, this.pending.subarray(0, n));
      rx.pushUsed(mem, chain.head, n);
      this.counters.rxBytes += n;
      // Keep the rest (copied: the chunk is reused by the next read).
      this.pending = n < this.pending.length ? this.pending.slice(n) : new Uint8Array(0);
    }
    if (served > 0) ctx.signalUsed(RX);
    this.watch(!this.eof && this.pending.length === 0 && this.hasRxBuffers());
  }

  private transmit(): void {
    const ctx = this.ctx;
    if (ctx === undefined) return;
    const mem = ctx.mem;
    drainQueue(ctx, TX, (chain) => {
      if (chain.error !== undefined) this.counters.malformed++;
      else {
        const bytes = readFromChain(mem, chain.readable, Math.min(chain.readLen, MAX_TX_CHAIN));
        this.backend.write(bytes);
        this.counters.txBytes += bytes.length;
      }
      return 0;
    });
  }
}
