/**
 * The vCPU thread's protocol. The worker never returns to its event loop while the guest runs,
 * so commands travel through a shared control word (Atomics), and reports travel back by
 * postMessage (which never blocks the sender).
 */
import type { VcpuDescriptor } from '../kvm/kvm.js';
import type { RegionDescriptor } from '../memory/guest-memory.js';

/** Control word slots. */
export const CTRL_CMD = 0;
export const CTRL_STATE = 1;
export const CTRL_SLOTS = 2;

export const Cmd = { WAIT: 0, RUN: 1, PAUSE: 2, STOP: 3 } as const;
export const State = { STARTING: 0, RUNNING: 1, PAUSED: 2, EXITED: 3 } as const;

/** Register values as hex strings, for reports that cross threads and end up in front of people. */
export type RegisterDump = Record<string, string>;

/** Why a vCPU stopped running. */
export type VcpuStop =
  | { kind: 'debug-exit'; status: number; value: number }
  | { kind: 'reset'; source: 'i8042' | 'acpi' | 'system-event' }
  | { kind: 'shutdown'; source: 'acpi' | 'system-event' }
  | { kind: 'triple-fault'; registers: RegisterDump }
  | { kind: 'hlt'; registers: RegisterDump }
  | { kind: 'fail-entry'; hardwareEntryFailureReason: string; registers: RegisterDump }
  | { kind: 'internal-error'; suberror: number; data: string[]; registers: RegisterDump }
  | { kind: 'crash'; data: string[] }
  | { kind: 'panic'; source: 'pvpanic' }
  | { kind: 'stopped' }
  /** Guest RAM mapped from a memory file was lost: the file was truncated while the VM ran. */
  | { kind: 'memory-file-lost'; path: string }
  | { kind: 'error'; code: string; message: string; registers?: RegisterDump };

export type VcpuStopKind = VcpuStop['kind'];

export interface VcpuWorkerInit<P> {
  vcpu: VcpuDescriptor;
  vmFd: number;
  memory: RegionDescriptor[];
  control: SharedArrayBuffer;
  platform: P;
  /** Confine the thread with the vCPU seccomp filter once it is set up (kvm/seccomp-policy.ts). */
  seccomp: boolean;
}

export type VcpuMessage =
  | { type: 'loaded' }
  | { type: 'ready'; id: number; thread: bigint }
  | { type: 'first-exit'; id: number; at: number }
  | { type: 'paused'; id: number }
  | { type: 'resumed'; id: number }
  | { type: 'stopped'; id: number; stop: VcpuStop };
