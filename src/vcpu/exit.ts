/**
 * How a VM ended, for people and for exit statuses: describeExit turns the first vCPU stop into a
 * status and a message (registers indented under it), and ExitReport keeps that first reason while
 * every vCPU reports its own stop (Firecracker's VcpuResponse::Exited / FcExitCode, gathered once).
 */
import { memoryFileLostMessage } from '../memory/guest-memory.js';
import type { VcpuStop } from './protocol.js';

/** How the VM ended, and the process exit status that goes with it. */
export interface VmExit {
  reason: VcpuStop;
  vcpu: number;
  status: number;
  message: string;
}

export function describeExit(reason: VcpuStop, vcpu: number): { status: number; message: string } {
  const regs = (r: Record<string, string>) =>
    `\n${Object.entries(r)
      .map(([k, v]) => `  ${k.padEnd(7)} ${v}`)
      .join('\n')}`;
  switch (reason.kind) {
    case 'debug-exit':
      return {
        status: reason.status,
        message: `guest wrote 0x${reason.value.toString(16)} to the debug-exit port: exit status ${reason.status}`,
      };
    case 'shutdown':
      return { status: 0, message: 'guest powered off' };
    case 'reset':
      return { status: 0, message: `guest requested a reset (${reason.source}); the VM ends` };
    case 'stopped':
      return { status: 0, message: 'VM stopped' };
    case 'memory-file-lost':
      return { status: 1, message: memoryFileLostMessage(reason.path) };
    case 'hlt':
      return { status: 0, message: `vCPU ${vcpu} halted (HLT exit)${regs(reason.registers)}` };
    case 'triple-fault': {
      // KVM on AMD re-initialises a vCPU after a shutdown intercept (its VMCB is undefined then):
      // what it reports is the reset state, not where the guest faulted. Say so rather than mislead.
      const r = reason.registers;
      const reset = /^0x0*fff0$/.test(r.rip ?? '') && (r.cs ?? '').includes('base=0xffff0000');
      const note = reset
        ? '\n  (these are reset values: KVM on AMD re-initialises a vCPU after a shutdown, so the state that faulted is gone)'
        : '';
      return { status: 1, message: `vCPU ${vcpu}: triple fault (KVM_EXIT_SHUTDOWN)${regs(r)}${note}` };
    }
    case 'fail-entry':
      return {
        status: 1,
        message: `vCPU ${vcpu}: KVM could not enter the guest (hardware entry failure reason ${reason.hardwareEntryFailureReason})${regs(reason.registers)}`,
      };
    case 'internal-error':
      return {
        status: 1,
        message: `vCPU ${vcpu}: KVM internal error, suberror ${reason.suberror} [${reason.data.join(' ')}]${regs(reason.registers)}`,
      };
    case 'panic':
      return { status: 1, message: 'guest kernel panicked (reported through pvpanic)' };
    case 'crash':
      return { status: 1, message: `guest crashed (system event) [${reason.data.join(' ')}]` };
    case 'error':
      return { status: 1, message: `vCPU ${vcpu}: ${reason.message}${reason.registers ? regs(reason.registers) : ''}` };
  }
}

/**
 * The first stop that decides how a VM ended. Every vCPU's stop (and the VMM's own reports: a lost
 * memory file, a thread that failed) goes through vcpuStopped(); a 'stopped' stop counts only once
 * the VMM itself asked the VM to stop (stopRequested), so a guest's own ending is never hidden by
 * the stop it causes. Listeners hear every report: the machine stops the VM on the first one.
 */
export class ExitReport {
  private first: VmExit | undefined;
  private stopAsked = false;
  private readonly listeners: ((id: number, stop: VcpuStop) => void)[] = [];
  private markRecorded!: () => void;
  /** Resolves once a reason is recorded (a pause or resume waiting on the vCPUs ends with it). */
  readonly recorded: Promise<void> = new Promise((res) => {
    this.markRecorded = res;
  });

  /** From now on a 'stopped' stop is the reason (the VMM asked for it). */
  stopRequested(): void {
    this.stopAsked = true;
  }

  vcpuStopped(id: number, stop: VcpuStop): void {
    if (this.first === undefined && (stop.kind !== 'stopped' || this.stopAsked)) {
      const d = describeExit(stop, id);
      this.first = { reason: stop, vcpu: id, status: d.status, message: d.message };
      this.markRecorded();
    }
    for (const l of this.listeners) l(id, stop);
  }

  onStop(listener: (id: number, stop: VcpuStop) => void): void {
    this.listeners.push(listener);
  }

  /** The reason recorded so far, if any. */
  get exit(): VmExit | undefined {
    return this.first;
  }

  /** The reason, once every vCPU is out: a VM that nobody and nothing ended was stopped. */
  final(): VmExit {
    this.first ??= { reason: { kind: 'stopped' }, vcpu: 0, status: 0, message: 'VM stopped' };
    this.markRecorded();
    return this.first;
  }
}
