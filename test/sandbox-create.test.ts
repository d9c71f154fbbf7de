/**
 * Sandbox.create's failure paths with real VMs on this host (vireo's sample guests: no Linux, so no
 * agent): a VM that ends while booting is a SandboxError with its console's last line; a guest whose
 * agent never answers is a SandboxError at bootTimeoutMs; both leave no VM and no files behind. And
 * what is refused before any VM is made. (Sandbox.create with the agent answering: linux-sandbox, in
 * the nested lane.)
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { VireoError } from '../src/common/errors.js';
import { SandboxError } from '../src/sandbox/errors.js';
import { Sandbox } from '../src/sandbox/sandbox.js';
import { Template } from '../src/sandbox/template.js';
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

  test('Template.build whose agent never answers: SandboxError, the directory it made removed', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'vireo-tmpl-test-'));
    try {
      const dir = join(parent, 't');
      await assert.rejects(
        Template.build({ kernel: guestPath('modes64'), cmdline: 'e', memMiB: 16, dir, bootTimeoutMs: 600 }),
        (e: unknown) => e instanceof SandboxError && /did not answer within 600 ms of boot/.test(e.message),
      );
      assert.equal(existsSync(dir), false);
      assert.deepEqual(
        readdirSync(tmpdir()).filter((n) => n.startsWith('vireo-template-')),
        [],
        'its scratch directory went too',
      );
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });
});

test('a clone whose template cannot be restored: one error, no sandbox directory left', async () => {
  const before = sandboxDirs();
  const dir = mkdtempSync(join(tmpdir(), 'vireo-tmpl-test-'));
  try {
    const manifest = {
      vireoTemplate: 1,
      createdAt: new Date().toISOString(),
      kernel: '/k',
      cmdline: 'x',
      cpus: 1,
      memMiB: 16,
      vsockCid: 3,
      state: 'state',
      memory: 'memory',
    };
    writeFileSync(join(dir, 'template.json'), JSON.stringify(manifest));
    writeFileSync(join(dir, 'state'), 'not a snapshot');
    writeFileSync(join(dir, 'memory'), Buffer.alloc(4096));
    await assert.rejects(Sandbox.create({ template: dir }), (e: unknown) => e instanceof VireoError);
    assert.deepEqual(sandboxDirs(), before);
    // A manifest naming a file outside its directory, or a newer version, is refused before anything.
    writeFileSync(join(dir, 'template.json'), JSON.stringify({ ...manifest, state: '../state' }));
    await assert.rejects(Sandbox.create({ template: dir }), /bad at \$\.state: a plain file name/);
    writeFileSync(join(dir, 'template.json'), JSON.stringify({ ...manifest, vireoTemplate: 2 }));
    await assert.rejects(Sandbox.create({ template: dir }), /manifest version 2; this vireo reads version 1/);
    await assert.rejects(
      Sandbox.create({ template: join(dir, 'none') }),
      /no template\.json — build one with vireo template build/,
    );
    assert.deepEqual(sandboxDirs(), before);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('refused before a VM is made: a template with boot options, no kernel, bad timeouts', async () => {
  const before = sandboxDirs();
  await assert.rejects(Sandbox.create({ template: 'base', kernel: 'k' }), /kernel comes from the template/);
  await assert.rejects(Sandbox.create({}), /give a template or a kernel to boot/);
  for (const bad of [-1, 1.5, Number.NaN])
    await assert.rejects(Sandbox.create({ kernel: 'k', timeoutMs: bad }), /timeoutMs .*: give whole milliseconds/);
  await assert.rejects(
    Sandbox.create({ kernel: 'k', bootTimeoutMs: 0 }),
    /bootTimeoutMs 0: give whole milliseconds above 0/,
  );
  assert.deepEqual(sandboxDirs(), before);
});
