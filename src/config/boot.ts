/** The boot source: kernel, initrd, command line. */
import { ConfigError } from '../common/errors.js';

export interface BootConfig {
  kernel: string;
  initrd?: string | undefined;
  cmdline?: string | undefined;
}

/**
 * The paths must be non-empty strings. How long a command line may be is the kernel's own limit
 * (its setup header's cmdline_size, 2047 bytes for ELF and PVH), which the loader checks;
 * Firecracker's API adds its 2048-byte x86 limit at PUT /boot-source.
 */
export function validateBoot(b: BootConfig): void {
  if (typeof b.kernel !== 'string' || b.kernel === '') throw new ConfigError('a kernel is needed: give its path');
  if (b.initrd !== undefined && (typeof b.initrd !== 'string' || b.initrd === ''))
    throw new ConfigError('the initrd path is empty: give a file or leave the initrd out');
  if (b.cmdline !== undefined && typeof b.cmdline !== 'string')
    throw new ConfigError('the kernel command line must be a string');
}
