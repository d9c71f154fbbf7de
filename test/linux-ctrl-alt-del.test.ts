/**
 * Ctrl+Alt+Del reaches Debian's stock cloud kernel (kit initramfs) in the nested lane: vireo puts the
 * scancodes in its i8042's output buffer with IRQ 1 per byte (Ctrl-A d on the console, the same call as
 * the API's SendCtrlAltDel), the kernel's atkbd (built in, translated set 2 keyboard) decodes them, the
 * VT keyboard handler sees Ctrl+Alt+Del and, with the default ctrl-alt-del setting (the kit's /init is
 * a shell, which leaves it on), restarts the machine; reboot=k resets through the i8042, and vireo
 * exits with status 0. Nothing else in the session asks for a reboot.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession } from './support/lane.js';

const session = GUEST_SESSION;

test('Ctrl+Alt+Del from the console reboots Linux: vireo exits 0 through the i8042 reset', {
  timeout: 25 * 60_000,
}, async () => {
  const kit = await prepareKit();
  const steps = [
    { expect: 'vireo guest ready', timeoutMs: 180_000 },
    { expect: '# ', timeoutMs: 60_000 },
    { send: '\u0001d' },
  ];
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
        '--mem',
        '256',
      ],
      cwd: repoRoot,
      timeoutMs: 5 * 60_000,
      cpus: 1,
    });
  // The lane occasionally hangs its outer kernel and reports no status (see linux-nested): retry once.
  let r: Awaited<ReturnType<typeof runNested>> | undefined;
  for (let attempt = 1; r === undefined; attempt++) {
    try {
      r = await run();
    } catch (e) {
      if (!(e instanceof NestedError) || attempt === 2) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 2\n`);
    }
  }
  const line = r.output.split('\n').find((l) => l.startsWith('@@guest-session '));
  assert.ok(line, `no session report; nested output:\n${r.output.slice(-3000)}\nconsole:\n${r.console.slice(-2000)}`);
  const s = JSON.parse(line.slice('@@guest-session '.length)) as GuestSession;
  process.stderr.write(`linux-ctrl-alt-del: nested boot ${r.timings.bootMs} ms, marks ${JSON.stringify(s.marks)}\n`);
  const tail = `\n--- guest output ---\n${s.output.slice(-3000)}\n--- vireo stderr ---\n${s.stderr}`;
  assert.equal(s.failed, undefined, `${s.failed}${tail}`);
  assert.match(s.output, /input: AT Translated Set 2 keyboard/, `atkbd bound to vireo's i8042${tail}`);
  const prompt = s.output.lastIndexOf('# ');
  assert.match(s.output.slice(prompt), /reboot: Restarting system/, `the kernel restarts after the keys${tail}`);
  assert.equal(s.status, 0, `vireo exits 0${tail}`);
  assert.match(s.stderr, /guest requested a reset \(i8042\)/, `through the i8042's reset line${tail}`);
});
