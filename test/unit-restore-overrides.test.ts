/**
 * Restore overrides (a clone's own vsock socket and disk in place of the snapshot's host paths):
 * applied to the configuration a snapshot rebuilds, each checked against what the snapshot has.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmConfig } from '../src/config/index.js';
import { applyRestoreOverrides } from '../src/vmm/persist.js';

const saved: VmConfig = {
  kernel: '',
  memMiB: 256,
  cpus: 1,
  vsock: { cid: 3, udsPath: '/tmpl/vsock' },
  drives: [
    { id: 'rootfs', path: '/tmpl/rootfs.img' },
    { id: 'data', path: '/tmpl/data.img', readOnly: true },
  ],
};

test('overrides replace the vsock socket and a drive, leaving the rest as saved', () => {
  const c = applyRestoreOverrides(saved, {
    vsockUdsPath: '/clone/vsock',
    drives: { rootfs: { path: '/clone/rootfs.qcow2', format: 'qcow2' } },
  });
  assert.deepEqual(c.vsock, { cid: 3, udsPath: '/clone/vsock' });
  assert.deepEqual(c.drives, [
    { id: 'rootfs', path: '/clone/rootfs.qcow2', format: 'qcow2' },
    { id: 'data', path: '/tmpl/data.img', readOnly: true },
  ]);
  assert.equal(saved.vsock?.udsPath, '/tmpl/vsock', 'the saved configuration is not changed');
  assert.equal(applyRestoreOverrides(saved, undefined), saved);
});

test('overrides naming what the snapshot lacks, or bad paths, are refused with one line', () => {
  assert.throws(
    () => applyRestoreOverrides({ ...saved, vsock: undefined }, { vsockUdsPath: '/x' }),
    /vsockUdsPath: the snapshot has no vsock device/,
  );
  assert.throws(
    () => applyRestoreOverrides(saved, { drives: { nope: { path: '/x' } } }),
    /drive "nope": the snapshot has no such drive \(it has "rootfs", "data"\)/,
  );
  for (const bad of ['', 'a\0b', 'x'.repeat(5000)])
    assert.throws(() => applyRestoreOverrides(saved, { vsockUdsPath: bad }), /give a non-empty path/);
  assert.throws(
    () => applyRestoreOverrides(saved, { drives: { rootfs: { path: '/x', format: 'vmdk' as 'raw' } } }),
    /format must be raw or qcow2/,
  );
});

test("network overrides (Firecracker's network_overrides) give a TAP interface another TAP; a user network or a missing id is refused", () => {
  const withNets: VmConfig = {
    ...saved,
    nets: [
      { id: 'eth0', tap: 'tap-tmpl', mac: [2, 0, 0, 0, 0, 1] },
      { id: 'u0', kind: 'user' },
    ],
  };
  const c = applyRestoreOverrides(withNets, { nets: { eth0: { tap: 'tap-clone7' } } });
  assert.deepEqual(c.nets, [
    { id: 'eth0', tap: 'tap-clone7', mac: [2, 0, 0, 0, 0, 1] },
    { id: 'u0', kind: 'user' },
  ]);
  assert.throws(
    () => applyRestoreOverrides(withNets, { nets: { u0: { tap: 't' } } }),
    /network interface "u0": the snapshot has no such TAP interface \(it has "eth0"\)/,
  );
  assert.throws(() => applyRestoreOverrides(withNets, { nets: { eth0: { tap: '' } } }), /give a TAP name/);
});
