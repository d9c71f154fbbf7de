/**
 * The Debian root file system image: prepareRootfs end to end (debootstrap from the Debian mirror
 * the first time, the cache afterwards), the image checked with e2fsck and read with debugfs, and a
 * real boot of it under QEMU (TCG, `-M pc`, a virtio-blk disk, the kit's kernel and initramfs,
 * `root=/dev/vda`) to systemd's multi-user target, the autologin shell and a clean power-off. The kit's
 * /init falling back to its shell when the root device never appears is checked the same way.
 *
 * Needs root, apt (debootstrap and e2fsprogs are installed on demand), the Debian mirror the first time
 * and qemu-system-x86 (apt-get install qemu-system-x86); it fails, not skips, without them.
 * The cached image is never written: QEMU opens it with snapshot=on.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AGENT_GUEST_PATH, AGENT_UNIT, AGENT_VSOCK_PORT } from '../src/kit/agent.js';
import { KIT_BANNER, KIT_ROOT_FAILED, KIT_ROOT_SWITCH } from '../src/kit/kit.js';
import {
  prepareRootfs,
  ROOTFS_DEFAULT_MIB,
  ROOTFS_HOSTNAME,
  ROOTFS_LABEL,
  ROOTFS_MARKER,
  type Rootfs,
} from '../src/kit/rootfs.js';

const QEMU = 'qemu-system-x86_64';
const tmp = mkdtempSync(join(tmpdir(), 'vireo-rootfs-test-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const PROMPT = `root@${ROOTFS_HOSTNAME}:~# `;

function tool(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  if (r.error) assert.fail(`${cmd} cannot run (${r.error.message}): apt-get install e2fsprogs qemu-system-x86`);
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} failed:\n${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** A file inside the image, read with debugfs (nothing is mounted). */
const readInImage = (image: string, path: string): string => tool('debugfs', ['-R', `cat ${path}`, image]);
const statInImage = (image: string, path: string): string => tool('debugfs', ['-R', `stat ${path}`, image]);

type Step = { expect: string; timeoutMs: number } | { send: string };

interface Boot {
  status: number | null;
  failed?: string;
  /** ms from QEMU's start to each expected text. */
  marks: Record<string, number>;
  output: string;
}

/**
 * Boots the kit kernel with the image as a virtio-blk disk under QEMU TCG, its serial console on
 * stdio, and plays `steps` on the console; then waits for QEMU to exit (the last step powers off).
 * With `hvcLog`, a virtio console (hvc0) is added whose output goes to that file.
 */
async function boot(r: Rootfs, append: string, steps: Step[], hvcLog?: string): Promise<Boot> {
  const exitTimeoutMs = 180_000;
  const hvc = hvcLog
    ? ['-device', 'virtio-serial-pci', '-chardev', `file,id=hvc,path=${hvcLog}`, '-device', 'virtconsole,chardev=hvc']
    : [];
  const args = [
    // pc, not microvm: under TCG on a busy host the kernel's PIT calibration of the TSC can fail, and
    // then microvm (no HPET, no ACPI PM timer) hangs early in boot; pc falls back to the HPET.
    ...['-M', 'pc', '-accel', 'tcg', '-m', '1024', '-smp', '1'],
    ...['-display', 'none', '-no-reboot', '-no-user-config', '-nodefaults'],
    ...['-chardev', 'stdio,id=s0,signal=off', '-serial', 'chardev:s0'],
    ...['-kernel', r.kernel, '-initrd', r.initrd, '-append', `console=ttyS0 panic=-1 ${append}`],
    ...['-drive', `file=${r.image},if=none,id=d0,format=raw,snapshot=on`, '-device', 'virtio-blk-pci,drive=d0'],
    ...hvc,
  ];
  const t0 = performance.now();
  const child = spawn(QEMU, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  const onData = (b: Buffer): void => {
    out += b.toString('latin1');
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const spawnError = new Promise<Error>((res) => child.on('error', res));
  const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  const marks: Record<string, number> = {};
  let failed: string | undefined;
  let from = 0;
  for (const step of steps) {
    if ('send' in step) {
      child.stdin.write(step.send);
      continue;
    }
    const deadline = Date.now() + step.timeoutMs;
    while (out.indexOf(step.expect, from) < 0 && Date.now() < deadline && child.exitCode === null) {
      const e = await Promise.race([spawnError, new Promise<undefined>((res) => setTimeout(res, 200, undefined))]);
      if (e) assert.fail(`${QEMU} cannot run (${e.message}): apt-get install qemu-system-x86`);
    }
    const at = out.indexOf(step.expect, from);
    if (at < 0) {
      failed = `did not see ${JSON.stringify(step.expect)} within ${step.timeoutMs / 1000} s`;
      break;
    }
    from = at + step.expect.length;
    marks[step.expect] = Math.round(performance.now() - t0);
  }
  if (failed) child.kill('SIGKILL');
  const timer = setTimeout(() => {
    failed ??= `QEMU did not exit within ${exitTimeoutMs / 1000} s of the last step`;
    child.kill('SIGKILL');
  }, exitTimeoutMs);
  const status = await exited;
  clearTimeout(timer);
  return { status, failed, marks, output: out };
}

const tail = (s: string): string => s.slice(-6000);

describe('prepareRootfs', () => {
  let r: Rootfs;
  before(
    async () => {
      const t0 = performance.now();
      r = await prepareRootfs({ onProgress: (p) => process.stderr.write(`# rootfs: ${p.message}\n`) });
      process.stderr.write(`# prepareRootfs: ${(performance.now() - t0).toFixed(0)} ms (cached: ${r.cached})\n`);
    },
    { timeout: 30 * 60_000 },
  );

  test('a sparse ext4 image that e2fsck finds clean', () => {
    const st = statSync(r.image);
    assert.equal(st.size, ROOTFS_DEFAULT_MIB * 1048576);
    assert.ok(st.blocks * 512 < st.size / 2, `the image is sparse (${st.blocks * 512} bytes allocated)`);
    tool('e2fsck', ['-fn', r.image]);
    const sb = tool('dumpe2fs', ['-h', r.image]);
    assert.match(sb, new RegExp(`^Filesystem volume name:\\s+${ROOTFS_LABEL}$`, 'm'));
    assert.match(sb, /^Filesystem features:.*\bextent\b/m);
  });

  test('inside: hostname, fstab, root without a password, systemd as init, the version key', () => {
    assert.equal(readInImage(r.image, '/etc/hostname'), `${ROOTFS_HOSTNAME}\n`);
    assert.match(readInImage(r.image, '/etc/fstab'), /^\/dev\/vda \/ ext4 defaults 0 1$/m);
    assert.match(readInImage(r.image, '/etc/shadow'), /^root::/m);
    assert.match(statInImage(r.image, '/usr/lib/systemd/systemd'), /Type: regular/);
    assert.match(statInImage(r.image, '/usr/sbin/init'), /Type: symlink/);
    const info = readInImage(r.image, '/etc/vireo-rootfs');
    assert.match(info, new RegExp(`^key=${r.key}$`, 'm'));
    assert.match(info, new RegExp(`^kernel=${r.kernelVersion}$`, 'm'));
    for (const p of ['systemd', 'systemd-sysv', 'udev', 'kmod', 'iproute2', 'iperf3', 'socat'])
      assert.ok(
        r.packages.some((x) => x.name === p),
        `${p} is installed`,
      );
  });

  test("the kit kernel's modules with depmod's indexes for its version", () => {
    const dir = `/usr/lib/modules/${r.kernelVersion}`;
    assert.match(statInImage(r.image, `${dir}/modules.dep`), /Type: regular/);
    const dep = readInImage(r.image, `${dir}/modules.dep`);
    for (const m of ['virtio_net', 'virtio_blk', 'vmw_vsock_virtio_transport', 'virtio_balloon', 'dummy'])
      assert.match(dep, new RegExp(`/${m}\\.ko:`, 'm'), `${m} in modules.dep`);
  });

  test('serial gettys log root in by themselves; the marker unit is wanted by multi-user.target', () => {
    for (const tty of ['ttyS0', 'hvc0'])
      assert.match(
        readInImage(r.image, `/etc/systemd/system/serial-getty@${tty}.service.d/autologin.conf`),
        /^ExecStart=-\/sbin\/agetty --autologin root /m,
      );
    assert.match(statInImage(r.image, '/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service'), /symlink/);
    assert.ok(readInImage(r.image, '/etc/systemd/system/vireo-rootfs-ready.service').includes(ROOTFS_MARKER));
    assert.match(
      statInImage(r.image, '/etc/systemd/system/multi-user.target.wants/vireo-rootfs-ready.service'),
      /Type: symlink/,
    );
  });

  test('the guest agent: a static executable, and its unit wanted by multi-user.target', () => {
    assert.match(statInImage(r.image, AGENT_GUEST_PATH), /Type: regular\s+Mode:\s+0755/);
    const unit = readInImage(r.image, '/etc/systemd/system/vireo-agent.service');
    assert.equal(unit, AGENT_UNIT);
    assert.match(unit, new RegExp(`^ExecStart=${AGENT_GUEST_PATH} --listen vsock:${AGENT_VSOCK_PORT} `, 'm'));
    assert.match(
      statInImage(r.image, '/etc/systemd/system/multi-user.target.wants/vireo-agent.service'),
      /Type: symlink/,
    );
  });

  test('a second call finds it in the cache', { timeout: 120_000 }, async () => {
    const again = await prepareRootfs();
    assert.equal(again.cached, true);
    assert.equal(again.image, r.image);
  });

  test('boots under QEMU TCG with root=/dev/vda to multi-user.target and an autologin shell, then powers off', {
    timeout: 15 * 60_000,
  }, async () => {
    const hvcLog = join(tmp, 'hvc0.log');
    const b = await boot(
      r,
      'root=/dev/vda rw',
      [
        { expect: KIT_BANNER, timeoutMs: 180_000 },
        { expect: `${KIT_ROOT_SWITCH} /dev/vda (rw), init /sbin/init`, timeoutMs: 60_000 },
        { expect: ROOTFS_MARKER, timeoutMs: 480_000 },
        { expect: PROMPT, timeoutMs: 120_000 },
        // Each answer differs from its command's echo, so only the shell's output matches.
        {
          send:
            's=$(systemctl is-system-running --wait); echo "state=[$s]"; ' +
            'modprobe dummy && echo "dummy=$(grep -c "^dummy " /proc/modules)"; echo "host=$(hostname)/$(uname -r)"\n',
        },
        { expect: 'state=[running]', timeoutMs: 300_000 },
        { expect: 'dummy=1', timeoutMs: 60_000 },
        { expect: `host=${ROOTFS_HOSTNAME}/${r.kernelVersion}`, timeoutMs: 60_000 },
        { send: 'poweroff\n' },
        { expect: 'reboot: Power down', timeoutMs: 180_000 },
      ],
      hvcLog,
    );
    process.stderr.write(`# QEMU TCG boot marks (ms): ${JSON.stringify(b.marks)}\n`);
    assert.equal(b.failed, undefined, `${b.failed}\n--- console (end) ---\n${tail(b.output)}`);
    assert.equal(b.status, 0, `QEMU exit status\n${tail(b.output)}`);
    // systemd colours it: "[ESC[0;1;31mFAILED ESC[0m] Failed to start …".
    const plain = b.output
      .split('\u001b')
      .map((p) => p.replace(/^\[[0-9;]*m/, ''))
      .join('');
    assert.doesNotMatch(plain, /\[FAILED\]/, 'no unit failed');
    // The virtio console got its own getty, which logged root in too.
    const hvc = readFileSync(hvcLog, 'latin1');
    assert.ok(hvc.includes(`${ROOTFS_HOSTNAME} hvc0`), `hvc0:\n${hvc}`);
    assert.ok(hvc.includes(`${ROOTFS_HOSTNAME} login: root (automatic login)`), `hvc0:\n${hvc}`);
  });

  test("without the root device the kit's /init says so and goes on as without root=", {
    timeout: 300_000,
  }, async () => {
    const b = await boot(r, 'root=/dev/vdb rootdelay=1 vireo.exit=poweroff', [
      { expect: KIT_BANNER, timeoutMs: 180_000 },
      { expect: `${KIT_ROOT_FAILED}: device /dev/vdb did not appear in 1s; starting a shell`, timeoutMs: 60_000 },
      { expect: 'reboot: Power down', timeoutMs: 60_000 },
    ]);
    assert.equal(b.failed, undefined, `${b.failed}\n--- console (end) ---\n${tail(b.output)}`);
    assert.equal(b.status, 0);
  });
});
