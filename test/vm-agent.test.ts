/**
 * `vm.agent`: the agent client of a real Vm, reaching vireo's own hybrid vsock socket. The sample guest
 * has no vsock driver, so vireo's muxer refuses the CONNECT line — the client says so in one line
 * (and waitReady gives up at its deadline); a Vm without vsock refuses `vm.agent` itself.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { AgentError } from '../src/agent/errors.js';
import type { VireoError } from '../src/common/errors.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { kvmSkipReason } from './support/vireo.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-vm-agent-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('vm.agent', { skip: kvmSkipReason() }, () => {
  test("goes through the VM's vsock socket; a guest with no listener is refused, clearly", async () => {
    const udsPath = join(dir, 'v.sock');
    const vm = await Vm.create({
      kernel: guestPath('modes64'),
      cmdline: 'e',
      memMiB: 16,
      serial: { kind: 'none' },
      vsock: { cid: 3, udsPath },
    });
    try {
      vm.start();
      const a = vm.agent;
      assert.equal(vm.agent, a, 'one client per VM');
      assert.match(a.endpoint.describe, new RegExp(`vsock port 49983 through ${udsPath}`));
      await assert.rejects(
        a.health({ timeoutMs: 3000 }),
        (e: unknown) =>
          e instanceof AgentError && e.code === 'VIREO_ERR_AGENT' && /refused the connection/.test(e.message),
      );
      const t0 = performance.now();
      await assert.rejects(
        a.waitReady({ timeoutMs: 300, intervalMs: 20 }),
        (e: unknown) => e instanceof AgentError && e.code === 'VIREO_ERR_AGENT_TIMEOUT',
      );
      assert.ok(performance.now() - t0 < 2000);
    } finally {
      await vm.stop();
    }
  });

  test('a VM without vsock has no agent to reach', async () => {
    const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'e', memMiB: 16, serial: { kind: 'none' } });
    try {
      assert.throws(
        () => vm.agent,
        (e: VireoError) => e.code === 'VIREO_ERR_STATE' && /no vsock device/.test(e.message),
      );
    } finally {
      await vm.stop();
    }
  });
});
