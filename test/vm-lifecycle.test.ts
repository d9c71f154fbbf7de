/**
 * The embeddable Vm: pause, resume and stop while a vCPU sits in KVM_RUN, events, and no leaked
 * fd, mapping or thread after stop (also after a failed create).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { releaseParkedThreads } from '../src/vmm/vcpu-threads.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const COUNTER = 0x1ff000;

const fdCount = () => readdirSync('/proc/self/fd').length;
/** fds that point at KVM objects (the device, VMs, vCPUs). */
const kvmFds = () =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return /kvm/.test(readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      return false;
    }
  }).length;
/** kvm_run mappings of vCPUs in this process. */
const vcpuMappings = () =>
  readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => /kvm-vcpu/.test(l)).length;
/** Virtual memory size of this process in bytes. */
const vmSize = () => Number(/VmSize:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]) * 1024;
const threadCount = () => readdirSync('/proc/self/task').length;

async function settle(): Promise<void> {
  // Threads a stopped VM gave back wait parked for the next VM: end them, so that what is counted
  // after is what a VM itself left behind. Then let them finish exiting at the OS level.
  await releaseParkedThreads();
  for (let i = 0; i < 50; i++) {
    await sleep(20);
  }
}

test('pause and resume a vCPU that never leaves KVM_RUN; stop it; events in order', { skip }, async (t) => {
  const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 16, serial: { kind: 'none' } });
  t.after(() => vm.stop());
  const events: string[] = [];
  vm.on('started', () => events.push('started'));
  vm.on('paused', () => events.push('paused'));
  vm.on('resumed', () => events.push('resumed'));
  vm.on('exited', (e) => events.push(`exited:${e.reason.kind}`));
  const mem = vm.memory;
  assert.ok(mem);
  vm.start();
  const counter = () => mem.read64(COUNTER);
  // The guest increments the counter in a loop with no exits at all.
  const t0 = Date.now();
  while (counter() < 1000n && Date.now() - t0 < 10_000) await sleep(5);
  assert.ok(counter() >= 1000n, 'the guest counts');
  assert.equal(vm.stats().exitsIo + vm.stats().exitsMmio, 0, 'no exits while counting');

  await vm.pause();
  assert.equal(vm.state, 'paused');
  const frozen = counter();
  await sleep(100);
  assert.equal(counter(), frozen, 'a paused guest does not run');

  await vm.resume();
  assert.equal(vm.state, 'running');
  const t1 = Date.now();
  while (counter() === frozen && Date.now() - t1 < 10_000) await sleep(5);
  assert.ok(counter() > frozen, 'a resumed guest runs again');

  await vm.stop();
  const exit = await vm.waitForExit();
  assert.equal(exit.reason.kind, 'stopped');
  assert.equal(exit.status, 0);
  assert.equal(vm.state, 'exited');
  assert.deepEqual(events, ['started', 'paused', 'resumed', 'exited:stopped']);
});

test('stopping releases every fd, mapping and thread (running, paused, and never started)', { skip }, async (t) => {
  // Warm up: the first VM loads koffi and starts Node's own helper threads.
  const warm = await Vm.create({ kernel: guestPath('hello64'), memMiB: 8, serial: { kind: 'none' } });
  warm.start();
  await warm.waitForExit();
  await settle();
  const before = { fds: fdCount(), threads: threadCount() };
  assert.equal(kvmFds(), 0);

  for (const how of ['running', 'paused', 'created'] as const) {
    const vm = await Vm.create({
      kernel: guestPath('modes64'),
      cmdline: 'c',
      memMiB: 256,
      cpus: 2,
      serial: { kind: 'none' },
    });
    t.after(() => vm.stop());
    const sizeWithVm = vmSize();
    assert.equal(kvmFds(), 4, 'the VM holds /dev/kvm, a VM fd and two vCPU fds');
    assert.equal(vcpuMappings(), 2, 'two kvm_run mappings exist');
    assert.ok(threadCount() >= before.threads + 2, 'two vCPU threads run');
    if (how !== 'created') vm.start();
    if (how === 'paused') await vm.pause();
    await vm.stop();
    await settle();
    assert.equal(kvmFds(), 0, `KVM fds after stopping a ${how} VM`);
    assert.equal(fdCount(), before.fds, `fds after stopping a ${how} VM`);
    assert.equal(vcpuMappings(), 0, `kvm_run mappings after stopping a ${how} VM`);
    assert.ok(vmSize() <= sizeWithVm - 256 * 1024 * 1024, `guest RAM unmapped after stopping a ${how} VM`);
    assert.equal(threadCount(), before.threads, `threads after stopping a ${how} VM`);
  }
});

test('a failed create leaks nothing and reports a clear error', { skip }, async () => {
  const before = { fds: fdCount() };
  await assert.rejects(
    Vm.create({ kernel: '/etc/hostname', memMiB: 16, serial: { kind: 'none' } }),
    (e: Error & { code?: string }) =>
      e.code === 'VIREO_ERR_BAD_IMAGE' && /is not a kernel vireo can boot/.test(e.message),
  );
  await settle();
  assert.equal(fdCount(), before.fds);
  assert.equal(kvmFds(), 0);
  assert.equal(vcpuMappings(), 0);
});

test('guest-ended VMs release everything too, and stats count exits', { skip }, async () => {
  const before = { fds: fdCount() };
  const vm = await Vm.create({ kernel: guestPath('storm64'), memMiB: 16, serial: { kind: 'none' } });
  vm.start();
  const exit = await vm.waitForExit();
  assert.equal(exit.reason.kind, 'debug-exit');
  assert.equal(exit.status, 0x23);
  const s = vm.stats();
  assert.equal(s.unclaimedPioWrites, 20000);
  assert.equal(s.unclaimedPioReads, 20000);
  assert.equal(s.unclaimedMmioWrites, 20000);
  assert.equal(s.unclaimedMmioReads, 20000);
  assert.equal(s.exitsMmio, 40000);
  assert.deepEqual(vm.postCodes(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
  await settle();
  assert.equal(fdCount(), before.fds);
  assert.equal(kvmFds(), 0);
  assert.equal(vcpuMappings(), 0);
});

test('state errors are typed', { skip }, async () => {
  const vm = await Vm.create({ kernel: guestPath('hello64'), memMiB: 8, serial: { kind: 'none' } });
  await assert.rejects(vm.pause(), (e: Error & { code?: string }) => e.code === 'VIREO_ERR_STATE');
  vm.start();
  assert.throws(
    () => vm.start(),
    (e: Error & { code?: string }) => e.code === 'VIREO_ERR_STATE',
  );
  await vm.waitForExit();
});

/** Lines of /proc/self/maps: the mappings of this process. */
const mappingCount = () => readFileSync('/proc/self/maps', 'utf8').trimEnd().split('\n').length;

test('create/stop cycles in one process: mappings and address space stay bounded', { skip }, async () => {
  // A VM with a disk runs a vCPU thread, the I/O thread and the disk's I/O pool threads. Each thread
  // that ended left koffi's per-thread memory behind (3 MiB and three mappings): 200 cycles took a
  // process from 144 to 1973 mappings and 1.0 to 3.1 GiB. Threads are now reused from VM to VM.
  const dir = mkdtempSync(join(tmpdir(), 'vireo-cycles-'));
  try {
    const image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(1 << 20));
    const cycle = async (): Promise<void> => {
      const vm = await Vm.create({
        kernel: guestPath('modes64'),
        cmdline: 'h',
        memMiB: 16,
        serial: { kind: 'none' },
        drives: [{ id: 'd0', path: image }],
      });
      vm.start();
      await vm.stop();
    };
    // Warm-up: the first VMs start the threads that the later ones reuse, and V8's heaps grow to size.
    for (let i = 0; i < 5; i++) await cycle();
    const before = { maps: mappingCount(), size: vmSize() };
    const N = 30;
    for (let i = 0; i < N; i++) await cycle();
    const grown = { maps: mappingCount() - before.maps, size: vmSize() - before.size };
    process.stderr.write(
      `${N} cycles: mappings ${before.maps} -> ${before.maps + grown.maps}, VmSize +${(grown.size / 2 ** 20).toFixed(1)} MiB\n`,
    );
    // A fixed allowance for the heaps' own growth (V8 pages, malloc arenas), not a per-VM cost: before
    // the fix, these 30 cycles added ~350 mappings and ~360 MiB.
    assert.ok(grown.maps <= 100, `mappings grew by ${grown.maps} over ${N} VMs`);
    assert.ok(grown.size <= 96 * 2 ** 20, `VmSize grew by ${(grown.size / 2 ** 20).toFixed(1)} MiB over ${N} VMs`);
    assert.equal(kvmFds(), 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
