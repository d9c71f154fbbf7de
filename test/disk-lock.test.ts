/**
 * Drive images are locked as QEMU locks them (OFD locks): a writable drive excludes every other user
 * of the image, read-only drives share it. Two VMs in one process and in two processes; the lock goes
 * with the VM (stop) and with the process (a restore in a new process after the first one is gone).
 * Clones: VMs on qcow2 overlays of one base each hold their overlay and share the base read-only.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { createQcow2Overlay } from '../src/backends/qcow2/create.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { repoRoot } from './support/cc.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const dir = mkdtempSync(join(tmpdir(), 'vireo-disklock-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const image = join(dir, 'disk.img');
writeFileSync(image, Buffer.alloc(1 << 20));
const vmModule = join(repoRoot, 'dist', 'src', 'vmm', 'vm.js');
const guest = guestPath('modes64');

/** What a failed test leaves running is ended here, so the run never hangs on it. */
const vms: Vm[] = [];
const children: ChildProcess[] = [];
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await Promise.all(vms.map((v) => v.stop()));
});

async function withDrive(readOnly: boolean): Promise<Vm> {
  const vm = await Vm.create({
    kernel: guest,
    cmdline: 'h',
    memMiB: 16,
    serial: { kind: 'none' },
    drives: [{ id: 'd0', path: image, readOnly }],
  });
  vms.push(vm);
  return vm;
}

const inUseForWriting = (e: Error & { code?: string }) =>
  e.code === 'VIREO_ERR_CONFIG' &&
  e.message.startsWith(`disk image ${image} is in use by another VM (locked for writing); `) &&
  !e.message.includes('\n');
const inUseReadOnly = (e: Error & { code?: string }) =>
  e.code === 'VIREO_ERR_CONFIG' &&
  /is in use by another VM \(attached read-only there\); attach it read-only/.test(e.message);

test('two VMs in one process: a writable drive excludes the second user; read-only drives share', {
  skip,
}, async () => {
  const a = await withDrive(false);
  await assert.rejects(withDrive(false), inUseForWriting);
  await assert.rejects(withDrive(true), inUseForWriting);
  await a.stop();
  // Stopping the VM gives the image back.
  const r1 = await withDrive(true);
  const r2 = await withDrive(true);
  await assert.rejects(withDrive(false), inUseReadOnly);
  await r1.stop();
  await assert.rejects(withDrive(false), inUseReadOnly, 'one read-only user is still there');
  await r2.stop();
  const w = await withDrive(false);
  await w.stop();
});

/** A child process that holds a VM with the image until its stdin closes. */
function holder(readOnly: boolean): Promise<ChildProcess> {
  const script = `
    import { Vm } from ${JSON.stringify(vmModule)};
    const vm = await Vm.create({ kernel: ${JSON.stringify(guest)}, cmdline: 'h', memMiB: 16, serial: { kind: 'none' },
      drives: [{ id: 'd0', path: ${JSON.stringify(image)}, readOnly: ${readOnly} }] });
    process.stdout.write('held\\n');
    process.stdin.on('data', () => {});
    process.stdin.on('end', async () => { await vm.stop(); process.exit(0); });`;
  const file = join(dir, `holder-${readOnly ? 'ro' : 'rw'}.mjs`);
  writeFileSync(file, script);
  const c = spawn(process.execPath, [file], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(c);
  return new Promise((res, rej) => {
    c.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('held')) res(c);
    });
    c.once('exit', (code) => rej(new Error(`holder exited with ${code} before it held the image`)));
  });
}

const ended = (c: ChildProcess) => new Promise<void>((res) => c.once('exit', () => res()));

test('across processes: a VM in another process holds the image; its end frees it', { skip }, async () => {
  const c = await holder(false);
  await assert.rejects(withDrive(true), inUseForWriting);
  await assert.rejects(withDrive(false), inUseForWriting);
  c.stdin?.end();
  await ended(c);
  const ro = await holder(true);
  const here = await withDrive(true);
  await assert.rejects(withDrive(false), inUseReadOnly);
  await here.stop();
  // A process killed outright drops its locks as well.
  ro.kill('SIGKILL');
  await ended(ro);
  const w = await withDrive(false);
  await w.stop();
});

test('a snapshot of a VM with a drive restores in another process once the first VM is gone', { skip }, async () => {
  const vm = await Vm.create({
    kernel: guest,
    cmdline: 'c',
    memMiB: 16,
    serial: { kind: 'none' },
    drives: [{ id: 'd0', path: image }],
  });
  vms.push(vm);
  vm.start();
  await vm.pause();
  const state = join(dir, 's.state');
  const mem = join(dir, 's.mem');
  await vm.snapshot({ statePath: state, memPath: mem });
  const child = join(repoRoot, 'dist', 'test', 'support', 'restore-child.js');
  const busy = spawnSync(process.execPath, [child, state, mem, 'counter'], { encoding: 'utf8', timeout: 60_000 });
  assert.notEqual(busy.status, 0, 'the original still has the image open for writing');
  assert.match(busy.stderr, /disk image .* is in use by another VM \(locked for writing\)/);
  await vm.stop();
  const r = spawnSync(process.execPath, [child, state, mem, 'counter'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `restore child failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop() as string) as { later: string; atRestore: string };
  assert.ok(BigInt(out.later) > BigInt(out.atRestore), 'the restored guest runs');
});

test('clones: VMs on qcow2 overlays of one base run together; each overlay is its own, the base is shared read-only', {
  skip,
}, async () => {
  const base = join(dir, 'clone-base.raw');
  writeFileSync(base, Buffer.alloc(1 << 20));
  const [c1, c2] = ['c1.qcow2', 'c2.qcow2'].map((n) => join(dir, n)) as [string, string];
  createQcow2Overlay(c1, base);
  createQcow2Overlay(c2, base);
  const on = async (path: string): Promise<Vm> => {
    const vm = await Vm.create({
      kernel: guest,
      cmdline: 'h',
      memMiB: 16,
      serial: { kind: 'none' },
      drives: [{ id: 'd0', path }],
    });
    vms.push(vm);
    return vm;
  };
  const a = await on(c1);
  const b = await on(c2);
  await assert.rejects(on(c1), (e: Error) =>
    e.message.startsWith(`disk image ${c1} is in use by another VM (locked for writing)`),
  );
  await assert.rejects(on(base), (e: Error) =>
    e.message.startsWith(`disk image ${base} is in use by another VM (attached read-only there)`),
  );
  await a.stop();
  await b.stop();
  const w = await on(base);
  await w.stop();
});
