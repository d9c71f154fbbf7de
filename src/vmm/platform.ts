/**
 * The legacy PC platform vireo presents, assembled the same way on every thread: the spec is plain
 * data (shared buffers and fd numbers), so each vCPU worker builds its own buses over the same
 * shared device state and runs device logic without a thread hop.
 */
import {
  ACPI_PM1_CNT_LEN,
  ACPI_PM1_EVT_LEN,
  ACPI_PM1A_CNT,
  ACPI_PM1A_EVT,
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_S5_SLP_TYP,
} from '../arch/x86_64/acpi.js';
import { FdSink } from '../backends/console-io.js';
import { Bus, type IrqLine } from '../bus/bus.js';
import { SharedState } from '../common/shared-state.js';
import { createAcpiPmState, Pm1Control, Pm1Event, type PmRequest, ResetRegister } from '../devices/legacy/acpi-pm.js';
import { type AcpiPmState, restoreAcpiPmState, saveAcpiPmState } from '../devices/legacy/acpi-pm-state.js';
import { CMOS_BASE, CMOS_LENGTH, Cmos, type CmosField, createCmosState } from '../devices/legacy/cmos.js';
import { type CmosState, restoreCmosState, saveCmosState } from '../devices/legacy/cmos-state.js';
import { DEBUG_EXIT_PORT, DebugExit } from '../devices/legacy/debug-exit.js';
import { createI8042State, I8042, I8042_BASE, I8042_IRQ, I8042_LENGTH } from '../devices/legacy/i8042.js';
import { type I8042State, restoreI8042State, saveI8042State } from '../devices/legacy/i8042-state.js';
import { createPostCodeState, POST_CODE_PORT, PostCode, type PostCodeField } from '../devices/legacy/post-code.js';
import { type PostCodeState, restorePostCodeState, savePostCodeState } from '../devices/legacy/post-code-state.js';
import { PVPANIC_PORT, PvPanic } from '../devices/legacy/pvpanic.js';
import { COM1_IRQ, COM1_PORT, createSerialState, Serial16550, type SerialField } from '../devices/legacy/serial.js';
import { restoreSerialState, type SerialState, saveSerialState } from '../devices/legacy/serial-state.js';
import { MMIO_WINDOW, VirtioMmioTransport } from '../devices/virtio/transport/mmio.js';
import { EXIT } from '../kvm/abi.js';
import { irqLineRaw } from '../kvm/kvm.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { eventfdWrite } from '../os/eventfd.js';
import type { VcpuStop } from '../vcpu/protocol.js';
import type { VirtioPlatformSpec } from './virtio-devices.js';

export const STAT_FIELDS = [
  'exitsIo',
  'exitsMmio',
  'exitsHlt',
  'exitsShutdown',
  'exitsSystemEvent',
  'exitsInternalError',
  'exitsFailEntry',
  'exitsOther',
  'unclaimedPioReads',
  'unclaimedPioWrites',
  'unclaimedMmioReads',
  'unclaimedMmioWrites',
  // Serial output bytes dropped because their fd was full (a reader that stopped) or failing.
  'serialOutputDropped',
] as const;
export type StatField = (typeof STAT_FIELDS)[number];

/** Everything a thread needs to rebuild the platform: postable to a worker. */
export interface PlatformSpec {
  vmFd: number;
  /** fd serial output is written to, or -1 to discard it. */
  serialOutFd: number;
  serial: SharedArrayBuffer;
  postCode: SharedArrayBuffer;
  cmos: SharedArrayBuffer;
  /** The i8042's registers and output buffer (the main thread injects keys into it). */
  i8042: SharedArrayBuffer;
  /** The ACPI PM1 and reset registers (one copy for every vCPU thread). */
  acpiPm: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  /** Whether the in-kernel irqchip exists (device interrupts need it). */
  irqchip: boolean;
  /** virtio-mmio devices (their logic runs on the I/O thread; the registers here). */
  virtio?: VirtioPlatformSpec | undefined;
}

export function createPlatformSpec(vmFd: number, serialOutFd: number, irqchip: boolean): PlatformSpec {
  return {
    vmFd,
    serialOutFd,
    serial: createSerialState().buffer,
    postCode: createPostCodeState().buffer,
    cmos: createCmosState().buffer,
    i8042: createI8042State().buffer,
    acpiPm: createAcpiPmState().buffer,
    stats: new SharedState(STAT_FIELDS).buffer,
    irqchip,
  };
}

/** The legacy devices' records for a snapshot (the vCPUs paused); pvpanic and debug-exit hold no state. */
export interface PlatformState {
  serial: SerialState;
  postCode: PostCodeState;
  i8042: I8042State;
  cmos: CmosState;
  acpiPm: AcpiPmState;
}

export function savePlatformState(spec: PlatformSpec): PlatformState {
  return {
    serial: saveSerialState(createSerialState(spec.serial)),
    postCode: savePostCodeState(createPostCodeState(spec.postCode)),
    i8042: saveI8042State(createI8042State(spec.i8042)),
    cmos: saveCmosState(createCmosState(spec.cmos)),
    acpiPm: saveAcpiPmState(createAcpiPmState(spec.acpiPm)),
  };
}

/** Puts saved records into the platform's shared state, before any thread builds its buses over it. */
export function restorePlatformState(spec: PlatformSpec, state: PlatformState): void {
  restoreSerialState(createSerialState(spec.serial), state.serial);
  restorePostCodeState(createPostCodeState(spec.postCode), state.postCode);
  restoreI8042State(createI8042State(spec.i8042), state.i8042);
  restoreCmosState(createCmosState(spec.cmos), state.cmos);
  restoreAcpiPmState(createAcpiPmState(spec.acpiPm), state.acpiPm);
}

export interface Platform {
  pio: Bus;
  mmio: Bus;
  serial: Serial16550;
  i8042: I8042;
  postCode: PostCode;
  stats: SharedState<StatField>;
  serialState: SharedState<SerialField>;
  postCodeState: SharedState<PostCodeField>;
  cmosState: SharedState<CmosField>;
  /** A device's request to end the VM, if any (consumed by the run loop). */
  takeStop(): VcpuStop | undefined;
  countExit(reason: number): void;
}

export function buildPlatform(spec: PlatformSpec, mem: GuestMemory): Platform {
  let stop: VcpuStop | undefined;
  const pio = new Bus('pio');
  const mmio = new Bus('mmio');
  const stats = new SharedState(STAT_FIELDS, 0, spec.stats);
  const irq = (line: number): IrqLine => ({
    set: (level) => {
      if (spec.irqchip) irqLineRaw(spec.vmFd, line, level);
    },
  });
  const serialState = createSerialState(spec.serial);
  const serial = new Serial16550(
    serialState,
    irq(COM1_IRQ),
    new FdSink(spec.serialOutFd, () => stats.add('serialOutputDropped', 1)),
  );
  const postCodeState = createPostCodeState(spec.postCode);
  const postCode = new PostCode(postCodeState);
  pio.insert(COM1_PORT, 8, 'serial-com1', serial);
  pio.insert(POST_CODE_PORT, 1, 'post-code', postCode);
  pio.insert(
    DEBUG_EXIT_PORT,
    4,
    'debug-exit',
    new DebugExit((status, value) => {
      stop ??= { kind: 'debug-exit', status, value };
    }),
  );
  const i8042 = new I8042(
    () => {
      stop ??= { kind: 'reset', source: 'i8042' };
    },
    createI8042State(spec.i8042),
    irq(I8042_IRQ),
  );
  pio.insert(I8042_BASE, I8042_LENGTH, 'i8042', i8042);
  const onPm = (r: PmRequest): void => {
    if (r === 'poweroff') stop ??= { kind: 'shutdown', source: 'acpi' };
    else if (r === 'reset') stop ??= { kind: 'reset', source: 'acpi' };
  };
  const acpiPm = createAcpiPmState(spec.acpiPm);
  pio.insert(ACPI_PM1A_EVT, ACPI_PM1_EVT_LEN, 'acpi-pm1-evt', new Pm1Event(acpiPm));
  pio.insert(ACPI_PM1A_CNT, ACPI_PM1_CNT_LEN, 'acpi-pm1-cnt', new Pm1Control(ACPI_S5_SLP_TYP, onPm, acpiPm));
  pio.insert(ACPI_RESET_PORT, 1, 'acpi-reset', new ResetRegister(ACPI_RESET_VALUE, onPm, acpiPm));
  const cmosState = createCmosState(spec.cmos);
  pio.insert(CMOS_BASE, CMOS_LENGTH, 'cmos-rtc', new Cmos(cmosState));
  pio.insert(
    PVPANIC_PORT,
    1,
    'pvpanic',
    new PvPanic((event) => {
      if (event === 'panicked') stop ??= { kind: 'panic', source: 'pvpanic' };
    }),
  );
  const virtio = spec.virtio;
  if (virtio !== undefined) {
    for (const slot of virtio.slots) {
      const transport = new VirtioMmioTransport(slot.mmio, mem, {
        notifyQueue: (q) => eventfdWrite(slot.queueFds[q] as number),
        wake: () => eventfdWrite(virtio.controlFd),
        interrupt: () => eventfdWrite(slot.irqFd),
      });
      mmio.insert(slot.transport.base, MMIO_WINDOW, slot.name, transport);
    }
  }
  pio.onUnclaimed = (_a, w) => stats.add(w ? 'unclaimedPioWrites' : 'unclaimedPioReads', 1);
  mmio.onUnclaimed = (_a, w) => stats.add(w ? 'unclaimedMmioWrites' : 'unclaimedMmioReads', 1);
  const countExit = (reason: number): void => {
    switch (reason) {
      case EXIT.KVM_EXIT_IO:
        stats.add('exitsIo', 1);
        break;
      case EXIT.KVM_EXIT_MMIO:
        stats.add('exitsMmio', 1);
        break;
      case EXIT.KVM_EXIT_HLT:
        stats.add('exitsHlt', 1);
        break;
      case EXIT.KVM_EXIT_SHUTDOWN:
        stats.add('exitsShutdown', 1);
        break;
      case EXIT.KVM_EXIT_SYSTEM_EVENT:
        stats.add('exitsSystemEvent', 1);
        break;
      case EXIT.KVM_EXIT_INTERNAL_ERROR:
        stats.add('exitsInternalError', 1);
        break;
      case EXIT.KVM_EXIT_FAIL_ENTRY:
        stats.add('exitsFailEntry', 1);
        break;
      default:
        stats.add('exitsOther', 1);
    }
  };
  return {
    pio,
    mmio,
    serial,
    i8042,
    postCode,
    stats,
    serialState,
    postCodeState,
    cmosState,
    countExit,
    takeStop: () => {
      const s = stop;
      stop = undefined;
      return s;
    },
  };
}
