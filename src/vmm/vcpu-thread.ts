/**
 * Worker entry: one vCPU's thread. It loads its modules and warms its code as soon as it is spawned
 * (vireo spawns it early, while the main thread is still building the VM, or parks it ahead of a
 * restore), then waits for its init message, builds its view of memory and the platform, and runs
 * the vCPU until told to stop; then it waits for the next VM.
 */
import { type MessagePort, parentPort } from 'node:worker_threads';
import { Vcpu } from '../kvm/kvm.js';
import { confine } from '../kvm/seccomp-policy.js';
import { GuestMemory } from '../memory/guest-memory.js';
import * as sys from '../os/sys.js';
import { CTRL_STATE, State, type VcpuMessage, type VcpuStop, type VcpuWorkerInit } from '../vcpu/protocol.js';
import { explainStop, runLoop } from '../vcpu/run-loop.js';
import { buildPlatform, createPlatformSpec, type PlatformSpec } from './platform.js';

if (!parentPort) throw new Error('vcpu-thread must run as a worker');
const port: MessagePort = parentPort;
const post = (m: VcpuMessage): void => port.postMessage(m);

function run(init: VcpuWorkerInit<PlatformSpec>): void {
  const control = new Int32Array(init.control);
  const id = init.vcpu.id;
  let stop: VcpuStop;
  try {
    // Guest memory for the devices that touch it (views are made on first use).
    const mem = new GuestMemory(init.memory);
    const vcpu = Vcpu.attach(init.vcpu);
    const platform = buildPlatform(init.platform, mem);
    // Set up (kvm_run mapped, buses built): from here on the thread runs the guest, under its filter.
    confine('vcpu', init.seccomp);
    post({ type: 'ready', id, thread: sys.pthreadSelf() });
    stop = runLoop(vcpu, platform.pio, platform.mmio, control, {
      pendingStop: platform.takeStop,
      countExit: platform.countExit,
      onFirstExit: () => post({ type: 'first-exit', id, at: performance.timeOrigin + performance.now() }),
      onPaused: () => post({ type: 'paused', id }),
      onResumed: () => post({ type: 'resumed', id }),
    });
  } catch (e) {
    stop = {
      kind: 'error',
      code: (e as { code?: string }).code ?? 'VIREO_ERR_VCPU',
      message: e instanceof Error ? e.message : String(e),
    };
  }
  Atomics.store(control, CTRL_STATE, State.EXITED);
  post({ type: 'stopped', id, stop: explainStop(stop, init.memory) });
}

/**
 * One VM after another: once stopped, the thread waits for the next init (vcpu-threads.ts parks it
 * again) instead of ending, because an ended thread leaks its native modules' memory.
 */
function serve(init: VcpuWorkerInit<PlatformSpec>): void {
  run(init);
  port.once('message', serve);
}

port.once('message', serve);
// A dry run of the platform build while the thread is parked: V8 compiles functions on first
// call, so the VM's own build (on the restore path, between the request and the guest running)
// then runs compiled code.
buildPlatform(createPlatformSpec(-1, -1, false), new GuestMemory([]));
post({ type: 'loaded' });
