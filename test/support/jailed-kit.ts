/**
 * Run inside the nested lane (as its root) by test/linux-jailer.test.ts: jails vireo-firecracker with
 * vireo-jailer (new PID namespace, uid/gid 123, no-file 256), copies the kit's kernel and initramfs into
 * the jail, boots them over the API at <chroot>/run/api.sock, and prints `@@jailed-kit <JSON>`: the API's
 * answers, the jailed VMM's ids and capabilities as the lane's /proc shows them, and the guest's console.
 * argv: KERNEL INITRD.
 */
import { spawn } from 'node:child_process';
import { chownSync, copyFileSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './cc.js';
import { fcRequest, firecrackerBin, waitForPath } from './fc-client.js';

const [kernel, initrd] = process.argv.slice(2) as [string, string];
const id = 'jailed-kit';
const base = mkdtempSync('/tmp/vireo-jailed-kit-');
const chroot = join(base, 'firecracker.js', id, 'root');
const child = spawn(
  process.execPath,
  [
    join(repoRoot, 'bin', 'jailer.js'),
    '--id',
    id,
    '--exec-file',
    firecrackerBin,
    '--uid',
    '123',
    '--gid',
    '123',
    '--chroot-base-dir',
    base,
    '--new-pid-ns',
    '--resource-limit',
    'no-file=256',
    '--',
    '--api-sock',
    '/run/api.sock',
  ],
  { stdio: ['ignore', 'pipe', 'pipe'] },
);
let out = '';
let err = '';
child.stdout.on('data', (b: Buffer) => {
  out += b.toString('utf8');
});
child.stderr.on('data', (b: Buffer) => {
  err += b.toString('utf8');
});
const closed = new Promise<void>((res) => child.on('close', () => res()));
const jailerStatus = await new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
const report: Record<string, unknown> = { jailerStatus };
try {
  const pid = Number(readFileSync(join(chroot, 'firecracker.js.pid'), 'utf8'));
  const sock = join(chroot, 'run', 'api.sock');
  await waitForPath(sock, 60_000);
  for (const [src, name] of [
    [kernel, 'vmlinuz'],
    [initrd, 'initrd'],
  ] as const) {
    copyFileSync(src, join(chroot, name));
    chownSync(join(chroot, name), 123, 123);
  }
  const st = Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]),
  );
  report.status = { Uid: st.Uid, Gid: st.Gid, CapEff: st.CapEff, CapBnd: st.CapBnd, NSpid: st.NSpid };
  report.root = readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')[0];
  report.info = (await fcRequest(sock, 'GET', '/')).json;
  report.answers = [
    (await fcRequest(sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 256 })).status,
    (
      await fcRequest(sock, 'PUT', '/boot-source', {
        kernel_image_path: '/vmlinuz',
        initrd_path: '/initrd',
        boot_args:
          'console=ttyS0 reboot=k panic=1 pci=off nokaslr i8042.noaux i8042.nomux i8042.dumbkbd vireo.exit=poweroff',
      })
    ).status,
    (await fcRequest(sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status,
  ];
  await Promise.race([closed, new Promise((res) => setTimeout(res, 240_000))]);
} catch (e) {
  report.error = String(e);
}
report.console = out;
report.stderr = err;
process.stdout.write(`@@jailed-kit ${JSON.stringify(report)}\n`);
if (child.exitCode === null) child.kill('SIGKILL');
process.exit(0);
