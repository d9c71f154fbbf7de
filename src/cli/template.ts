/** `vireo template build`: a template (a snapshot taken once the agent answers) for Sandbox.create clones. */
import { ConfigError } from '../common/errors.js';
import { Template } from '../sandbox/template.js';

export interface TemplateBuildCliOptions {
  dir: string;
  kernel?: string;
  initrd?: string;
  rootfs?: string;
  cpus: number;
  mem: number;
  bootTimeout: number;
}

export async function templateBuildCommand(o: TemplateBuildCliOptions): Promise<number> {
  let kernel = o.kernel;
  let initrd = o.initrd;
  if (kernel === undefined) {
    if (initrd !== undefined)
      throw new ConfigError('--initrd goes with --kernel (without both, the guest kit is used)');
    // The guest kit: Debian's kernel and an initramfs whose /init starts the agent.
    const { prepareKit } = await import('../kit/kit.js');
    const { progressPrinter } = await import('../kit/util.js');
    const progress = progressPrinter(process.stderr);
    const kit = await prepareKit({ onProgress: progress }).finally(() => progress.end());
    kernel = kit.kernel;
    initrd = kit.initrd;
  }
  const t = await Template.build({
    dir: o.dir,
    kernel,
    initrd,
    rootfs: o.rootfs,
    cpus: o.cpus,
    memMiB: o.mem,
    bootTimeoutMs: o.bootTimeout * 1000,
  });
  process.stdout.write(
    `template ${t.dir}: booted to its agent in ${Math.round(t.bootMs)} ms, snapshot in ${Math.round(t.snapshotMs)} ms\n`,
  );
  return 0;
}
