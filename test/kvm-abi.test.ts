/**
 * Proves vireo's KVM struct layouts and ioctl numbers against the real <linux/kvm.h>:
 * a C probe prints sizeof/offsetof/ioctl values and every entry of src/kvm/abi.ts is compared.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EXIT, IOCTL, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, OFFSET, SIZE } from '../src/kvm/abi.js';

/** Flag constants checked by name. */
const FLAGS = { KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY };

import { compileAndRunC } from './support/cc.js';

/** vireo's flat offset names → C member designators. */
const RUN_MEMBERS: Record<keyof typeof OFFSET.kvm_run, string> = {
  request_interrupt_window: 'request_interrupt_window',
  immediate_exit: 'immediate_exit',
  exit_reason: 'exit_reason',
  ready_for_interrupt_injection: 'ready_for_interrupt_injection',
  if_flag: 'if_flag',
  flags: 'flags',
  cr8: 'cr8',
  apic_base: 'apic_base',
  io_direction: 'io.direction',
  io_size: 'io.size',
  io_port: 'io.port',
  io_count: 'io.count',
  io_data_offset: 'io.data_offset',
  mmio_phys_addr: 'mmio.phys_addr',
  mmio_data: 'mmio.data',
  mmio_len: 'mmio.len',
  mmio_is_write: 'mmio.is_write',
  fail_entry_hardware_entry_failure_reason: 'fail_entry.hardware_entry_failure_reason',
  fail_entry_cpu: 'fail_entry.cpu',
  internal_suberror: 'internal.suberror',
  internal_ndata: 'internal.ndata',
  internal_data: 'internal.data',
  system_event_type: 'system_event.type',
  system_event_ndata: 'system_event.ndata',
  system_event_data: 'system_event.data',
  ex_exception: 'ex.exception',
  ex_error_code: 'ex.error_code',
};

function probeSource(): string {
  const lines: string[] = [];
  const emit = (key: string, expr: string) => lines.push(`  printf("%s=%lu\\n", "${key}", (unsigned long)(${expr}));`);
  for (const name of Object.keys(SIZE)) emit(`size.${name}`, `sizeof(struct ${name})`);
  for (const name of Object.keys(IOCTL)) emit(`ioctl.${name}`, name);
  for (const name of Object.keys(EXIT)) emit(`exit.${name}`, name);
  for (const name of Object.keys(FLAGS)) emit(`flag.${name}`, name);
  for (const [struct, fields] of Object.entries(OFFSET)) {
    for (const field of Object.keys(fields)) {
      const member = struct === 'kvm_run' ? RUN_MEMBERS[field as keyof typeof RUN_MEMBERS] : field;
      emit(`offset.${struct}.${field}`, `offsetof(struct ${struct}, ${member})`);
    }
  }
  return `#include <stdio.h>\n#include <stddef.h>\n#include <linux/kvm.h>\nint main(void) {\n${lines.join('\n')}\n  return 0;\n}\n`;
}

test('struct sizes, field offsets, ioctl numbers and exit reasons match <linux/kvm.h>', () => {
  const out = compileAndRunC('kvm-abi-probe', probeSource());
  const real = new Map(
    out
      .trim()
      .split('\n')
      .map((l) => {
        const [k, v] = l.split('=');
        return [k as string, Number(v)] as const;
      }),
  );
  const ours = new Map<string, number>();
  for (const [k, v] of Object.entries(SIZE)) ours.set(`size.${k}`, v);
  for (const [k, v] of Object.entries(IOCTL)) ours.set(`ioctl.${k}`, v);
  for (const [k, v] of Object.entries(EXIT)) ours.set(`exit.${k}`, v);
  for (const [k, v] of Object.entries(FLAGS)) ours.set(`flag.${k}`, v);
  for (const [s, fields] of Object.entries(OFFSET))
    for (const [f, v] of Object.entries(fields)) ours.set(`offset.${s}.${f}`, v);
  const wrong = [...ours]
    .filter(([k, v]) => real.get(k) !== v)
    .map(([k, v]) => `${k}: vireo ${v}, header ${real.get(k)}`);
  assert.deepEqual(wrong, [], `layouts differ from the kernel header:\n${wrong.join('\n')}`);
  assert.ok(ours.size > 100, `checked ${ours.size} entries`);
});
