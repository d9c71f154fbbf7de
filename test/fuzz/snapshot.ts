/**
 * The snapshot state decoder: src/snapshot/format.ts (magic, version, length, SHA-256, JSON) and the
 * whole-body validation of src/snapshot/body-schema.ts that a restore runs before it reads any field.
 * The base is a body the validator accepts, built here field by field as vireo writes one (a VM of one
 * vCPU with the irqchip, an rng and a drive); a case edits it at any place (json-mutate.ts), re-signs
 * it with the format's own encoder (the checksum is no signature: anyone can), sometimes bends the
 * file's header or body bytes too, and decodes and validates it from a file. A SnapshotError (any
 * VireoError) is a refusal; anything else is a crash.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { SIZE } from '../../src/kvm/abi.js';
import { validateBody } from '../../src/snapshot/body-schema.js';
import { decodeStateFile, encodeStateFile } from '../../src/snapshot/format.js';
import { guarded, target, type Verdict } from './harness.js';
import { applyEdits, editArb, type Json } from './json-mutate.js';

const zeros = (n: number): string => Buffer.alloc(n).toString('base64');
const MEM = 16 * 1024 * 1024;

/** A body as Vm.snapshot writes it for a 16 MiB, one-vCPU VM (sizes from src/kvm/abi.ts). */
export function baseBody(): Json {
  const position = { nextAvail: 3, nextUsed: 3, signalledUsed: 3, inFlight: 0 };
  return {
    vireo: '0.1.0',
    createdAt: '2026-12-02T00:00:00.000Z',
    config: {
      memMiB: 16,
      cpus: 1,
      irqchip: true,
      drives: [{ id: 'rootfs', path: '/tmp/disk.img', readOnly: true }],
      nets: [],
      rng: true,
      virtioConsole: false,
    },
    memory: { size: MEM, regions: [{ gpa: 0, size: MEM, offset: 0 }], id: 'm1', type: 'Full' },
    vcpus: [
      {
        cpuid: [{ function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69 }],
        regs: zeros(SIZE.kvm_regs),
        sregs: zeros(SIZE.kvm_sregs),
        xsave: zeros(SIZE.kvm_xsave),
        xcrs: zeros(SIZE.kvm_xcrs),
        lapic: zeros(SIZE.kvm_lapic_state),
        vcpu_events: zeros(SIZE.kvm_vcpu_events),
        mp_state: zeros(SIZE.kvm_mp_state),
        msrs: [[0x10, '12345']],
      },
    ],
    vm: {
      irqchip: [zeros(SIZE.kvm_irqchip), zeros(SIZE.kvm_irqchip), zeros(SIZE.kvm_irqchip)],
      pit2: zeros(SIZE.kvm_pit_state2),
      clock: zeros(SIZE.kvm_clock_data),
    },
    devices: {
      serial: zeros(64),
      postCode: zeros(64),
      cmos: zeros(64),
      virtio: ['block', 'rng'].map((name) => ({
        name,
        mmio: zeros(64),
        side: { activeGen: 1, resetGen: 1, configWrites: 0, active: true, broken: false, positions: [position] },
      })),
    },
  };
}

/** Values a body may carry where vireo wrote something else. */
const values: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(
    null,
    true,
    0,
    -1,
    1.5,
    2 ** 31,
    2 ** 32,
    2 ** 53,
    1e308,
    '',
    'zz',
    '====',
    'AAAA',
    '18446744073709551616',
    '-1',
    'Full',
    'Diff',
    [],
    {},
    [[[[[[[[]]]]]]]],
  ),
  fc.integer(),
  fc.string({ maxLength: 8 }),
  fc.base64String({ maxLength: 24 }),
);

interface SnapCase {
  edits: Parameters<typeof applyEdits>[1];
  /** After signing: header or body bytes replaced (the checksum then fails, or the header lies). */
  bytes: { at: number; value: number }[];
}

export const snapshotTarget = target('snapshot-state', 10_000, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vireo-fuzz-snap-'));
  const path = join(dir, 'case.state');
  const base = baseBody();
  // The base must be accepted, or every case would stop at the first field and test nothing.
  validateBody(structuredClone(base), 'base');
  return {
    arbitrary: fc.record({
      edits: fc.array(editArb(values), { maxLength: 4 }),
      bytes: fc.oneof(
        { weight: 6, arbitrary: fc.constant<{ at: number; value: number }[]>([]) },
        { weight: 1, arbitrary: fc.array(fc.record({ at: fc.nat(40), value: fc.nat(255) }), { maxLength: 3 }) },
      ),
    }),
    close: () => rmSync(dir, { recursive: true, force: true }),
    run(c: SnapCase): Verdict {
      const file = Buffer.concat(encodeStateFile(applyEdits(base, c.edits)));
      for (const b of c.bytes) file[b.at % file.length] = b.value;
      writeFileSync(path, file);
      return guarded(() => {
        validateBody(decodeStateFile(path), path);
        return undefined;
      });
    },
  };
});
