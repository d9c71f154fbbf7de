/**
 * The i8042 keyboard controller, as much as guests use to reset the machine and to receive
 * Ctrl+Alt+Del: the status and command ports, the command byte, self-tests, both reset paths (command
 * 0xFE, and the output port's reset bit through command 0xD1), and a 16-byte output buffer the host
 * can put key scancodes into (IRQ 1 for each byte, as Firecracker's i8042 does). Ports 0x60 (data)
 * and 0x64 (status/command) map to offsets 0 and 4 of one 5-port range. The state lives in a
 * SharedState, so every vCPU thread and the main thread (which injects keys) drive the same controller.
 */
import type { BusDevice, IrqLine } from '../../bus/bus.js';
import { SharedState } from '../../common/shared-state.js';

export const I8042_BASE = 0x60;
export const I8042_LENGTH = 5;
export const I8042_IRQ = 1;
/** Bytes the output buffer holds (Firecracker's BUF_SIZE). */
export const I8042_BUFFER_SIZE = 16;

const DATA = 0;
const COMMAND = 4;

const STATUS_OBF = 0x01;
const STATUS_SYS = 0x04;
const STATUS_CMD = 0x08;

/** Command byte: keyboard interrupt enabled, and scancodes translated to set 1. */
export const CTR_KBDINT = 0x01;
export const CTR_XLATE = 0x40;

const CMD_READ_CTR = 0x20;
/** Controller commands whose data byte follows (i8042-state.ts names them). */
export const CMD_WRITE_CTR = 0x60;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_READ_OUTP = 0xd0;
export const CMD_WRITE_OUTP = 0xd1;
const CMD_PULSE_RESET = 0xfe;

/**
 * Ctrl+Alt+Del pressed and released, as a PC keyboard sends it. Scancode set 2 (what the keyboard
 * speaks; a guest that cleared the translate bit reads it as is) and set 1 (what the controller
 * delivers when the translate bit is set, the power-on default: Linux's atkbd then decodes set 1).
 * Firecracker sends the three presses only; the releases leave the guest's modifier state clean when
 * it ignores the keys.
 */
export const CTRL_ALT_DEL = {
  set1: [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d],
  set2: [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14],
} as const;

const FIELDS = ['status', 'ctr', 'outputPort', 'pendingWrite', 'head', 'count', 'irqs', 'dropped'] as const;
export type I8042Field = (typeof FIELDS)[number];
export const BUF_OFFSET = SharedState.bytesOffset(FIELDS.length);

export function createI8042State(buffer?: SharedArrayBuffer): SharedState<I8042Field> {
  const s = new SharedState(FIELDS, I8042_BUFFER_SIZE, buffer);
  if (buffer === undefined) {
    s.set('status', STATUS_SYS);
    s.set('ctr', 0x45); // translate, system flag, keyboard interrupt
    s.set('outputPort', 0x01);
  }
  return s;
}

const NO_IRQ: IrqLine = { set: () => {} };

export class I8042 implements BusDevice {
  constructor(
    private readonly onReset: () => void,
    readonly state: SharedState<I8042Field> = createI8042State(),
    private readonly irq: IrqLine = NO_IRQ,
  ) {}

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === COMMAND) {
      const s = this.state;
      data[0] = s.get('status') | (s.get('count') > 0 ? STATUS_OBF : 0);
    } else if (offset === DATA) {
      data[0] = this.state.locked(() => {
        const b = this.pop();
        // More bytes waiting: tell the guest with another interrupt (one per byte).
        if (this.state.get('count') > 0) this.interrupt();
        return b;
      });
    } else {
      data.fill(0xff);
    }
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0] as number;
    const s = this.state;
    s.locked(() => {
      if (offset === COMMAND) {
        s.or('status', STATUS_CMD);
        this.command(v);
      } else if (offset === DATA) {
        s.and('status', ~STATUS_CMD);
        const pending = s.get('pendingWrite');
        s.set('pendingWrite', 0);
        if (pending === CMD_WRITE_CTR) s.set('ctr', v);
        else if (pending === CMD_WRITE_OUTP) {
          s.set('outputPort', v);
          // Bit 0 of the output port drives the CPU reset line, active low.
          if ((v & 1) === 0) this.onReset();
        }
        // Keyboard commands (no controller command pending) are acknowledged.
        else this.push(0xfa);
      }
    });
  }

  /**
   * Puts Ctrl+Alt+Del in the output buffer in the scancode set the guest's command byte asks for,
   * and raises IRQ 1 (if the guest enabled the keyboard interrupt). Returns false, changing nothing,
   * when the buffer lacks room for the whole sequence (the guest has not read earlier bytes).
   */
  injectCtrlAltDel(): boolean {
    const s = this.state;
    return s.locked(() => {
      const seq = s.get('ctr') & CTR_XLATE ? CTRL_ALT_DEL.set1 : CTRL_ALT_DEL.set2;
      if (I8042_BUFFER_SIZE - s.get('count') < seq.length) return false;
      for (const b of seq) this.push(b);
      this.interrupt();
      return true;
    });
  }

  /** Bytes waiting in the output buffer. */
  get pending(): number {
    return this.state.get('count');
  }

  private command(cmd: number): void {
    const s = this.state;
    switch (cmd) {
      case CMD_READ_CTR:
        this.push(s.get('ctr'));
        break;
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTP:
        s.set('pendingWrite', cmd);
        break;
      case CMD_SELF_TEST:
        this.push(0x55);
        break;
      case CMD_KBD_TEST:
        this.push(0x00);
        break;
      case CMD_READ_OUTP:
        this.push(s.get('outputPort'));
        break;
      case CMD_PULSE_RESET:
        this.onReset();
        break;
      default:
        // Pulses of other output lines (0xF0-0xFD) and unknown commands are ignored.
        break;
    }
  }

  /** Appends a byte (under the lock); a full buffer drops it, so a guest cannot grow it. */
  private push(b: number): void {
    const s = this.state;
    const count = s.get('count');
    if (count >= I8042_BUFFER_SIZE) {
      s.add('dropped', 1);
      return;
    }
    s.u8[BUF_OFFSET + ((s.get('head') + count) % I8042_BUFFER_SIZE)] = b;
    s.set('count', count + 1);
  }

  /** The oldest byte (under the lock); an empty buffer reads as zero. */
  private pop(): number {
    const s = this.state;
    const count = s.get('count');
    if (count === 0) return 0;
    const head = s.get('head');
    const b = s.u8[BUF_OFFSET + head] as number;
    s.set('head', (head + 1) % I8042_BUFFER_SIZE);
    s.set('count', count - 1);
    return b;
  }

  /** An edge on IRQ 1 (ISA interrupts are edge-triggered), when the guest enabled it. */
  private interrupt(): void {
    if ((this.state.get('ctr') & CTR_KBDINT) === 0) return;
    this.state.add('irqs', 1);
    this.irq.set(true);
    this.irq.set(false);
  }
}
