/**
 * The nested lane (QEMU TCG with AMD SVM, see docs/kvm-here.md): a standard /dev/kvm inside, where
 * `vireo host` sees AMD-V, and where QEMU as a stand-in hypervisor boots the guest kit to its banner
 * (which checks the kit independently of vireo's Linux loader).
 *
 * Needs qemu-system-x86 (apt-get install qemu-system-x86) and, the first time, the Debian mirror;
 * it fails, not skips, without them. Each run boots a TCG machine (~7 s) before the command.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { KIT_BANNER, prepareKit } from '../src/kit/kit.js';
import { kitQemuCommand, type NestedResult, runNested } from '../src/kit/nested.js';
import { repoRoot } from './support/cc.js';

const TIMEOUT = 300_000;

function report(what: string, r: NestedResult): void {
  process.stderr.write(
    `# ${what}: outer boot ${r.timings.bootMs} ms, command ${r.timings.commandMs} ms, total ${r.timings.totalMs} ms\n`,
  );
}

describe('nested lane', { timeout: TIMEOUT + 60_000 }, () => {
  test("the command's exit status and output come back exactly", async () => {
    const r = await runNested({
      command: ['sh', '-c', 'printf "out\\nno newline"; echo " err" >&2; pwd; exit 7'],
      cwd: '/usr',
      timeoutMs: TIMEOUT,
    });
    report('sh', r);
    assert.equal(r.status, 7, r.console);
    assert.equal(r.output, 'out\nno newline err\n/usr\n');
    assert.match(r.console, /@@vireo-nested-status=7@@/);
  });

  test('vireo host --json inside reports AMD-V (svm) and usable', async () => {
    const r = await runNested({
      command: [process.execPath, join(repoRoot, 'bin', 'vireo.js'), 'host', '--json'],
      cwd: repoRoot,
      timeoutMs: TIMEOUT,
    });
    report('vireo host', r);
    assert.equal(r.status, 0, `${r.output}\n${r.console}`);
    const host = JSON.parse(r.output) as {
      flavour: string;
      usable: boolean;
      apiVersion: number;
      bootsStockLinux: boolean;
    };
    assert.equal(host.flavour, 'svm');
    assert.equal(host.usable, true);
    assert.equal(host.apiVersion, 12);
    assert.equal(host.bootsStockLinux, true);
  });

  test('QEMU -M microvm -enable-kvm inside boots the guest kit to its banner (1 vCPU, 256 MiB)', async () => {
    const kit = await prepareKit();
    const r = await runNested({ command: kitQemuCommand(kit, { memMiB: 256, cpus: 1 }), timeoutMs: TIMEOUT });
    report('kit under QEMU/KVM', r);
    assert.equal(r.status, 0, `${r.output}\n${r.console}`);
    const banner = r.output.split('\n').find((l) => l.startsWith(`${KIT_BANNER}:`));
    assert.ok(banner, `no banner in:\n${r.output}`);
    process.stderr.write(`# ${banner}\n`);
    const field = (k: string): string | undefined => banner.match(new RegExp(`\\b${k}=(\\S+)`))?.[1];
    assert.equal(field('kernel'), kit.kernelVersion);
    assert.equal(field('cpus'), '1');
    const memKb = Number(field('mem')?.replace(/kB$/, ''));
    assert.ok(memKb > 200 * 1024 && memKb < 256 * 1024, `MemTotal ${memKb} kB for a 256 MiB guest`);
    assert.equal(field('modules'), `${kit.modules.length}/${kit.modules.length}`);
    assert.match(field('date') ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });
});
