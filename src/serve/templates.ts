/**
 * What `vireo serve` makes a sandbox from. A template name (E2B's `templateID`, `base` by default in
 * the SDK) maps to a kernel, an initrd with the guest agent and an optional root disk; `--template
 * NAME=KERNEL,INITRD[,ROOTFS]` configures one, `--template NAME=DIR` one built by `vireo template
 * build`. Creating a sandbox is ONE function, the Launcher (`bootLauncher`): it restores a clone of the
 * template's snapshot when the template has one, else cold-boots.
 */
import { constants, copyFileSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentTimeouts } from '../agent/client.js';
import { Sandbox } from '../sandbox/sandbox.js';
import { type LoadedTemplate, loadTemplate } from '../sandbox/template.js';
import { ServeError } from './errors.js';

export interface TemplateConfig {
  name: string;
  kernel: string;
  initrd?: string | undefined;
  /** A root disk image; each sandbox boots a copy of its own (a reflink where the file system has them). */
  rootfs?: string | undefined;
  cpus: number;
  memMiB: number;
  /** A template directory (`vireo template build`): sandboxes are clones of its snapshot. */
  snapshot?: string | undefined;
}

export const TEMPLATE_DEFAULT_CPUS = 1;
export const TEMPLATE_DEFAULT_MEM_MIB = 256;
const TEMPLATE_NAME = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

/**
 * `NAME=KERNEL,INITRD[,ROOTFS]` (INITRD may be empty: `NAME=KERNEL,,ROOTFS`), or `NAME=DIR` for a
 * template directory with a snapshot (its cpus and memory are the snapshot's).
 */
export function parseTemplate(
  spec: string,
  defaults: { cpus?: number | undefined; memMiB?: number | undefined } = {},
): TemplateConfig {
  const eq = spec.indexOf('=');
  const name = eq < 0 ? '' : spec.slice(0, eq);
  const parts = eq < 0 ? [] : spec.slice(eq + 1).split(',');
  if (!TEMPLATE_NAME.test(name) || parts.length < 1 || parts.length > 3 || !parts[0])
    throw new ServeError(`--template ${JSON.stringify(spec)}: give NAME=KERNEL,INITRD[,ROOTFS]`);
  const [kernel, initrd, rootfs] = parts as [string, string | undefined, string | undefined];
  if (parts.length === 1 && isDirectory(kernel)) {
    let t: LoadedTemplate;
    try {
      t = loadTemplate(kernel);
    } catch (e) {
      throw new ServeError(`--template ${name}: ${(e as Error).message}`);
    }
    const m = t.manifest;
    return {
      name,
      kernel: m.kernel,
      initrd: m.initrd,
      rootfs: undefined,
      cpus: m.cpus,
      memMiB: m.memMiB,
      snapshot: t.dir,
    };
  }
  for (const [what, path] of [
    ['kernel', kernel],
    ['initrd', initrd],
    ['rootfs', rootfs],
  ] as const)
    if (path && !existsSync(path)) throw new ServeError(`--template ${name}: the ${what} ${path} does not exist`);
  return {
    name,
    kernel,
    initrd: initrd || undefined,
    rootfs: rootfs || undefined,
    cpus: defaults.cpus ?? TEMPLATE_DEFAULT_CPUS,
    memMiB: defaults.memMiB ?? TEMPLATE_DEFAULT_MEM_MIB,
  };
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

export interface LaunchRequest {
  template: TemplateConfig;
  /** The sandbox's environment (E2B's envVars): every command gets it. */
  envs: Record<string, string>;
  metadata: Record<string, string>;
}

/** A running sandbox as the service holds it. */
export interface Launched {
  sandbox: Sandbox;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  /** Stops and resumes the guest (E2B's pause and resume). */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Stops it and removes everything it had on this host. */
  kill(): Promise<void>;
}

/** Makes a running sandbox from a template: the one step a snapshot clone will replace. */
export type Launcher = (req: LaunchRequest) => Promise<Launched>;

export interface BootLauncherOptions {
  bootTimeoutMs: number;
  agentTimeouts?: Partial<AgentTimeouts> | undefined;
  kvmPath?: string | undefined;
}

/**
 * A clone restored from the template's snapshot where it has one (its own vsock socket and disk
 * overlay: Sandbox.create's clone path); else a cold boot: a new VM from the template's kernel, initrd
 * and (a copy of) its root disk.
 */
export function bootLauncher(opts: BootLauncherOptions): Launcher {
  return async (req) => {
    const t = req.template;
    if (t.snapshot !== undefined) {
      const sandbox = await Sandbox.create({
        template: t.snapshot,
        envs: req.envs,
        metadata: req.metadata,
        timeoutMs: 0,
        bootTimeoutMs: opts.bootTimeoutMs,
        agentTimeouts: opts.agentTimeouts,
        kvmPath: opts.kvmPath,
      });
      return {
        sandbox,
        cpuCount: t.cpus,
        memoryMB: t.memMiB,
        diskSizeMB: 0,
        pause: () => sandbox.pause(),
        resume: () => sandbox.resume(),
        kill: () => sandbox.kill(),
      };
    }
    const scratch = t.rootfs ? mkdtempSync(join(tmpdir(), 'vireo-serve-disk-')) : undefined;
    const drop = () => {
      if (scratch) rmSync(scratch, { recursive: true, force: true });
    };
    try {
      let rootfs: string | undefined;
      if (t.rootfs && scratch) {
        rootfs = join(scratch, 'rootfs.img');
        copyFileSync(t.rootfs, rootfs, constants.COPYFILE_FICLONE);
      }
      const sandbox = await Sandbox.create({
        kernel: t.kernel,
        initrd: t.initrd,
        rootfs,
        cpus: t.cpus,
        memMiB: t.memMiB,
        envs: req.envs,
        metadata: req.metadata,
        // The service owns the lifetime (its record, its timer): the sandbox's own clock is off.
        timeoutMs: 0,
        bootTimeoutMs: opts.bootTimeoutMs,
        agentTimeouts: opts.agentTimeouts,
        kvmPath: opts.kvmPath,
      });
      return {
        sandbox,
        cpuCount: t.cpus,
        memoryMB: t.memMiB,
        diskSizeMB: 0,
        pause: () => sandbox.pause(),
        resume: () => sandbox.resume(),
        kill: async () => {
          try {
            await sandbox.kill();
          } finally {
            drop();
          }
        },
      };
    } catch (e) {
      drop();
      throw e;
    }
  };
}
