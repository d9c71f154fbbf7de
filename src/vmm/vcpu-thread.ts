/** Worker entry: one vCPU's thread. Builds its view of memory and the platform, then runs. */
import { parentPort, workerData } from 'node:worker_threads';
import { Vcpu } from '../kvm/kvm.js';
import * as sys from '../kvm/sys.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { type VcpuMessage, type VcpuStop, type VcpuWorkerInit, CTRL_STATE, State } from '../vcpu/protocol.js';
import { runLoop } from '../vcpu/run-loop.js';
import { buildPlatform, type PlatformSpec } from './platform.js';

const init = workerData as VcpuWorkerInit<PlatformSpec>;
const port = parentPort;
if (!port) throw new Error('vcpu-thread must run as a worker');
const control = new Int32Array(init.control);
const post = (m: VcpuMessage): void => port.postMessage(m);

let stop: VcpuStop;
try {
  // The memory views are built so devices that touch guest memory can; they also prove the
  // mappings are visible from this thread.
  new GuestMemory(init.memory);
  const vcpu = Vcpu.attach(init.vcpu);
  const platform = buildPlatform(init.platform);
  post({ type: 'ready', id: init.vcpu.id, thread: sys.pthreadSelf() });
  stop = runLoop(vcpu, platform.pio, platform.mmio, control, {
    pendingStop: platform.takeStop,
    countExit: platform.countExit,
    onPaused: () => post({ type: 'paused', id: init.vcpu.id }),
    onResumed: () => post({ type: 'resumed', id: init.vcpu.id }),
  });
} catch (e) {
  stop = {
    kind: 'error',
    code: (e as { code?: string }).code ?? 'VIREO_ERR_VCPU',
    message: e instanceof Error ? e.message : String(e),
  };
}
Atomics.store(control, CTRL_STATE, State.EXITED);
post({ type: 'stopped', id: init.vcpu.id, stop });
