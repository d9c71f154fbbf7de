/**
 * One vCPU's KVM_RUN loop, run on its own thread. The hot path (port and MMIO exits) reads the
 * kvm_run page directly and dispatches to the buses without allocating; every other exit is
 * decoded into a VcpuExit and either handled or turned into a VcpuStop.
 */

import type { Bus } from '../bus/bus.js';
import { VireoError } from '../common/errors.js';
import { EXIT, IOCTL, KVM_EXIT_IO_OUT, OFFSET } from '../kvm/abi.js';
import type { Vcpu } from '../kvm/kvm.js';
import { lostBackingFile, type RegionDescriptor } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { Cmd, CTRL_CMD, CTRL_STATE, type RegisterDump, State, type VcpuStop } from './protocol.js';

const R = OFFSET.kvm_run;

export interface RunLoopHooks {
  /** A device asked to end the VM (debug exit, reset). Checked after every exit. */
  pendingStop: () => VcpuStop | undefined;
  /** Count an exit by kind (metrics). */
  countExit?: (reason: number) => void;
  /** Called once, after the first exit (boot timing: a guest whose first instruction exits). */
  onFirstExit?: () => void;
  onPaused?: () => void;
  onResumed?: () => void;
}

export function dumpRegisters(vcpu: Vcpu): RegisterDump {
  const out: RegisterDump = {};
  try {
    const r = vcpu.getRegs();
    for (const [k, v] of Object.entries(r)) out[k] = `0x${v.toString(16).padStart(16, '0')}`;
    const s = vcpu.getSregs();
    for (const k of ['cr0', 'cr2', 'cr3', 'cr4', 'efer'] as const) out[k] = `0x${s[k].toString(16)}`;
    for (const k of ['cs', 'ds', 'ss'] as const)
      out[k] =
        `sel=0x${s[k].selector.toString(16)} base=0x${s[k].base.toString(16)} dpl=${s[k].dpl} l=${s[k].l} db=${s[k].db}`;
    out.gdt = `0x${s.gdt.base.toString(16)}/${s.gdt.limit}`;
    out.idt = `0x${s.idt.base.toString(16)}/${s.idt.limit}`;
  } catch (e) {
    out.error = e instanceof Error ? e.message : String(e);
  }
  return out;
}

/**
 * Run until the guest or a command stops this vCPU. `control` is the shared control word.
 * Returns why it stopped; never throws for guest behaviour.
 */
export function runLoop(vcpu: Vcpu, pio: Bus, mmio: Bus, control: Int32Array, hooks: RunLoopHooks): VcpuStop {
  const fd = vcpu.fd;
  const run = vcpu.run;
  const bytes = run.bytes;
  const dv = run.dv;
  const ioctl = sys.ioctlHot;
  const KVM_RUN = IOCTL.KVM_RUN;
  const countExit = hooks.countExit;
  let firstExit = true;
  let ioOff = -1;
  let ioSize = 0;
  let ioData = bytes.subarray(0, 0);
  Atomics.store(control, CTRL_STATE, State.RUNNING);

  for (;;) {
    const cmd = Atomics.load(control, CTRL_CMD);
    if (cmd !== Cmd.RUN) {
      run.immediateExit = false;
      if (cmd === Cmd.STOP) return { kind: 'stopped' };
      if (cmd === Cmd.PAUSE) {
        Atomics.store(control, CTRL_STATE, State.PAUSED);
        hooks.onPaused?.();
        while (Atomics.load(control, CTRL_CMD) === Cmd.PAUSE) Atomics.wait(control, CTRL_CMD, Cmd.PAUSE);
        Atomics.store(control, CTRL_STATE, State.RUNNING);
        if (Atomics.load(control, CTRL_CMD) === Cmd.RUN) hooks.onResumed?.();
        continue;
      }
      // WAIT: not started yet.
      Atomics.wait(control, CTRL_CMD, cmd);
      continue;
    }

    const r = ioctl(fd, KVM_RUN, 0);
    if (r < 0) {
      const e = sys.errno();
      if (e === sys.EINTR || e === sys.EAGAIN) {
        run.immediateExit = false;
        continue;
      }
      return {
        kind: 'error',
        code: 'VIREO_ERR_VCPU',
        message: `KVM_RUN failed with errno ${e}`,
        registers: dumpRegisters(vcpu),
      };
    }

    const reason = dv.getUint32(R.exit_reason, true);
    countExit?.(reason);
    if (firstExit) {
      firstExit = false;
      hooks.onFirstExit?.();
    }
    try {
      if (reason === EXIT.KVM_EXIT_IO) {
        const size = bytes[R.io_size] as number;
        const port = dv.getUint16(R.io_port, true);
        const count = dv.getUint32(R.io_count, true);
        // data_offset is a u64 but always within the kvm_run mapping: read it without a BigInt.
        let off = dv.getUint32(R.io_data_offset, true) + dv.getUint32(R.io_data_offset + 4, true) * 0x1_0000_0000;
        if (off + size * count > bytes.length) {
          return { kind: 'error', code: 'VIREO_ERR_VCPU', message: 'KVM reported port I/O data outside kvm_run' };
        }
        const out = bytes[R.io_direction] === KVM_EXIT_IO_OUT;
        for (let i = 0; i < count; i++, off += size) {
          // The data window is almost always the same: reuse its view instead of allocating one per exit.
          if (off !== ioOff || size !== ioSize) {
            ioOff = off;
            ioSize = size;
            ioData = bytes.subarray(off, off + size);
          }
          if (out) pio.write(port, ioData);
          else pio.read(port, ioData);
        }
      } else if (reason === EXIT.KVM_EXIT_MMIO) {
        const addr = dv.getUint32(R.mmio_phys_addr, true) + dv.getUint32(R.mmio_phys_addr + 4, true) * 0x1_0000_0000;
        const len = Math.min(dv.getUint32(R.mmio_len, true), 8);
        const data = bytes.subarray(R.mmio_data, R.mmio_data + len);
        if (bytes[R.mmio_is_write]) mmio.write(addr, data);
        else mmio.read(addr, data);
      } else {
        const stop = handleOtherExit(vcpu);
        if (stop) return stop;
      }
    } catch (e) {
      const code = e instanceof VireoError ? e.code : 'VIREO_ERR_VCPU';
      return {
        kind: 'error',
        code,
        message: e instanceof Error ? e.message : String(e),
        registers: dumpRegisters(vcpu),
      };
    }
    const pending = hooks.pendingStop();
    if (pending) return pending;
  }
}

function handleOtherExit(vcpu: Vcpu): VcpuStop | undefined {
  const exit = vcpu.run.decode();
  switch (exit.kind) {
    case 'hlt':
      return { kind: 'hlt', registers: dumpRegisters(vcpu) };
    case 'shutdown':
      return { kind: 'triple-fault', registers: dumpRegisters(vcpu) };
    case 'fail-entry':
      return {
        kind: 'fail-entry',
        hardwareEntryFailureReason: `0x${exit.hardwareEntryFailureReason.toString(16)}`,
        registers: dumpRegisters(vcpu),
      };
    case 'internal-error':
      return {
        kind: 'internal-error',
        suberror: exit.suberror,
        data: exit.data.map((d) => `0x${d.toString(16)}`),
        registers: dumpRegisters(vcpu),
      };
    case 'system-event':
      if (exit.event === 'shutdown') return { kind: 'shutdown', source: 'system-event' };
      if (exit.event === 'reset') return { kind: 'reset', source: 'system-event' };
      return { kind: 'crash', data: exit.data.map((d) => `0x${d.toString(16)}`) };
    case 'interrupted':
    case 'irq-window-open':
      return undefined;
    case 'exception':
      return {
        kind: 'error',
        code: 'VIREO_ERR_VCPU',
        message: `unexpected exception exit: vector ${exit.exception}, error code ${exit.errorCode}`,
        registers: dumpRegisters(vcpu),
      };
    case 'io':
    case 'mmio':
      return undefined;
    case 'unknown':
      return {
        kind: 'error',
        code: 'VIREO_ERR_VCPU',
        message: `unhandled KVM exit reason ${exit.reason}`,
        registers: dumpRegisters(vcpu),
      };
  }
}

/**
 * What a failure of a restored VM's vCPU means when its memory file was truncated while it ran: the
 * guest met a page that is gone. KVM_RUN then fails with EFAULT (or, where KVM emulates the access,
 * the guest takes a fault it cannot handle: a triple fault); either way the raw report would hide the
 * cause. Other stops are returned as they are.
 */
export function explainStop(stop: VcpuStop, memory: readonly RegionDescriptor[]): VcpuStop {
  const failed =
    stop.kind === 'error' ||
    stop.kind === 'triple-fault' ||
    stop.kind === 'internal-error' ||
    stop.kind === 'fail-entry';
  if (!failed) return stop;
  const path = lostBackingFile(memory);
  return path === undefined ? stop : { kind: 'memory-file-lost', path };
}
