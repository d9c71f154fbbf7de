/**
 * The i8042 keyboard controller, as much as guests use to reset the machine: the status and
 * command ports, the command byte, self-tests, and both reset paths (command 0xFE, and the output
 * port's reset bit through command 0xD1). Ports 0x60 (data) and 0x64 (status/command) map to offsets
 * 0 and 4 of one 5-port range.
 */
import type { BusDevice } from '../../bus/bus.js';

export const I8042_BASE = 0x60;
export const I8042_LENGTH = 5;

const DATA = 0;
const COMMAND = 4;

const STATUS_OBF = 0x01;
const STATUS_SYS = 0x04;
const STATUS_CMD = 0x08;

const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_READ_OUTP = 0xd0;
const CMD_WRITE_OUTP = 0xd1;
const CMD_PULSE_RESET = 0xfe;

export class I8042 implements BusDevice {
  private status = STATUS_SYS;
  private ctr = 0x45;
  private outputPort = 0x01;
  private outBuffer: number[] = [];
  private pendingWrite = 0;

  constructor(private readonly onReset: () => void) {}

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === COMMAND) {
      data[0] = this.status | (this.outBuffer.length > 0 ? STATUS_OBF : 0);
    } else if (offset === DATA) {
      data[0] = this.outBuffer.shift() ?? 0;
    } else {
      data.fill(0xff);
    }
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0] as number;
    if (offset === COMMAND) {
      this.status |= STATUS_CMD;
      this.command(v);
    } else if (offset === DATA) {
      this.status &= ~STATUS_CMD;
      if (this.pendingWrite === CMD_WRITE_CTR) this.ctr = v;
      else if (this.pendingWrite === CMD_WRITE_OUTP) {
        this.outputPort = v;
        // Bit 0 of the output port drives the CPU reset line, active low.
        if ((v & 1) === 0) this.onReset();
      }
      // Keyboard commands (no controller command pending) are acknowledged.
      else this.outBuffer.push(0xfa);
      this.pendingWrite = 0;
    }
  }

  private command(cmd: number): void {
    switch (cmd) {
      case CMD_READ_CTR:
        this.outBuffer.push(this.ctr);
        break;
      case CMD_WRITE_CTR:
      case CMD_WRITE_OUTP:
        this.pendingWrite = cmd;
        break;
      case CMD_SELF_TEST:
        this.outBuffer.push(0x55);
        break;
      case CMD_KBD_TEST:
        this.outBuffer.push(0x00);
        break;
      case CMD_READ_OUTP:
        this.outBuffer.push(this.outputPort);
        break;
      case CMD_PULSE_RESET:
        this.onReset();
        break;
      default:
        // Pulses of other output lines (0xF0-0xFD) and unknown commands are ignored.
        break;
    }
  }
}
