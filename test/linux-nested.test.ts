/**
 * Debian's stock cloud kernel with the kit's initramfs, booted by vireo in the nested lane (an
 * emulated machine with AMD-V, where /dev/kvm is hardware-style): 1 and 2 vCPUs reach the userland
 * banner with the right CPU count, memory and date, run a command on the serial console's shell, and
 * power off cleanly (status 0).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession, laneStall, laneTripleFault } from './support/lane.js';

const session = GUEST_SESSION;

interface Session extends GuestSession {
  /** The outer machine's console (its kernel's messages), for a failure report. */
  lane?: string;
}

const SHELL_AND_POWEROFF = [
  { expect: 'vireo guest ready', timeoutMs: 180_000 },
  { expect: '# ', timeoutMs: 60_000 },
  { send: 'echo "sum=$((6*7))"; uname -r\n' },
  { expect: 'sum=42', timeoutMs: 60_000 },
  { send: 'poweroff -f\n' },
];

async function bootLinux(cpus: number, memMiB: number, steps: object[] = SHELL_AND_POWEROFF): Promise<Session> {
  const kit = await prepareKit();
  const run = () =>
    runNested({
      command: [
        process.execPath,
        session,
        JSON.stringify(steps),
        '--',
        '--native',
        '--kernel',
        kit.kernel,
        '--initrd',
        kit.initrd,
        '--cpus',
        String(cpus),
        '--mem',
        String(memMiB),
      ],
      cwd: repoRoot,
      timeoutMs: 5 * 60_000,
      // The outer machine gets as many vCPUs as the guest: a 2-vCPU guest on one outer vCPU hung the
      // outer kernel more often than on two (seen in CI runs), a 1-vCPU guest is steadier on one.
      cpus,
    });
  // The lane itself (QEMU's emulated SVM and the outer kernel's kvm-amd) occasionally hangs: the outer
  // machine stops making progress (even SIGKILL cannot take a thread out of its KVM_RUN) and never
  // reports a status. That is the test bench failing, not vireo: say so and try again, twice at most.
  // A guest that triple-faults mid-boot in a 2-CPU lane is the lane's failure too (support/lane.ts).
  for (let attempt = 1; ; attempt++) {
    let r: Awaited<ReturnType<typeof runNested>>;
    try {
      r = await run();
    } catch (e) {
      if (!(e instanceof NestedError) || attempt === 3) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
      continue;
    }
    const line = r.output.split('\n').find((l) => l.startsWith('@@guest-session '));
    assert.ok(line, `no session report; nested output:\n${r.output.slice(-3000)}\nconsole:\n${r.console.slice(-2000)}`);
    const s = JSON.parse(line.slice('@@guest-session '.length)) as Session;
    s.lane = r.console.slice(-1500);
    process.stderr.write(
      `linux ${cpus} vCPU: nested boot ${r.timings.bootMs} ms, session marks ${JSON.stringify(s.marks)}\n`,
    );
    const fault = cpus > 1 ? (laneTripleFault(s, 'vireo guest ready') ?? laneStall(s, 'vireo guest ready')) : undefined;
    if (fault && attempt < 3) {
      process.stderr.write(`linux ${cpus} vCPU: ${fault}; attempt ${attempt + 1} of 3\n`);
      continue;
    }
    return s;
  }
}

function checkSession(s: Session, cpus: number, memMiB: number): void {
  assert.equal(
    s.failed,
    undefined,
    // vireo's own account first (why it stopped), then the outer kernel's, then the guest's output.
    `${s.failed}; vireo exited with ${s.status}\n--- vireo stderr ---\n${s.stderr.slice(-3000)}\n--- outer machine console ---\n${s.lane ?? ''}\n--- guest output ---\n${s.output.slice(-4000)}`,
  );
  const banner = s.output.match(/vireo guest ready.*cpus=(\d+) mem=(\d+).*date=(\S+)/);
  assert.ok(banner, `banner with cpus/mem/date:\n${s.output.slice(-2000)}`);
  assert.equal(Number(banner[1]), cpus, 'the guest sees every vCPU');
  const memKiB = Number(banner[2]);
  assert.ok(memKiB > memMiB * 1024 * 0.7 && memKiB <= memMiB * 1024, `MemTotal ${memKiB} kB for ${memMiB} MiB`);
  const guestDate = Date.parse(banner[3] as string);
  assert.ok(Math.abs(guestDate - Date.now()) < 3 * 3600_000, `guest date ${banner[3]} is the host's`);
  assert.match(s.output, /sum=42/);
  assert.match(s.output, /\d+\.\d+\.\d+-\d+-cloud-amd64/);
  assert.equal(s.status, 0, `clean power-off ends vireo with status 0; stderr: ${s.stderr}`);
}

test('Debian cloud kernel, 1 vCPU: banner, shell command, clean power-off', { timeout: 25 * 60_000 }, async () => {
  checkSession(await bootLinux(1, 256), 1, 256);
});

test('Debian cloud kernel, 2 vCPUs (SMP through ACPI): banner, shell command, clean power-off', {
  timeout: 25 * 60_000,
}, async () => {
  checkSession(await bootLinux(2, 256), 2, 256);
});

test('reboot in the guest ends vireo with status 0; a kernel panic (panic=1) with status 1', {
  timeout: 25 * 60_000,
}, async () => {
  const reboot = await bootLinux(1, 256, [
    { expect: 'vireo guest ready', timeoutMs: 180_000 },
    { expect: '# ', timeoutMs: 60_000 },
    { send: 'reboot -f\n' },
  ]);
  assert.equal(reboot.failed, undefined, reboot.output.slice(-3000));
  assert.equal(reboot.status, 0, `reboot: ${reboot.stderr}`);
  assert.match(reboot.stderr, /guest requested a reset/);

  const panic = await bootLinux(1, 256, [
    { expect: 'vireo guest ready', timeoutMs: 180_000 },
    { expect: '# ', timeoutMs: 60_000 },
    { send: 'echo c > /proc/sysrq-trigger\n' },
  ]);
  assert.equal(panic.failed, undefined, panic.output.slice(-3000));
  assert.match(panic.output, /Kernel panic/);
  assert.equal(panic.status, 1, `panic: ${panic.stderr}\n${panic.output.slice(-2000)}`);
  assert.match(panic.stderr, /guest kernel panicked \(reported through pvpanic\)/);
});
