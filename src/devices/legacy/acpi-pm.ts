/**
 * ACPI fixed hardware, as much as a guest needs to power off and reset: the PM1a event block
 * (PM1_STS, write-one-to-clear, and PM1_EN) and the PM1a control block (SCI_EN reads as set because
 * the FADT declares ACPI always enabled; writing SLP_EN with the S5 sleep type powers off), and the
 * reset register the FADT names. The device reports requests; the VM decides what they end.
 * The registers live in one SharedState (`createAcpiPmState`), so every vCPU thread's bus sees the
 * same PM1 status, enable and control values and a snapshot has one copy of them.
 */
import type { BusDevice } from '../../bus/bus.js';
import { SharedState } from '../../common/shared-state.js';

const FIELDS = ['pm1Status', 'pm1Enable', 'pm1Control', 'resetLast'] as const;
export type AcpiPmField = (typeof FIELDS)[number];

export function createAcpiPmState(buffer?: SharedArrayBuffer): SharedState<AcpiPmField> {
  const s = new SharedState(FIELDS, 0, buffer);
  if (buffer === undefined) s.set('pm1Control', SCI_EN);
  return s;
}

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
  constructor(readonly state: SharedState<AcpiPmField> = createAcpiPmState()) {}

  read(offset: number, data: Uint8Array): void {
    const s = this.state;
    readLe(offset, data, ((s.get('pm1Status') & 0xffff) | ((s.get('pm1Enable') & 0xffff) << 16)) >>> 0);
  }

  write(offset: number, data: Uint8Array): void {
    const s = this.state;
    s.locked(() => {
      let status = s.get('pm1Status');
      let enable = s.get('pm1Enable');
      for (let i = 0; i < data.length; i++) {
        const b = offset + i;
        const v = data[i] as number;
        if (b < 2) status &= ~(v << (8 * b));
        else if (b < 4) enable = (enable & ~(0xff << (8 * (b - 2)))) | (v << (8 * (b - 2)));
      }
      s.set('pm1Status', status);
      s.set('pm1Enable', enable);
    });
  }
}

/** PM1a_CNT_BLK. `s5` is the SLP_TYP value the DSDT's \_S5 package gives. */
export class Pm1Control implements BusDevice {
  constructor(
    private readonly s5: number,
    private readonly onRequest: (r: PmRequest) => void,
    readonly state: SharedState<AcpiPmField> = createAcpiPmState(),
  ) {}

  read(offset: number, data: Uint8Array): void {
    readLe(offset, data, (this.state.get('pm1Control') | SCI_EN) & 0xffff);
  }

  write(offset: number, data: Uint8Array): void {
    // Merge every byte of the access first: SLP_TYP and SLP_EN written together act together.
    let next = this.state.get('pm1Control');
    for (let i = 0; i < data.length; i++) {
      const b = offset + i;
      if (b < 2) next = (next & ~(0xff << (8 * b))) | ((data[i] as number) << (8 * b));
    }
    if (next & SLP_EN) {
      const typ = (next >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
      this.onRequest(typ === this.s5 ? 'poweroff' : { sleep: typ });
    }
    // SLP_EN is write-only: it always reads back as zero.
    this.state.set('pm1Control', next & ~SLP_EN);
  }
}

/** The reset register (port 0xCF9 on PCs): writing `value` resets the machine. */
export class ResetRegister implements BusDevice {
  constructor(
    private readonly resetValue: number,
    private readonly onRequest: (r: PmRequest) => void,
    readonly state: SharedState<AcpiPmField> = createAcpiPmState(),
  ) {}

  read(_offset: number, data: Uint8Array): void {
    readLe(0, data, this.state.get('resetLast'));
  }

  write(_offset: number, data: Uint8Array): void {
    const last = data[0] as number;
    this.state.set('resetLast', last);
    // Bit 2 (RST_CPU) with bit 1 (SYS_RST) is a reset on the PIIX/ICH register; the FADT value is one such.
    if (last === this.resetValue || (last & 0x04) !== 0) this.onRequest('reset');
  }
}
