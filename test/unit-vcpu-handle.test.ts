/**
 * The vCPU handle (src/vcpu/handle.ts) without KVM: over a stand-in worker, each command's promise is
 * settled by the thread's reply — 'paused', 'resumed', 'stopped' or the thread's end — and by nothing
 * else (no timer: the promises stay pending until the reply is posted).
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, test } from 'node:test';
import type { Worker } from 'node:worker_threads';
import type { Vcpu } from '../src/kvm/kvm.js';
import * as sys from '../src/os/sys.js';
import { stopVcpus, VcpuHandle } from '../src/vcpu/handle.js';
import { Cmd, CTRL_CMD, type VcpuMessage, type VcpuStop, type VcpuWorkerInit } from '../src/vcpu/protocol.js';

// A kick signals the thread that said it was ready: here this one, with the VMM's harmless handler.
sys.installKickSignal();
const self = sys.pthreadSelf();

/** A worker that records what it was sent and posts what the test says. */
class FakeWorker extends EventEmitter {
  init: VcpuWorkerInit<unknown> | undefined;
  terminated = false;
  postMessage(m: VcpuWorkerInit<unknown>): void {
    this.init = m;
  }
  reply(m: VcpuMessage): void {
    this.emit('message', m);
  }
  terminate(): Promise<number> {
    this.terminated = true;
    this.emit('exit', 1);
    return Promise.resolve(1);
  }
  command(): number {
    return Atomics.load(new Int32Array(this.init?.control as SharedArrayBuffer), CTRL_CMD);
  }
}

const fakeVcpu = (id: number) =>
  ({ id, descriptor: { id, fd: -1, runAddr: 0, runSize: 0 }, run: { immediateExit: false } }) as unknown as Vcpu;

function handle(id = 0) {
  const w = new FakeWorker();
  const stops: [number, VcpuStop][] = [];
  const h = new VcpuHandle(
    fakeVcpu(id),
    w as unknown as Worker,
    { vmFd: -1, memory: [], platform: null, seccomp: false },
    { stopped: (i, s) => stops.push([i, s]), firstExit: () => undefined },
  );
  return { h, w, stops };
}

/** Whether `p` settled by now (after the microtasks queued so far). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => {
    done = true;
  });
  await new Promise((r) => setImmediate(r));
  return done;
}

describe('VcpuHandle', () => {
  test('the thread gets its vCPU, control word and init; ready when it says so', async () => {
    const { h, w } = handle(2);
    assert.equal(w.init?.vcpu.id, 2);
    assert.ok(w.init?.control instanceof SharedArrayBuffer);
    assert.equal(await settled(h.ready), false);
    w.reply({ type: 'ready', id: 2, thread: self });
    assert.equal(await settled(h.ready), true);
  });

  test('pause is answered by the paused reply, resume by the resumed reply', async () => {
    const { h, w } = handle();
    w.reply({ type: 'ready', id: 0, thread: self });
    h.run();
    assert.equal(w.command(), Cmd.RUN);
    const paused = h.pause();
    assert.equal(w.command(), Cmd.PAUSE);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(await settled(paused), false, 'no reply, no answer: nothing polls');
    w.reply({ type: 'paused', id: 0 });
    assert.equal(await settled(paused), true);
    const resumed = h.resume();
    assert.equal(w.command(), Cmd.RUN);
    assert.equal(await settled(resumed), false);
    w.reply({ type: 'resumed', id: 0 });
    assert.equal(await settled(resumed), true);
  });

  test('resume of a vCPU that never paused (a restored one waiting for RUN) is answered at once', async () => {
    const { h, w } = handle();
    assert.equal(await settled(h.resume()), true);
    assert.equal(w.command(), Cmd.RUN);
  });

  test("a thread's stop settles what waits, reports the stop, and makes it recyclable", async () => {
    const { h, w, stops } = handle(1);
    const paused = h.pause();
    const stop: VcpuStop = { kind: 'shutdown', source: 'acpi' };
    w.reply({ type: 'stopped', id: 1, stop });
    assert.equal(await settled(paused), true);
    assert.equal(await settled(h.exited), true);
    assert.equal(await settled(h.ready), true);
    assert.deepEqual(stops, [[1, stop]]);
    assert.equal(h.recyclable, true);
    assert.equal(await settled(h.pause()), true, 'a command to a thread that left is answered at once');
  });

  test('a thread that ends before it was ready rejects ready and settles the rest', async () => {
    const { h, w } = handle();
    const paused = h.pause();
    w.emit('exit', 1);
    await assert.rejects(h.ready, /vCPU 0 thread ended before it was ready/);
    assert.equal(await settled(paused), true);
    assert.equal(h.recyclable, false);
  });

  test('stopVcpus sends STOP and resolves once each thread reported its stop', async () => {
    const a = handle(0);
    const b = handle(1);
    const all = stopVcpus([a.h, b.h]);
    assert.equal(a.w.command(), Cmd.STOP);
    assert.equal(b.w.command(), Cmd.STOP);
    a.w.reply({ type: 'stopped', id: 0, stop: { kind: 'stopped' } });
    assert.equal(await settled(all), false);
    b.w.reply({ type: 'stopped', id: 1, stop: { kind: 'stopped' } });
    await all;
    assert.equal(a.w.terminated || b.w.terminated, false, 'nobody was terminated');
  });
});
