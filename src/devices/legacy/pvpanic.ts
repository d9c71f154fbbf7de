/**
 * QEMU's pvpanic device (ACPI ID QEMU0001) at an I/O port: reading gives the events it supports,
 * a guest kernel writes PANICKED (bit 0) when it panics. The device reports the event; the VM ends
 * with a non-zero status instead of treating the panic's reboot as a clean one.
 */
import type { BusDevice } from '../../bus/bus.js';

export const PVPANIC_PORT = 0x505;
export const PVPANIC_PANICKED = 1 << 0;
export const PVPANIC_CRASH_LOADED = 1 << 1;

export class PvPanic implements BusDevice {
  constructor(private readonly onEvent: (event: 'panicked' | 'crash-loaded') => void) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
  }

  write(_offset: number, data: Uint8Array): void {
    const v = data[0] as number;
    if (v & PVPANIC_PANICKED) this.onEvent('panicked');
    else if (v & PVPANIC_CRASH_LOADED) this.onEvent('crash-loaded');
  }
}
