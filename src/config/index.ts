/**
 * vireo's configuration (Firecracker's vmm_config/): per resource an XConfig (user input), parseX for
 * the CLI's key=value form (through options.ts, the one parser) and validateX, which throws a
 * ConfigError with a one-line message. The CLI, the Firecracker API (and its config file), Vm.create
 * and the snapshot restore path map their input into these types and call the same validators, so an
 * input is accepted or refused the same way everywhere. Imports only common/.
 */
import { ConfigError } from '../common/errors.js';
import type { RateLimiterConfig } from '../devices/virtio/rate-limiter.js';
import { type BalloonConfig, validateBalloon } from './balloon.js';
import { type BootConfig, validateBoot } from './boot.js';
import { type DriveConfig, validateDrives, validateRateLimiter } from './drive.js';
import { type MachineConfig, validateMachine } from './machine.js';
import { type NetConfig, validateNets } from './net.js';
import { type SerialConfig, validateSerial } from './serial.js';
import { type ShareConfig, validateShares } from './share.js';
import { type VsockConfig, validateVsock } from './vsock.js';

export * from './balloon.js';
export * from './boot.js';
export * from './drive.js';
export * from './id.js';
export * from './machine.js';
export * from './net.js';
export * from './options.js';
export * from './serial.js';
export * from './share.js';
export * from './vsock.js';

/** The whole machine, as Vm.create takes it. */
/** virtio-rng's settings. */
export interface RngConfig {
  rateLimiter?: RateLimiterConfig | undefined;
}

export interface VmConfig extends BootConfig, Partial<Omit<MachineConfig, 'irqchip' | 'trackDirtyPages'>> {
  memMiB?: number | undefined;
  cpus?: number | undefined;
  serial?: SerialConfig | undefined;
  /** In-kernel irqchip and PIT (default true). */
  irqchip?: boolean | undefined;
  kvmPath?: string | undefined;
  /** virtio-blk drives, in order (the first is /dev/vda in a Linux guest). */
  drives?: DriveConfig[] | undefined;
  nets?: NetConfig[] | undefined;
  /**
   * A virtio-rng device (host randomness): true, or its settings (Firecracker's entropy rate limiter:
   * requests beyond it wait).
   */
  rng?: boolean | RngConfig | undefined;
  /**
   * A virtio-console (the guest's hvc0): output where this says; input from sendConsoleInput(), which
   * then feeds hvc0 instead of the serial port.
   */
  virtioConsole?: { output: SerialConfig } | undefined;
  /** A virtio-balloon device. */
  balloon?: BalloonConfig | undefined;
  /** Host directories shared through virtio-fs, one device each (the guest mounts each by its tag). */
  shares?: ShareConfig[] | undefined;
  /** A virtio-vsock device: guest CID and the host Unix socket path (Firecracker's hybrid vsock). */
  vsock?: VsockConfig | undefined;
  /**
   * Log the pages written (by the guest through KVM, by vireo's devices through a shared map), so that
   * snapshots can be Diff snapshots (Firecracker's track_dirty_pages). Default false.
   */
  trackDirtyPages?: boolean | undefined;
  /**
   * Confine the VM's threads (vCPUs, the I/O thread, disk threads, virtio-fs server threads) with seccomp filters (kvm/seccomp-policy.ts).
   * Default true; false (the CLI's --no-seccomp) prints a warning: never for a guest you do not trust.
   */
  seccomp?: boolean | undefined;
}

/**
 * Every resource of a machine (defaults filled in), and the facts between them: the balloon's target
 * against the memory size, virtio devices against the irqchip. `boot: false` for a restore (the
 * kernel is not loaded again).
 */
export function validateVmConfig(
  c: Required<Pick<VmConfig, 'memMiB' | 'cpus' | 'irqchip'>> & VmConfig,
  boot = true,
): void {
  validateMachine(c);
  if (boot) validateBoot(c);
  if (c.serial) validateSerial(c.serial);
  if (c.virtioConsole) validateSerial(c.virtioConsole.output, 'virtio-console');
  validateDrives(c.drives ?? []);
  if (typeof c.rng === 'object' && c.rng !== null && c.rng.rateLimiter !== undefined)
    validateRateLimiter('entropy: rate_limiter', c.rng.rateLimiter);
  validateNets(c.nets ?? []);
  validateShares(c.shares ?? []);
  if (c.vsock) validateVsock(c.vsock);
  if (c.balloon) validateBalloon(c.balloon, c.memMiB);
  const virtio =
    (c.drives?.length ?? 0) +
    (c.nets?.length ?? 0) +
    (c.shares?.length ?? 0) +
    (c.rng ? 1 : 0) +
    (c.virtioConsole ? 1 : 0) +
    (c.vsock ? 1 : 0) +
    (c.balloon ? 1 : 0);
  if (virtio > 0 && !c.irqchip)
    throw new ConfigError('virtio devices need the in-kernel irqchip: drop --no-irqchip or the devices');
}
