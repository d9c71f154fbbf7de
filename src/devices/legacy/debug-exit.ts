/**
 * QEMU's isa-debug-exit: a write of value v asks the VMM to end with status (v << 1) | 1.
 * The device only reports the request; whoever owns the VM decides how to stop.
 */
import type { BusDevice } from '../../bus/bus.js';

export const DEBUG_EXIT_PORT = 0xf4;

export class DebugExit implements BusDevice {
  constructor(private readonly onExit: (status: number, value: number) => void) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }

  write(_offset: number, data: Uint8Array): void {
    let value = 0;
    for (let i = data.length - 1; i >= 0; i--) value = value * 256 + (data[i] as number);
    // Exit statuses are 8 bits wide in a process: QEMU truncates the same way.
    this.onExit(((value << 1) | 1) & 0xff, value);
  }
}
