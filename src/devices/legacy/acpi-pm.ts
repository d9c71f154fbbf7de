/**
 * ACPI fixed hardware, as much as a guest needs to power off and reset: the PM1a event block
 * (PM1_STS, write-one-to-clear, and PM1_EN) and the PM1a control block (SCI_EN reads as set because
 * the FADT declares ACPI always enabled; writing SLP_EN with the S5 sleep type powers off), and the
 * reset register the FADT names. The device reports requests; the VM decides what they end.
 */
import type { BusDevice } from '../../bus/bus.js';

export const PM1_EVT_LENGTH = 4;
export const PM1_CNT_LENGTH = 2;

const SCI_EN = 0x0001;
const SLP_TYP_SHIFT = 10;
const SLP_TYP_MASK = 0x7;
const SLP_EN = 0x2000;

export type PmRequest = 'poweroff' | 'reset' | { sleep: number };

/**
 * Byte lanes of a little-endian register block: byte `offset + i` of `value`. The bus keeps accesses
 * inside the block; anything past 4 bytes of `value` reads as 0 (no shift count wraps at 32).
 */
function readLe(offset: number, data: Uint8Array, value: number): void {
  for (let i = 0; i < data.length; i++) {
    const b = offset + i;
    data[i] = b < 4 ? (value >>> (8 * b)) & 0xff : 0;
  }
}

/**
 * PM1a_EVT_BLK: status (offset 0, 16 bits) and enable (offset 2, 16 bits). Each byte of an access
 * goes to its own register byte, so byte, word and dword accesses at any offset agree.
 */
export class Pm1Event implements BusDevice {
  private status = 0;
  private enable = 0;

  read(offset: number, data: Uint8Array): void {
    readLe(offset, data, ((this.status & 0xffff) | ((this.enable & 0xffff) << 16)) >>> 0);
  }

  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const b = offset + i;
      const v = data[i] as number;
      if (b < 2) this.status &= ~(v << (8 * b));
      else if (b < 4) this.enable = (this.enable & ~(0xff << (8 * (b - 2)))) | (v << (8 * (b - 2)));
    }
  }
}

/** PM1a_CNT_BLK. `s5` is the SLP_TYP value the DSDT's \_S5 package gives. */
export class Pm1Control implements BusDevice {
  private control = SCI_EN;

  constructor(
    private readonly s5: number,
    private readonly onRequest: (r: PmRequest) => void,
  ) {}

  read(offset: number, data: Uint8Array): void {
    readLe(offset, data, (this.control | SCI_EN) & 0xffff);
  }

  write(offset: number, data: Uint8Array): void {
    // Merge every byte of the access first: SLP_TYP and SLP_EN written together act together.
    let next = this.control;
    for (let i = 0; i < data.length; i++) {
      const b = offset + i;
      if (b < 2) next = (next & ~(0xff << (8 * b))) | ((data[i] as number) << (8 * b));
    }
    if (next & SLP_EN) {
      const typ = (next >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
      this.onRequest(typ === this.s5 ? 'poweroff' : { sleep: typ });
    }
    // SLP_EN is write-only: it always reads back as zero.
    this.control = next & ~SLP_EN;
  }
}

/** The reset register (port 0xCF9 on PCs): writing `value` resets the machine. */
export class ResetRegister implements BusDevice {
  private last = 0;
  constructor(
    private readonly resetValue: number,
    private readonly onRequest: (r: PmRequest) => void,
  ) {}

  read(_offset: number, data: Uint8Array): void {
    readLe(0, data, this.last);
  }

  write(_offset: number, data: Uint8Array): void {
    this.last = data[0] as number;
    // Bit 2 (RST_CPU) with bit 1 (SYS_RST) is a reset on the PIIX/ICH register; the FADT value is one such.
    if (this.last === this.resetValue || (this.last & 0x04) !== 0) this.onRequest('reset');
  }
}
