/**
 * Sandbox.create's failure paths with real VMs on this host (vireo's sample guests: no Linux, so no
 * agent): a VM that ends while booting is a SandboxError with its console's last line; a guest whose
 * agent never answers is a SandboxError at bootTimeoutMs; both leave no VM and no files behind. And
 * what is refused before any VM is made. (Sandbox.create with the agent answering: linux-sandbox, in
 * the nested lane.)
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { describe, test } from 'node:test';
import { SandboxError } from '../src/sandbox/errors.js';
import { Sandbox } from '../src/sandbox/sandbox.js';
import { guestPath } from './guests/build.js';
import { kvmSkipReason } from './support/vireo.js';

const sandboxDirs = () =>
  readdirSync(tmpdir())
    .filter((n) => n.startsWith('vireo-sandbox-'))
    .sort();

describe('Sandbox.create without an agent in the guest', { skip: kvmSkipReason() }, () => {
  test("a VM that ends while booting: one SandboxError with the console's last line, nothing left", async () => {
    const before = sandboxDirs();
    await assert.rejects(
      Sandbox.create({ kernel: guestPath('hello64'), cmdline: 'x', memMiB: 16, bootTimeoutMs: 20_000 }),
      (e: unknown) =>
        e instanceof SandboxError &&
        e.code === 'VIREO_ERR_SANDBOX' &&
        /VM ended while booting/.test(e.message) &&
        /Hello from a vireo guest/.test(e.message),
    );
    assert.deepEqual(sandboxDirs(), before);
  });

  test('a guest whose agent never answers: SandboxError at bootTimeoutMs, nothing left', async () => {
    const before = sandboxDirs();
    const t0 = performance.now();
    await assert.rejects(
      Sandbox.create({ kernel: guestPath('modes64'), cmdline: 'e', memMiB: 16, bootTimeoutMs: 600 }),
      (e: unknown) => e instanceof SandboxError && /did not answer within 600 ms of boot/.test(e.message),
    );
    const took = performance.now() - t0;
    assert.ok(took >= 550 && took < 5000, `took ${took} ms`);
    assert.deepEqual(sandboxDirs(), before);
  });
});

test('refused before a VM is made: templates (not built yet) and bad timeouts', async () => {
  const before = sandboxDirs();
  await assert.rejects(Sandbox.create({ template: 'base', kernel: 'k' }), /templates are not built yet/);
  for (const bad of [-1, 1.5, Number.NaN])
    await assert.rejects(Sandbox.create({ kernel: 'k', timeoutMs: bad }), /timeoutMs .*: give whole milliseconds/);
  await assert.rejects(
    Sandbox.create({ kernel: 'k', bootTimeoutMs: 0 }),
    /bootTimeoutMs 0: give whole milliseconds above 0/,
  );
  assert.deepEqual(sandboxDirs(), before);
});
