/** `vireo rootfs [--force] [--size MiB] [--json]`: build (or find cached) the Debian root file system image. */
import { ConfigError } from '../common/errors.js';
import { prepareRootfs, ROOTFS_DEFAULT_MIB } from '../kit/rootfs.js';
import { progressPrinter } from '../kit/util.js';

export interface RootfsCommandOptions {
  /** Rebuild even when a cached image exists. */
  force?: boolean;
  /** File system size in MiB (a number, or the option's string). */
  size?: number | string;
  /** Print the whole description as JSON instead of the image path. */
  json?: boolean;
}

/** Progress goes to stderr, the image path (or JSON) to stdout. Returns the exit status. */
export async function rootfsCommand(opts: RootfsCommandOptions = {}): Promise<number> {
  let sizeMiB = ROOTFS_DEFAULT_MIB;
  if (opts.size !== undefined) {
    sizeMiB = Number(opts.size);
    if (!/^\d+$/.test(String(opts.size).trim()) || sizeMiB < 512 || sizeMiB > 1048576)
      throw new ConfigError(`--size ${opts.size}: give the file system size in MiB, an integer from 512 to 1048576`);
  }
  const progress = progressPrinter(process.stderr, 'vireo rootfs');
  const r = await prepareRootfs({ onProgress: progress, force: opts.force, sizeMiB }).finally(() => progress.end());
  process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${r.image}\n`);
  return 0;
}
