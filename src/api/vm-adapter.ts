/**
 * Vm operations the API needs that the Vm class is still growing (snapshots). Each is looked up on the Vm at run time with its expected signature,
 * so this compiles before they exist and calls them as soon as they do; until then the API answers
 * 400 saying vireo cannot do it yet. When the methods land in src/vmm/vm.ts, replace these lookups with
 * direct calls.
 */

import type { SerialConfig } from '../vmm/vm.js';
import { Vm } from '../vmm/vm.js';

export interface SnapshotCreateOptions {
  statePath: string;
  memPath: string;
  type: 'Full' | 'Diff';
}

export interface SnapshotRestoreOptions {
  statePath: string;
  memPath: string;
  resume: boolean;
  trackDirtyPages: boolean;
  kvmPath?: string;
  serial?: SerialConfig;
}

interface VmWithSnapshots {
  /** The VM must be paused. */
  snapshot(opts: SnapshotCreateOptions): Promise<void>;
}

interface VmClassWithRestore {
  restore(opts: SnapshotRestoreOptions): Promise<Vm>;
}

/** `vm.snapshot(opts)`, when this build's Vm has it. */
export function snapshotMethod(vm: Vm): ((opts: SnapshotCreateOptions) => Promise<void>) | undefined {
  const f = (vm as unknown as Partial<VmWithSnapshots>).snapshot;
  return typeof f === 'function' ? (opts) => f.call(vm, opts) : undefined;
}

/** `Vm.restore(opts)`, when this build's Vm has it. */
export function restoreMethod(): ((opts: SnapshotRestoreOptions) => Promise<Vm>) | undefined {
  const f = (Vm as unknown as Partial<VmClassWithRestore>).restore;
  return typeof f === 'function' ? (opts) => f.call(Vm, opts) : undefined;
}
