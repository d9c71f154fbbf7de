/** Start the threads a `vireo run` command line will need, before loading anything else. */
import { prewarmIoThread, prewarmVcpuThreads } from '../vmm/vcpu-threads.js';

/** Options that give the VM a virtio device (and so an I/O thread). */
const VIRTIO_OPTIONS = ['--drive', '--net', '--vsock', '--rng', '--virtio-console', '--balloon'];

export function prewarmForArgs(argv: readonly string[]): void {
  const i = argv.indexOf('--cpus');
  const n = i >= 0 ? Number(argv[i + 1]) : 1;
  // Threads beyond a few are cheap to start on demand; parked ones that go unused are released.
  prewarmVcpuThreads(Number.isInteger(n) && n >= 1 ? Math.min(n, 4) : 1);
  if (argv.some((a) => VIRTIO_OPTIONS.includes(a.split('=')[0] as string))) prewarmIoThread();
}
