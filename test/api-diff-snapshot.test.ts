/**
 * Firecracker's diff snapshots through the API (controller without a socket): machine-config
 * track_dirty_pages, PUT /snapshot/create with snapshot_type Diff after a Full one, the diff merged
 * onto the base, PUT /snapshot/load of the diff's state on the merged memory in a second controller:
 * the echo guest answers. Without tracking, Diff is refused with 400 (Firecracker's message).
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { VmController } from '../src/api/controller.js';
import { ApiServer } from '../src/api/server.js';
import { mergeMemoryFiles } from '../src/snapshot/merge.js';
import type { SerialConfig, Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const dir = mkdtempSync(join(tmpdir(), 'vireo-api-diff-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const f = (name: string): string => join(dir, name);

async function until(cond: () => boolean, what: string): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > 10_000) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

function controller(serial: SerialConfig): { api: ApiServer; ctl: VmController; vm: () => Vm | undefined } {
  let vm: Vm | undefined;
  const ctl = new VmController({ serial });
  ctl.on('started', (v) => {
    vm = v;
  });
  return { api: new ApiServer(ctl), ctl, vm: () => vm };
}

test('snapshot_type Diff with track_dirty_pages: create, merge, load, go on', { skip }, async () => {
  const serialA = f('a.log');
  const a = controller({ kind: 'file', path: serialA });
  const put = async (
    api: ApiServer,
    path: string,
    body: object,
    method = 'PUT',
  ): Promise<{ status: number; body: string }> => api.dispatch(method, path, JSON.stringify(body));
  const ok = async (api: ApiServer, path: string, body: object, method = 'PUT'): Promise<void> => {
    const r = await put(api, path, body, method);
    assert.equal(r.status, 204, `${method} ${path}: ${r.body}`);
  };
  await ok(a.api, '/machine-config', { vcpu_count: 1, mem_size_mib: 32, track_dirty_pages: true });
  await ok(a.api, '/boot-source', { kernel_image_path: guestPath('modes64'), boot_args: 'e' });
  await ok(a.api, '/actions', { action_type: 'InstanceStart' });
  await until(() => readFileSync(serialA, 'latin1').includes('echo ready'), 'the echo guest');
  await ok(a.api, '/vm', { state: 'Paused' }, 'PATCH');
  await ok(a.api, '/snapshot/create', { snapshot_path: f('full.state'), mem_file_path: f('full.mem') });
  await ok(a.api, '/vm', { state: 'Resumed' }, 'PATCH');
  const vm = a.vm();
  vm?.sendSerialInput(Buffer.from('ab'));
  await until(() => readFileSync(serialA, 'latin1').includes('AB'), 'the echo');
  await ok(a.api, '/vm', { state: 'Paused' }, 'PATCH');
  await ok(a.api, '/snapshot/create', {
    snapshot_path: f('diff.state'),
    mem_file_path: f('diff.mem'),
    snapshot_type: 'Diff',
  });
  await a.ctl.shutdown();
  assert.ok(statSync(f('diff.mem')).blocks < statSync(f('full.mem')).blocks, 'the diff is smaller');

  // Loading the bare diff is refused with what to do; merged onto the full one it loads.
  const b = controller({ kind: 'file', path: f('b.log') });
  const load = { snapshot_path: f('diff.state'), mem_backend: { backend_type: 'File', backend_path: f('diff.mem') } };
  const bare = await put(b.api, '/snapshot/load', load);
  assert.equal(bare.status, 400);
  assert.match(JSON.parse(bare.body).fault_message, /is a diff .*merge it onto its base first/);
  await b.ctl.shutdown();
  copyFileSync(f('full.mem'), f('merged.mem'));
  mergeMemoryFiles(f('merged.mem'), f('diff.mem'));
  const serialC = f('c.log');
  const c = controller({ kind: 'file', path: serialC });
  await ok(c.api, '/snapshot/load', {
    ...load,
    mem_backend: { backend_type: 'File', backend_path: f('merged.mem') },
    resume_vm: true,
  });
  c.vm()?.sendSerialInput(Buffer.from('xy'));
  await until(() => readFileSync(serialC, 'latin1').includes('XY'), 'the restored guest to echo');
  await c.ctl.shutdown();
});

test('Diff without track_dirty_pages is a 400, as in Firecracker', { skip }, async () => {
  const a = controller({ kind: 'none' });
  const call = (path: string, body: object, method = 'PUT') => a.api.dispatch(method, path, JSON.stringify(body));
  assert.equal((await call('/boot-source', { kernel_image_path: guestPath('modes64'), boot_args: 'e' })).status, 204);
  assert.equal((await call('/actions', { action_type: 'InstanceStart' })).status, 204);
  assert.equal((await call('/vm', { state: 'Paused' }, 'PATCH')).status, 204);
  const r = await call('/snapshot/create', {
    snapshot_path: f('x.state'),
    mem_file_path: f('x.mem'),
    snapshot_type: 'Diff',
  });
  assert.equal(r.status, 400);
  assert.match(JSON.parse(r.body).fault_message, /dirty page tracking disabled/);
  await a.ctl.shutdown();
});
