/**
 * What one kind of virtio device tells the VMM (one entry per kind in device-registry.ts): where its
 * configuration lives and how a snapshot keeps it, how its backends open (each release added to the
 * VM's store: a failed start leaks nothing), how the I/O thread builds its model from plain data, and
 * how its own state record is checked. The builder, the device manager and the snapshot code read
 * these entries and name no kind themselves.
 */
import { closeSync } from 'node:fs';
import { openOutputFile } from '../backends/output-file.js';
import { ConfigError } from '../common/errors.js';
import { type DisposableStore, toDisposable } from '../common/lifecycle.js';
import type { Check, Field } from '../common/schema.js';
import type { SerialConfig, VmConfig } from '../config/index.js';
import type { VirtioDevice } from '../devices/virtio/device.js';
import type { RegionDescriptor } from '../memory/guest-memory.js';

/** The device part of a VmConfig, as the device manager takes it (Vm.create's config, or a test's). */
export type DeviceConfigs = Partial<Omit<VmConfig, 'kernel'>>;

/** What open() may use. */
export interface OpenContext {
  /** Every fd and backend open() creates is added here the moment it exists. */
  readonly store: DisposableStore;
  /** Tell the I/O thread to look at host-side device state (a host handle's timers use it). */
  wake(): void;
  /** Whether this VM's threads confine themselves with seccomp (kvm/seccomp-policy.ts). */
  readonly seccomp: boolean;
}

/** What command() may use, on the I/O thread. */
export interface CommandContext {
  readonly memory: readonly RegionDescriptor[];
  /** The I/O thread is confined by seccomp: it cannot start threads. */
  readonly seccomp: boolean;
}

/** What a restore gives a kind to map its saved configuration back with. */
export interface RestoreContext {
  /** Where the restored VM's consoles go. */
  serial: SerialConfig | undefined;
}

/** One device to put on a slot: its slot name and its host side as plain data (posted to the I/O thread). */
export interface DeviceInstance<S> {
  name: string;
  spec: S;
}

/** A kind's host-side state kept beside the slots in a snapshot (`devices[key]`), e.g. the balloon's target. */
export interface HostRecord<H> {
  key: string;
  check: Check;
  save(host: H): unknown;
  restore(host: H, state: unknown): void;
}

export interface DeviceKind<C, S, H = never> {
  /** The slot name's kind ('virtio-rng', 'virtio-blk' in 'virtio-blk:ID'); its records are checked by it. */
  readonly name: string;
  /** This kind's key in VmConfig and in a snapshot's config. */
  readonly configKey: string;
  /** This kind's part of a configuration: undefined when the VM has none. */
  config(c: DeviceConfigs): C | undefined;
  /** The configuration as a snapshot keeps it, its check, and back (a key the snapshot must have). */
  readonly snapshot: {
    save(c: C | undefined): unknown;
    check: Check | Field;
    restore(saved: unknown, ctx: RestoreContext): C | undefined;
  };
  /** Opens the backends; returns the devices (in slot order) and the host handle, if the kind has one. */
  open(c: C, ctx: OpenContext): { devices: DeviceInstance<S>[]; host?: H };
  /** The device model for a spec from open(): on the I/O thread (to run it) and the main thread (its features). */
  build(spec: S, memory: readonly RegionDescriptor[]): VirtioDevice;
  /** The device's own state record check (its *-state.ts). */
  readonly recordCheck: Check;
  readonly hostRecord?: HostRecord<H>;
  /**
   * A change the VMM asks of a running device (a drive's new backing file), run on the I/O thread
   * with the plain data the VMM posted; a throw is the VMM's error (the device goes on as it was).
   */
  command?(device: VirtioDevice, command: unknown, ctx: CommandContext): void;
  /**
   * build() starts threads of its own on the I/O thread (virtio-fs's servers). A thread confined by
   * seccomp cannot start one (clone is off its list), so such a VM never gets a recycled, confined
   * I/O thread.
   */
  readonly startsThreads?: boolean;
}

/** A kind with its types erased, as the registry holds it: specs travel as the plain data open() made. */
export interface AnyDeviceKind {
  readonly name: string;
  readonly configKey: string;
  config(c: DeviceConfigs): unknown;
  readonly snapshot: DeviceKind<unknown, unknown>['snapshot'];
  open(c: unknown, ctx: OpenContext): { devices: DeviceInstance<unknown>[]; host?: unknown };
  build(spec: unknown, memory: readonly RegionDescriptor[]): VirtioDevice;
  readonly recordCheck: Check;
  readonly hostRecord?: HostRecord<unknown> | undefined;
  readonly startsThreads: boolean;
  command?(device: VirtioDevice, command: unknown, ctx: CommandContext): void;
  /** The typed kind, for host(): `devices.host(balloonKind)`. */
  readonly typed: unknown;
}

/**
 * Erases a kind's types for the registry. The one place they meet again: a spec or config handed
 * back to a kind is the one this kind's own config()/open() made (the registry routes by name).
 */
export function defineKind<C, S, H>(k: DeviceKind<C, S, H>): AnyDeviceKind {
  const hr = k.hostRecord;
  return {
    name: k.name,
    configKey: k.configKey,
    config: (c) => k.config(c),
    snapshot: {
      save: (c) => k.snapshot.save(c as C | undefined),
      check: k.snapshot.check,
      restore: (saved, ctx) => k.snapshot.restore(saved, ctx),
    },
    open: (c, ctx) => k.open(c as C, ctx),
    build: (spec, memory) => k.build(spec as S, memory),
    recordCheck: k.recordCheck,
    startsThreads: k.startsThreads === true,
    ...(k.command ? { command: k.command.bind(k) } : {}),
    hostRecord: hr && {
      key: hr.key,
      check: hr.check,
      save: (h) => hr.save(h as H),
      restore: (h, s) => hr.restore(h as H, s),
    },
    typed: k,
  };
}

/** The fd a console's output goes to (-1: discarded); a file is opened here and its close added to `store`. */
export function openOutput(out: SerialConfig, what: string, store: DisposableStore): number {
  if (out.kind === 'stdio') return 1;
  if (out.kind === 'fd') return out.fd;
  if (out.kind === 'none') return -1;
  try {
    // Non-blocking, as Firecracker opens it: a FIFO must not hang the build (nor the API) in open(2).
    const fd = openOutputFile(out.path, 'truncate');
    store.add(toDisposable(() => closeSync(fd)));
    return fd;
  } catch (e) {
    throw new ConfigError(`cannot open ${what} output file ${out.path}: ${(e as NodeJS.ErrnoException).code}`);
  }
}
