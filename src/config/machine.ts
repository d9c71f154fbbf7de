/** The machine: guest memory, vCPUs, the in-kernel irqchip, dirty page tracking. */
import { ConfigError } from '../common/errors.js';

export interface MachineConfig {
  memMiB: number;
  cpus: number;
  /** In-kernel irqchip and PIT. */
  irqchip: boolean;
  trackDirtyPages: boolean;
}

export const DEFAULT_MACHINE: Readonly<MachineConfig> = { memMiB: 128, cpus: 1, irqchip: true, trackDirtyPages: false };

/**
 * The most vCPUs vireo's machine describes: vCPU i has xAPIC ID i, the I/O APIC takes the ID after the
 * last one, and 0xff is the broadcast ID, so 254 (arch/x86_64's MAX_XAPIC_CPUS, which the MP and ACPI
 * table builders enforce; test/unit-config.test.ts holds the two equal).
 */
export const MAX_VCPUS = 254;

/** The least guest memory: the real-mode area and the kernel at 1 MiB need 2 MiB. */
export const MIN_MEM_MIB = 2;
/** The most guest memory vireo maps: 1 TiB. */
export const MAX_MEM_MIB = 1024 * 1024;

export function validateMachine(c: Pick<MachineConfig, 'memMiB' | 'cpus'>): void {
  const { memMiB, cpus } = c;
  if (!Number.isInteger(memMiB) || memMiB < MIN_MEM_MIB || memMiB > MAX_MEM_MIB)
    throw new ConfigError(`memory size ${memMiB} MiB is out of range: give ${MIN_MEM_MIB} to ${MAX_MEM_MIB} MiB`);
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_VCPUS)
    throw new ConfigError(`vCPU count ${cpus} is out of range: give 1 to ${MAX_VCPUS}`);
}
