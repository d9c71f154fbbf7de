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

function readLe(data: Uint8Array, value: number): void {
  for (let i = 0; i < data.length; i++) data[i] = (value >> (8 * i)) & 0xff;
}

function littleEndian(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = (v << 8) | (data[i] as number);
  return v >>> 0;
}

/** PM1a_EVT_BLK: status (offset 0, 16 bits) and enable (offset 2, 16 bits). */
export class Pm1Event implements BusDevice {
  private status = 0;
  private enable = 0;

  read(offset: number, data: Uint8Array): void {
    const word = offset < 2 ? this.status : this.enable;
    readLe(data, word >> (8 * (offset & 1)));
  }

  write(offset: number, data: Uint8Array): void {
    const v = (littleEndian(data) << (8 * (offset & 1))) & 0xffff;
    if (offset < 2) this.status &= ~v;
    else this.enable = (this.enable & ~(0xff << (8 * (offset & 1)))) | v;
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
    readLe(data, (this.control | SCI_EN) >> (8 * offset));
  }

  write(offset: number, data: Uint8Array): void {
    const v = (littleEndian(data) << (8 * offset)) & 0xffff;
    const mask = (data.length >= 2 ? 0xffff : 0xff) << (8 * offset);
    const next = (this.control & ~mask) | v;
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
    readLe(data, this.last);
  }

  write(_offset: number, data: Uint8Array): void {
    this.last = data[0] as number;
    // Bit 2 (RST_CPU) with bit 1 (SYS_RST) is a reset on the PIIX/ICH register; the FADT value is one such.
    if (this.last === this.resetValue || (this.last & 0x04) !== 0) this.onRequest('reset');
  }
}
