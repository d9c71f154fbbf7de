/** KVM_RUN's outcome as a discriminated union, decoded from the shared kvm_run page. */
import { EXIT, KVM_EXIT_IO_OUT, OFFSET, SYSTEM_EVENT } from './abi.js';

const R = OFFSET.kvm_run;

export type VcpuExit =
  | { kind: 'io'; direction: 'in' | 'out'; port: number; size: 1 | 2 | 4; count: number; dataOffset: number }
  | { kind: 'mmio'; isWrite: boolean; addr: number; len: number }
  | { kind: 'hlt' }
  | { kind: 'shutdown' }
  | { kind: 'fail-entry'; hardwareEntryFailureReason: bigint; cpu: number }
  | { kind: 'internal-error'; suberror: number; data: bigint[] }
  | { kind: 'system-event'; event: 'shutdown' | 'reset' | 'crash' | 'other'; type: number; data: bigint[] }
  | { kind: 'exception'; exception: number; errorCode: number }
  | { kind: 'irq-window-open' }
  | { kind: 'interrupted' }
  | { kind: 'unknown'; reason: number };

export type VcpuExitKind = VcpuExit['kind'];

/** A typed window onto one vCPU's mmap'd kvm_run structure. */
export class KvmRun {
  readonly bytes: Uint8Array;
  readonly dv: DataView;
  constructor(buffer: ArrayBuffer) {
    this.bytes = new Uint8Array(buffer);
    this.dv = new DataView(buffer);
  }

  get exitReason(): number {
    return this.dv.getUint32(R.exit_reason, true);
  }

  set immediateExit(v: boolean) {
    this.bytes[R.immediate_exit] = v ? 1 : 0;
  }

  get immediateExit(): boolean {
    return this.bytes[R.immediate_exit] !== 0;
  }

  /** Decode the current exit. */
  decode(): VcpuExit {
    const dv = this.dv;
    const reason = this.exitReason;
    switch (reason) {
      case EXIT.KVM_EXIT_IO:
        return {
          kind: 'io',
          direction: dv.getUint8(R.io_direction) === KVM_EXIT_IO_OUT ? 'out' : 'in',
          size: dv.getUint8(R.io_size) as 1 | 2 | 4,
          port: dv.getUint16(R.io_port, true),
          count: dv.getUint32(R.io_count, true),
          dataOffset: Number(dv.getBigUint64(R.io_data_offset, true)),
        };
      case EXIT.KVM_EXIT_MMIO:
        return {
          kind: 'mmio',
          addr: Number(dv.getBigUint64(R.mmio_phys_addr, true)),
          len: dv.getUint32(R.mmio_len, true),
          isWrite: dv.getUint8(R.mmio_is_write) !== 0,
        };
      case EXIT.KVM_EXIT_HLT:
        return { kind: 'hlt' };
      case EXIT.KVM_EXIT_SHUTDOWN:
        return { kind: 'shutdown' };
      case EXIT.KVM_EXIT_FAIL_ENTRY:
        return {
          kind: 'fail-entry',
          hardwareEntryFailureReason: dv.getBigUint64(R.fail_entry_hardware_entry_failure_reason, true),
          cpu: dv.getUint32(R.fail_entry_cpu, true),
        };
      case EXIT.KVM_EXIT_INTERNAL_ERROR: {
        const n = Math.min(dv.getUint32(R.internal_ndata, true), 16);
        const data: bigint[] = [];
        for (let i = 0; i < n; i++) data.push(dv.getBigUint64(R.internal_data + i * 8, true));
        return { kind: 'internal-error', suberror: dv.getUint32(R.internal_suberror, true), data };
      }
      case EXIT.KVM_EXIT_SYSTEM_EVENT: {
        const type = dv.getUint32(R.system_event_type, true);
        const n = Math.min(dv.getUint32(R.system_event_ndata, true), 16);
        const data: bigint[] = [];
        for (let i = 0; i < n; i++) data.push(dv.getBigUint64(R.system_event_data + i * 8, true));
        const event =
          type === SYSTEM_EVENT.SHUTDOWN
            ? 'shutdown'
            : type === SYSTEM_EVENT.RESET
              ? 'reset'
              : type === SYSTEM_EVENT.CRASH
                ? 'crash'
                : 'other';
        return { kind: 'system-event', event, type, data };
      }
      case EXIT.KVM_EXIT_EXCEPTION:
        return {
          kind: 'exception',
          exception: dv.getUint32(R.ex_exception, true),
          errorCode: dv.getUint32(R.ex_error_code, true),
        };
      case EXIT.KVM_EXIT_IRQ_WINDOW_OPEN:
        return { kind: 'irq-window-open' };
      case EXIT.KVM_EXIT_INTR:
        return { kind: 'interrupted' };
      default:
        return { kind: 'unknown', reason };
    }
  }

  /** The bytes of the MMIO data field (8 bytes). */
  mmioData(): Uint8Array {
    return this.bytes.subarray(R.mmio_data, R.mmio_data + 8);
  }
}
