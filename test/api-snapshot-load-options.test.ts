/**
 * PUT /snapshot/load's options as Firecracker's clients send them (E2B's orchestrator restores each
 * sandbox with its own vsock socket and TAP): `vsock_override` gives the restored VM another vsock
 * socket, `network_overrides` naming an interface the snapshot does not have is refused in one line,
 * and `clock_realtime` either advances the guest's kvmclock (a host whose KVM records wall-clock
 * time) or is refused in one line saying why — through real vireo-firecracker processes and the
 * native echo guest.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestPath } from './guests/build.js';
import { type FirecrackerProcess, fcRequest, startFirecracker } from './support/fc-client.js';
import { kvmSkipReason } from './support/vireo.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-loadopts-'));
const procs: FirecrackerProcess[] = [];
after(() => {
  for (const p of procs) p.kill();
  rmSync(tmp, { recursive: true, force: true });
});
const f = (n: string): string => join(tmp, n);

async function api(name: string): Promise<FirecrackerProcess> {
  const socket = f(`${name}.sock`);
  const p = await startFirecracker(['--api-sock', socket], { socket });
  procs.push(p);
  return p;
}

async function ok(p: FirecrackerProcess, method: string, path: string, body?: unknown): Promise<void> {
  const r = await fcRequest(p.socket, method, path, body);
  assert.equal(r.status, 204, `${method} ${path}: ${r.text}\n${p.stderr().slice(-2000)}`);
}

async function echo(p: FirecrackerProcess, text: string): Promise<void> {
  p.type(text);
  const t0 = Date.now();
  while (!p.stdout().includes(text.toUpperCase())) {
    if (Date.now() - t0 > 15_000) assert.fail(`no echo of ${text}: ${p.stdout()}\n${p.stderr().slice(-2000)}`);
    await sleep(10);
  }
}

const fault = (text: string): string => (JSON.parse(text) as { fault_message: string }).fault_message;

describe('PUT /snapshot/load options', { skip: kvmSkipReason() }, () => {
  test('vsock_override, network_overrides and clock_realtime', async () => {
    const a = await api('a');
    await ok(a, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 32 });
    await ok(a, 'PUT', '/boot-source', { kernel_image_path: guestPath('modes64'), boot_args: 'e' });
    await ok(a, 'PUT', '/vsock', { guest_cid: 3, uds_path: f('vsock-a.sock') });
    await ok(a, 'PUT', '/actions', { action_type: 'InstanceStart' });
    const t0 = Date.now();
    while (!a.stdout().includes('echo ready')) {
      if (Date.now() - t0 > 15_000) assert.fail(`no echo guest: ${a.stderr()}`);
      await sleep(10);
    }
    await ok(a, 'PATCH', '/vm', { state: 'Paused' });
    await ok(a, 'PUT', '/snapshot/create', { snapshot_path: f('s.state'), mem_file_path: f('s.mem') });
    a.kill();
    await a.exited;
    const load = { snapshot_path: f('s.state'), mem_backend: { backend_type: 'File', backend_path: f('s.mem') } };

    // vsock_override: the restored VM's vsock device listens on the new socket.
    const b = await api('b');
    await ok(b, 'PUT', '/snapshot/load', { ...load, vsock_override: { uds_path: f('vsock-b.sock') }, resume_vm: true });
    const cfg = JSON.parse((await fcRequest(b.socket, 'GET', '/vm/config')).text) as { vsock: { uds_path: string } };
    assert.equal(cfg.vsock.uds_path, f('vsock-b.sock'));
    assert.ok(existsSync(f('vsock-b.sock')), 'the new socket is bound');
    await echo(b, 'after-override');
    b.kill();
    await b.exited;

    // network_overrides for an interface the snapshot does not have: 400, one line naming it.
    const c = await api('c');
    const r = await fcRequest(c.socket, 'PUT', '/snapshot/load', {
      ...load,
      network_overrides: [{ iface_id: 'eth9', host_dev_name: 'tap9' }],
    });
    assert.equal(r.status, 400, r.text);
    assert.match(fault(r.text), /network interface "eth9": the snapshot has no such TAP interface \(it has none\)/);
    assert.doesNotMatch(fault(r.text), /\n/);
    c.kill();
    await c.exited;

    // clock_realtime: restored with the clock advanced, or refused saying why (the host's KVM gave no wall-clock time).
    const d = await api('d');
    const rt = await fcRequest(d.socket, 'PUT', '/snapshot/load', { ...load, clock_realtime: true, resume_vm: true });
    if (rt.status === 204) await echo(d, 'after-realtime');
    else {
      assert.equal(rt.status, 400, rt.text);
      assert.match(
        fault(rt.text),
        /clock_realtime: the snapshot's clock has no wall-clock time .*restore without clock_realtime/,
      );
    }
    process.stderr.write(`snapshot load: clock_realtime here: ${rt.status === 204 ? 'restored' : fault(rt.text)}\n`);
  });
});
