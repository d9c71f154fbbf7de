/**
 * What `vireo serve` makes a sandbox from. A template name (E2B's `templateID`, `base` by default in
 * the SDK) maps to a kernel, an initrd with the guest agent and an optional root disk; `--template
 * NAME=KERNEL,INITRD[,ROOTFS]` configures one. Creating a sandbox is ONE function, the Launcher: today
 * it cold-boots (`bootLauncher`); a clone restored from the template's snapshot replaces it later
 * without the service changing.
 */
import { constants, copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentTimeouts } from '../agent/client.js';
import { Sandbox } from '../sandbox/sandbox.js';
import { ServeError } from './errors.js';

export interface TemplateConfig {
  name: string;
  kernel: string;
  initrd?: string | undefined;
  /** A root disk image; each sandbox boots a copy of its own (a reflink where the file system has them). */
  rootfs?: string | undefined;
  cpus: number;
  memMiB: number;
}

export const TEMPLATE_DEFAULT_CPUS = 1;
export const TEMPLATE_DEFAULT_MEM_MIB = 256;
const TEMPLATE_NAME = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

/** `NAME=KERNEL,INITRD[,ROOTFS]` (INITRD may be empty: `NAME=KERNEL,,ROOTFS`). */
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

/** Cold boot: a new VM from the template's kernel, initrd and (a copy of) its root disk. */
export function bootLauncher(opts: BootLauncherOptions): Launcher {
  return async (req) => {
    const t = req.template;
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
