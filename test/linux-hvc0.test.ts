/**
 * virtio-console as the guest's console under a real Linux guest, booted by vireo in the nested lane:
 * the kit guest with `--virtio-console` and `console=hvc0` (the last console= is /dev/console, so the
 * kit's shell runs on hvc0). A command typed into vireo's stdin reaches the shell through hvc0, its
 * answer comes back through hvc0, and `poweroff -f` ends vireo with 0.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession } from './support/lane.js';

const session = GUEST_SESSION;

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

test('Linux on hvc0: a command typed into the virtio-console is answered there; power-off → 0', {
  timeout: 20 * 60_000,
}, async () => {
  const kit = await prepareKit();
  const steps = [
    { expect: 'vireo guest ready', timeoutMs: 180_000 },
    { expect: '# ', timeoutMs: 60_000 },
    // The shell's terminal and the kernel's active consoles, said by the guest itself; the sum proves
    // the shell ran the command rather than the terminal echoing it.
    { send: 'echo "@@hvc tty=$(tty) active=$(cat /sys/class/tty/console/active) sum=$((40+2))"\n' },
    { expect: 'sum=42', timeoutMs: 60_000 },
    { send: 'poweroff -f\n' },
  ];
  const script = [
    'export VIREO_VERBOSE=1',
    `${q(process.execPath)} ${q(session)} ${q(JSON.stringify(steps))} -- --native --kernel ${q(kit.kernel)} --initrd ${q(kit.initrd)} --mem 128 --virtio-console --append console=hvc0`,
  ].join('\n');
  let out = '';
  for (let attempt = 1; ; attempt++) {
    try {
      out = (await runNested({ command: ['/bin/sh', '-c', script], cwd: repoRoot, timeoutMs: 6 * 60_000, cpus: 1 }))
        .output;
      break;
    } catch (e) {
      // The lane itself (QEMU's emulated SVM) occasionally hangs: that is the bench, not vireo.
      if (!(e instanceof NestedError) || attempt === 3) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
    }
  }
  const line = out.split('\n').find((l) => l.startsWith('@@guest-session '));
  assert.ok(line, `no session report:\n${out.slice(-3000)}`);
  const s = JSON.parse(line.slice('@@guest-session '.length)) as GuestSession;
  const tail = `\n--- guest output ---\n${s.output.slice(-4000)}\n--- vireo stderr ---\n${s.stderr.slice(-2000)}`;
  assert.equal(s.failed, undefined, `${s.failed}${tail}`);
  const m = s.output.match(/@@hvc tty=(\S+) active=(.*?) sum=42/);
  assert.ok(m, `the answer line${tail}`);
  assert.equal(m[1], '/dev/hvc0', `the shell's terminal is hvc0${tail}`);
  assert.match(m[2] as string, /\bhvc0\b/, 'hvc0 is an active kernel console');
  assert.equal(s.status, 0, `clean power-off${tail}`);
  // vireo's side: the typed bytes went in through the virtio-console and the answer came out of it.
  const counters = s.stderr.match(/device counters (\{.*\})/)?.[1];
  assert.ok(counters, `vireo reported its device counters (VIREO_VERBOSE=1)${tail}`);
  const c = (JSON.parse(counters) as Record<string, Record<string, number>>)['virtio-console'];
  assert.ok(c, `a virtio-console among the devices: ${counters}`);
  assert.ok((c.rxBytes ?? 0) >= 40, `the typed command reached the guest through hvc0 (rxBytes ${c.rxBytes})`);
  assert.ok((c.txBytes ?? 0) >= 40, `the guest wrote to hvc0 (txBytes ${c.txBytes})`);
  assert.equal(c.malformed, 0);
  process.stderr.write(`linux-hvc0: session marks ${JSON.stringify(s.marks)}, counters ${JSON.stringify(c)}\n`);
});
