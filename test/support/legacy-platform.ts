/**
 * vireo's legacy port map (as src/vmm/platform.ts builds it) on a bus, each device fenced so a test sees
 * any access the bus hands a device outside its range; shared by the hostile-port tests and the fuzz
 * targets (test/fuzz/).
 */
import {
  ACPI_PM1_CNT_LEN,
  ACPI_PM1_EVT_LEN,
  ACPI_PM1A_CNT,
  ACPI_PM1A_EVT,
  ACPI_RESET_PORT,
} from '../../src/arch/x86_64/acpi.js';
import { Bus, type BusDevice } from '../../src/bus/bus.js';
import {
  createAcpiPmState,
  Pm1Control,
  Pm1Event,
  type PmRequest,
  ResetRegister,
} from '../../src/devices/legacy/acpi-pm.js';
import { CMOS_BASE, CMOS_LENGTH, Cmos, createCmosState } from '../../src/devices/legacy/cmos.js';
import { DEBUG_EXIT_PORT, DebugExit } from '../../src/devices/legacy/debug-exit.js';
import { createI8042State, I8042, I8042_BASE, I8042_LENGTH } from '../../src/devices/legacy/i8042.js';
import { createPostCodeState, POST_CODE_PORT, PostCode } from '../../src/devices/legacy/post-code.js';
import { PVPANIC_PORT, PvPanic } from '../../src/devices/legacy/pvpanic.js';
import { COM1_PORT, createSerialState, Serial16550 } from '../../src/devices/legacy/serial.js';

/** Passes accesses through, failing loudly if the bus hands the device bytes outside its range. */
export class Fenced implements BusDevice {
  constructor(
    readonly name: string,
    readonly length: number,
    private readonly inner: BusDevice,
  ) {}
  private check(offset: number, data: Uint8Array): void {
    if (!(offset >= 0 && data.length >= 1 && offset + data.length <= this.length))
      throw new Error(`${this.name}: access of ${data.length} at offset ${offset} is outside its ${this.length} ports`);
  }
  read(offset: number, data: Uint8Array): void {
    this.check(offset, data);
    this.inner.read(offset, data);
  }
  write(offset: number, data: Uint8Array): void {
    this.check(offset, data);
    this.inner.write(offset, data);
  }
}

/** vireo's legacy port map (as src/vmm/platform.ts builds it), each device fenced. */
export function legacyPlatform() {
  const events: string[] = [];
  const sent: number[] = [];
  const pm = (r: PmRequest) => events.push(typeof r === 'string' ? r : `sleep${r.sleep}`);
  const postCode = createPostCodeState();
  const cmosState = createCmosState();
  const cmos = new Cmos(cmosState, () => Date.UTC(2026, 0, 1));
  const serialState = createSerialState();
  const serial = new Serial16550(serialState, { set: () => {} }, { write: (b) => sent.push(b) });
  const i8042State = createI8042State();
  const acpiPm = createAcpiPmState();
  const devices: [number, number, string, BusDevice][] = [
    [COM1_PORT, 8, 'serial', serial],
    [POST_CODE_PORT, 1, 'post-code', new PostCode(postCode)],
    [DEBUG_EXIT_PORT, 4, 'debug-exit', new DebugExit((status) => events.push(`exit${status}`))],
    [I8042_BASE, I8042_LENGTH, 'i8042', new I8042(() => events.push('i8042-reset'), i8042State)],
    [ACPI_PM1A_EVT, ACPI_PM1_EVT_LEN, 'pm1-evt', new Pm1Event(acpiPm)],
    [ACPI_PM1A_CNT, ACPI_PM1_CNT_LEN, 'pm1-cnt', new Pm1Control(5, pm, acpiPm)],
    [ACPI_RESET_PORT, 1, 'reset', new ResetRegister(0x06, pm, acpiPm)],
    [CMOS_BASE, CMOS_LENGTH, 'cmos', cmos],
    [PVPANIC_PORT, 1, 'pvpanic', new PvPanic((e) => events.push(e))],
  ];
  const bus = new Bus('pio');
  for (const [base, len, name, dev] of devices) bus.insert(base, len, name, new Fenced(name, len, dev));
  const inp = (port: number, size: number): number => {
    const d = new Uint8Array(size);
    bus.read(port, d);
    return d.reduce((v, b, i) => v + b * 256 ** i, 0);
  };
  const out = (port: number, size: number, v: number): void => {
    const d = new Uint8Array(size);
    for (let i = 0; i < size; i++) d[i] = Math.floor(v / 256 ** i) & 0xff;
    bus.write(port, d);
  };
  /** The shared state of each device, as a snapshot saves them (src/vmm/platform.ts savePlatformState). */
  const states = { serial: serialState, postCode, cmos: cmosState, i8042: i8042State, acpiPm };
  return { bus, devices, events, sent, inp, out, postCode, cmos, serial, states };
}
