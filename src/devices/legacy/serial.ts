/**
 * A 16550A UART: the register model (RBR/THR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR, DLL/DLM),
 * a 16-byte receive FIFO with trigger levels, loopback, and interrupt priority as the datasheet gives.
 * The device knows only its registers: it takes an interrupt line and a byte sink. Its state lives in
 * a SharedState so that every vCPU thread can drive the same UART without a thread hop; input from
 * the host is queued in a larger host ring and fed to the FIFO as the guest drains it.
 */
import type { BusDevice, IrqLine } from '../../bus/bus.js';
import { SharedState } from '../../common/shared-state.js';

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;

// Register offsets.
const RBR_THR_DLL = 0;
const IER_DLM = 1;
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

// IER bits.
const IER_RDA = 0x01;
const IER_THRE = 0x02;
const IER_RLS = 0x04;
const IER_MS = 0x08;
// IIR values.
const IIR_NONE = 0x01;
const IIR_MS = 0x00;
const IIR_THRE = 0x02;
const IIR_RDA = 0x04;
const IIR_RLS = 0x06;
const IIR_TIMEOUT = 0x0c;
const IIR_FIFO_ENABLED = 0xc0;
// FCR bits.
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
// LCR bits.
const LCR_DLAB = 0x80;
// MCR bits.
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
// LSR bits.
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
// MSR bits.
const MSR_DCTS = 0x01;
const MSR_DDSR = 0x02;
const MSR_TERI = 0x04;
const MSR_DDCD = 0x08;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;

export const FIFO_SIZE = 16;
export const HOST_RING_SIZE = 4096;
const TRIGGER_LEVELS = [1, 4, 8, 14] as const;

const FIELDS = [
  'ier',
  'lcr',
  'mcr',
  'scr',
  'dll',
  'dlm',
  'fcr',
  'lsrErrors',
  'msr',
  'threPending',
  'rxHead',
  'rxCount',
  'hostHead',
  'hostCount',
  'irqLevel',
  'rxDropped',
  'txBytes',
  'rxBytes',
] as const;
export type SerialField = (typeof FIELDS)[number];

/** Where the receive FIFO and the host ring sit in the extra bytes (serial-state.ts reads them too). */
export const RX_OFFSET = SharedState.bytesOffset(FIELDS.length);
export const HOST_OFFSET = RX_OFFSET + 64;

/** Where transmitted bytes go. */
export interface ByteSink {
  write(byte: number): void;
}

export function createSerialState(buffer?: SharedArrayBuffer): SharedState<SerialField> {
  const s = new SharedState(FIELDS, 64 + HOST_RING_SIZE, buffer);
  if (buffer === undefined) {
    // Reset values: DLL=12 (9600 baud), LCR 8N1, MSR with carrier, DSR, CTS as a connected line.
    s.set('dll', 12);
    s.set('lcr', 0x03);
    s.set('mcr', MCR_OUT2);
    s.set('msr', MSR_DCD | MSR_DSR | MSR_CTS);
  }
  return s;
}

export class Serial16550 implements BusDevice {
  constructor(
    readonly state: SharedState<SerialField>,
    private readonly irq: IrqLine,
    private readonly out: ByteSink,
  ) {}

  read(offset: number, data: Uint8Array): void {
    // Wider accesses read the register at the base and fill the rest with zeros.
    data.fill(0);
    data[0] = this.state.locked(() => this.readRegister(offset));
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0] as number;
    this.state.locked(() => this.writeRegister(offset, v));
  }

  /** Host input (the terminal): queue bytes and raise the receive interrupt. Returns bytes accepted. */
  enqueueInput(bytes: Uint8Array): number {
    return this.state.locked(() => {
      const s = this.state;
      let accepted = 0;
      for (const b of bytes) {
        const count = s.get('hostCount');
        if (count >= HOST_RING_SIZE) {
          s.add('rxDropped', 1);
          continue;
        }
        const tail = (s.get('hostHead') + count) % HOST_RING_SIZE;
        s.u8[HOST_OFFSET + tail] = b;
        s.set('hostCount', count + 1);
        accepted++;
      }
      this.refillFifo();
      this.updateIrq();
      return accepted;
    });
  }

  /** Bytes waiting for the guest (FIFO plus host ring). */
  get pendingInput(): number {
    return this.state.get('rxCount') + this.state.get('hostCount');
  }

  private fifoEnabled(): boolean {
    return (this.state.get('fcr') & FCR_ENABLE) !== 0;
  }

  private capacity(): number {
    return this.fifoEnabled() ? FIFO_SIZE : 1;
  }

  /** Move host bytes into the receive FIFO while it has room. */
  private refillFifo(): void {
    const s = this.state;
    // Loopback disconnects the serial input from the receiver: host bytes wait in the ring.
    if (s.get('mcr') & MCR_LOOP) return;
    while (s.get('hostCount') > 0 && s.get('rxCount') < this.capacity()) {
      const head = s.get('hostHead');
      this.pushFifo(s.u8[HOST_OFFSET + head] as number);
      s.set('hostHead', (head + 1) % HOST_RING_SIZE);
      s.add('hostCount', -1);
    }
  }

  private pushFifo(b: number): void {
    const s = this.state;
    const count = s.get('rxCount');
    if (count >= this.capacity()) {
      s.set('lsrErrors', s.get('lsrErrors') | LSR_OE);
      s.add('rxDropped', 1);
      // 16450 mode: the new character overwrites the holding register. In FIFO mode the
      // character in the shift register is the one lost and the FIFO is kept.
      if (!this.fifoEnabled()) s.u8[RX_OFFSET + s.get('rxHead')] = b;
      return;
    }
    s.u8[RX_OFFSET + ((s.get('rxHead') + count) % FIFO_SIZE)] = b;
    s.set('rxCount', count + 1);
    s.add('rxBytes', 1);
  }

  private popFifo(): number {
    const s = this.state;
    const count = s.get('rxCount');
    if (count === 0) return 0;
    const head = s.get('rxHead');
    const b = s.u8[RX_OFFSET + head] as number;
    s.set('rxHead', (head + 1) % FIFO_SIZE);
    s.set('rxCount', count - 1);
    return b;
  }

  private triggerLevel(): number {
    return this.fifoEnabled() ? TRIGGER_LEVELS[(this.state.get('fcr') >> 6) & 3] : 1;
  }

  /** The highest-priority pending interrupt, as IIR's low nibble. */
  private pendingInterrupt(): number {
    const s = this.state;
    const ier = s.get('ier');
    if (ier & IER_RLS && s.get('lsrErrors') & LSR_OE) return IIR_RLS;
    const count = s.get('rxCount');
    if (ier & IER_RDA && count > 0) return count >= this.triggerLevel() ? IIR_RDA : IIR_TIMEOUT;
    if (ier & IER_THRE && s.get('threPending')) return IIR_THRE;
    if (ier & IER_MS && s.get('msr') & (MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD)) return IIR_MS;
    return IIR_NONE;
  }

  private updateIrq(): void {
    // OUT2 gates the interrupt output on PC-compatible UARTs; in loopback the line is internal.
    const mcr = this.state.get('mcr');
    const level = this.pendingInterrupt() !== IIR_NONE && (mcr & MCR_OUT2) !== 0 && (mcr & MCR_LOOP) === 0 ? 1 : 0;
    if (level !== this.state.get('irqLevel')) {
      this.state.set('irqLevel', level);
      this.irq.set(level === 1);
    }
  }

  private readRegister(offset: number): number {
    const s = this.state;
    const dlab = (s.get('lcr') & LCR_DLAB) !== 0;
    let v: number;
    switch (offset) {
      case RBR_THR_DLL:
        if (dlab) return s.get('dll');
        v = this.popFifo();
        this.refillFifo();
        break;
      case IER_DLM:
        return dlab ? s.get('dlm') : s.get('ier');
      case IIR_FCR: {
        const iir = this.pendingInterrupt();
        // Reading IIR while it reports THRE clears that interrupt.
        if (iir === IIR_THRE) s.set('threPending', 0);
        v = iir | (this.fifoEnabled() ? IIR_FIFO_ENABLED : 0);
        break;
      }
      case LCR:
        return s.get('lcr');
      case MCR:
        return s.get('mcr');
      case LSR:
        // Transmission is instantaneous: the holding register and shifter are always empty.
        v = LSR_THRE | LSR_TEMT | (s.get('rxCount') > 0 ? LSR_DR : 0) | s.get('lsrErrors');
        s.set('lsrErrors', 0);
        break;
      case MSR:
        v = this.modemStatus();
        // Reading MSR clears the delta bits.
        s.set('msr', s.get('msr') & 0xf0);
        break;
      case SCR:
        return s.get('scr');
      default:
        return 0xff;
    }
    this.updateIrq();
    return v;
  }

  private modemStatus(): number {
    const s = this.state;
    const mcr = s.get('mcr');
    if (mcr & MCR_LOOP) {
      // Loopback wires the modem control outputs back to the status inputs.
      const deltas = s.get('msr') & 0x0f;
      return (
        deltas |
        (mcr & MCR_RTS ? MSR_CTS : 0) |
        (mcr & MCR_DTR ? MSR_DSR : 0) |
        (mcr & MCR_OUT1 ? MSR_RI : 0) |
        (mcr & MCR_OUT2 ? MSR_DCD : 0)
      );
    }
    return s.get('msr');
  }

  private writeRegister(offset: number, v: number): void {
    const s = this.state;
    const dlab = (s.get('lcr') & LCR_DLAB) !== 0;
    switch (offset) {
      case RBR_THR_DLL:
        if (dlab) {
          s.set('dll', v);
          return;
        }
        s.add('txBytes', 1);
        if (s.get('mcr') & MCR_LOOP) this.pushFifo(v);
        else this.out.write(v);
        // The byte left at once: the holding register is empty again.
        s.set('threPending', 1);
        break;
      case IER_DLM:
        if (dlab) {
          s.set('dlm', v);
          return;
        }
        {
          const old = s.get('ier');
          s.set('ier', v & 0x0f);
          // Enabling THRE while the holding register is empty raises the interrupt at once.
          if (v & IER_THRE && !(old & IER_THRE)) s.set('threPending', 1);
        }
        break;
      case IIR_FCR: {
        const wasEnabled = this.fifoEnabled();
        const enable = (v & FCR_ENABLE) !== 0;
        if (v & FCR_CLEAR_RX || enable !== wasEnabled) {
          s.set('rxHead', 0);
          s.set('rxCount', 0);
        }
        // Bits 1-2 self-clear; keep enable and the trigger level.
        s.set('fcr', v & 0xc1);
        this.refillFifo();
        break;
      }
      case LCR:
        s.set('lcr', v);
        return;
      case MCR: {
        const old = s.get('mcr');
        s.set('mcr', v & 0x1f);
        if ((old ^ v) & MCR_LOOP) this.refillFifo();
        break;
      }
      case LSR:
      case MSR:
        // Read-only on a 16550A (factory test registers): ignored.
        return;
      case SCR:
        s.set('scr', v);
        return;
      default:
        return;
    }
    this.updateIrq();
  }
}
