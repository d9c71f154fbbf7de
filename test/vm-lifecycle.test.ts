/**
 * The embeddable Vm: pause, resume and stop while a vCPU sits in KVM_RUN, events, and no leaked
 * fd, mapping or thread after stop (also after a failed create).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
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
  // Let worker threads finish exiting at the OS level.
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
