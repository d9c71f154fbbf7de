/**
 * Templates: a sandbox booted once, its agent answering, then paused and snapshotted (Full) into a
 * directory with a small versioned manifest. `Sandbox.create({ template: DIR })` restores clones from
 * it (sandbox.ts): each its own vsock socket and, over the template's root disk, its own qcow2 overlay;
 * guest memory is mapped MAP_PRIVATE from the template's memory file, so clones share its clean pages.
 *
 * The agent is never sent /init while the template is built: it has no access token yet, and each
 * clone's /init gives it one of its own (with the host's clock).
 */
import {
  chmodSync,
  constants,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { AgentClient, type AgentTimeouts } from '../agent/client.js';
import { AGENT_VSOCK_PORT, hybridVsockEndpoint } from '../agent/connector.js';
import { checkRecord, int, object, opt, SchemaError, str } from '../common/schema.js';
import { DEFAULT_MACHINE } from '../config/index.js';
import { Vm } from '../vmm/vm.js';
import { SandboxError } from './errors.js';

export const TEMPLATE_MANIFEST = 'template.json';
export const TEMPLATE_MANIFEST_VERSION = 1;
/** The guest's vsock CID in every template (each clone has its own host socket, so one CID serves all). */
export const TEMPLATE_VSOCK_CID = 3;
const ROOTFS_FILE = 'rootfs.img';
const STATE_FILE = 'state';
const MEMORY_FILE = 'memory';

export interface TemplateManifest {
  vireoTemplate: number;
  createdAt: string;
  /** What the template booted (a clone does not load them: for the record and for a rebuild). */
  kernel: string;
  initrd?: string | undefined;
  cmdline: string;
  /** The root disk's copy in the template's directory (a clone's overlay is over it), by file name. */
  rootfs?: string | undefined;
  cpus: number;
  memMiB: number;
  vsockCid: number;
  /** The snapshot's files in the directory. */
  state: string;
  memory: string;
}

const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const fileName = (v: unknown, at: string) => {
  if (typeof v !== 'string' || !FILE_NAME.test(v))
    throw new SchemaError(at, "a plain file name in the template's directory");
};
const manifestCheck = object({
  vireoTemplate: int(1, 1_000),
  createdAt: str(64),
  kernel: str(4096),
  initrd: opt(str(4096)),
  cmdline: str(4096),
  rootfs: opt(fileName),
  cpus: int(1, 256),
  memMiB: int(1, 1 << 24),
  vsockCid: int(3, 0xffff_fffe),
  state: fileName,
  memory: fileName,
});

/** A template directory, checked: its manifest and the absolute paths of what a clone needs. */
export interface LoadedTemplate {
  dir: string;
  manifest: TemplateManifest;
  statePath: string;
  memPath: string;
  rootfsPath: string | undefined;
}

/** Reads and checks `dir`'s manifest (one line of error for a missing, foreign or newer one). */
export function loadTemplate(dir: string): LoadedTemplate {
  const abs = resolve(dir);
  const path = join(abs, TEMPLATE_MANIFEST);
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new SandboxError(
      code === 'ENOENT'
        ? `template ${abs}: no ${TEMPLATE_MANIFEST} — build one with vireo template build --dir ${abs}`
        : `template ${abs}: ${TEMPLATE_MANIFEST} is not readable JSON: ${(e as Error).message}`,
    );
  }
  try {
    checkRecord<TemplateManifest>(manifestCheck, v, TEMPLATE_MANIFEST);
  } catch (e) {
    throw new SandboxError(`template ${abs}: ${(e as Error).message}`);
  }
  if (v.vireoTemplate !== TEMPLATE_MANIFEST_VERSION)
    throw new SandboxError(
      `template ${abs}: manifest version ${v.vireoTemplate}; this vireo reads version ${TEMPLATE_MANIFEST_VERSION}: rebuild it`,
    );
  return {
    dir: abs,
    manifest: v,
    statePath: join(abs, v.state),
    memPath: join(abs, v.memory),
    rootfsPath: v.rootfs !== undefined ? join(abs, v.rootfs) : undefined,
  };
}

export interface TemplateBuildOptions {
  kernel: string;
  initrd?: string | undefined;
  /** A root disk image: copied into `dir` (a reflink where the file system has them) and booted as /dev/vda. */
  rootfs?: string | undefined;
  cmdline?: string | undefined;
  cpus?: number | undefined;
  memMiB?: number | undefined;
  /** Where the template goes: made if missing; must not hold a template already. */
  dir: string;
  bootTimeoutMs?: number | undefined;
  agentTimeouts?: Partial<AgentTimeouts> | undefined;
  kvmPath?: string | undefined;
}

export interface TemplateBuildResult extends LoadedTemplate {
  /** Boot until the agent answered, and the snapshot, in ms. */
  bootMs: number;
  snapshotMs: number;
}

export const TEMPLATE_DEFAULT_CMDLINE =
  'console=ttyS0 reboot=k panic=1 pci=off nokaslr i8042.noaux i8042.nomux i8042.dumbkbd';

export const Template = {
  /** Boots once, waits for the agent, pauses and writes the snapshot and manifest into `opts.dir`. */
  async build(opts: TemplateBuildOptions): Promise<TemplateBuildResult> {
    const dir = resolve(opts.dir);
    if (existsSync(join(dir, TEMPLATE_MANIFEST)))
      throw new SandboxError(`template ${dir} already exists: remove it first or give another --dir`);
    for (const [what, p] of [
      ['kernel', opts.kernel],
      ['initrd', opts.initrd],
      ['rootfs', opts.rootfs],
    ] as const)
      if (p !== undefined && !existsSync(p)) throw new SandboxError(`template: the ${what} ${p} does not exist`);
    const madeDir = !existsSync(dir);
    mkdirSync(dir, { recursive: true });
    const scratch = mkdtempSync(join(tmpdir(), 'vireo-template-'));
    const made: string[] = [];
    let vm: Vm | undefined;
    try {
      const cmdline = opts.cmdline ?? TEMPLATE_DEFAULT_CMDLINE + (opts.rootfs ? ' root=/dev/vda rw' : '');
      const rootfsPath = join(dir, ROOTFS_FILE);
      if (opts.rootfs) {
        made.push(rootfsPath);
        copyFileSync(opts.rootfs, rootfsPath, constants.COPYFILE_FICLONE);
      }
      const udsPath = join(scratch, 'vsock');
      const serialPath = join(scratch, 'serial.log');
      const t0 = performance.now();
      vm = await Vm.create({
        kernel: opts.kernel,
        initrd: opts.initrd,
        cmdline,
        cpus: opts.cpus,
        memMiB: opts.memMiB,
        drives: opts.rootfs ? [{ id: 'rootfs', path: rootfsPath }] : [],
        rng: true,
        vsock: { cid: TEMPLATE_VSOCK_CID, udsPath },
        serial: { kind: 'file', path: serialPath },
        kvmPath: opts.kvmPath,
      });
      vm.start();
      const bootMs = opts.bootTimeoutMs ?? 60_000;
      const agent = new AgentClient({
        endpoint: hybridVsockEndpoint(udsPath, AGENT_VSOCK_PORT),
        timeouts: opts.agentTimeouts,
      });
      try {
        await agent.waitReady({ timeoutMs: bootMs });
      } catch (e) {
        let log = '';
        try {
          log = readFileSync(serialPath, 'utf8').trimEnd().split('\n').slice(-3).join(' | ').slice(-300);
        } catch {}
        throw new SandboxError(`template: the agent did not answer within ${bootMs} ms of boot; console: ${log}`, {
          cause: e,
        });
      }
      const readyAt = performance.now();
      await vm.pause();
      const partState = join(dir, `.${STATE_FILE}.partial`);
      const partMem = join(dir, `.${MEMORY_FILE}.partial`);
      made.push(partState, partMem);
      await vm.snapshot({ statePath: partState, memPath: partMem });
      const snapshotMs = performance.now() - readyAt;
      // The disk as the snapshot left it: nothing runs the guest again before it stops.
      await vm.stop();
      vm = undefined;
      const statePath = join(dir, STATE_FILE);
      const memPath = join(dir, MEMORY_FILE);
      made.push(statePath, memPath);
      renameSync(partState, statePath);
      renameSync(partMem, memPath);
      // Clones read the template's files and never write them.
      for (const p of [statePath, memPath, ...(opts.rootfs ? [rootfsPath] : [])]) chmodSync(p, 0o444);
      const manifest: TemplateManifest = {
        vireoTemplate: TEMPLATE_MANIFEST_VERSION,
        createdAt: new Date().toISOString(),
        kernel: resolve(opts.kernel),
        initrd: opts.initrd !== undefined ? resolve(opts.initrd) : undefined,
        cmdline,
        rootfs: opts.rootfs ? ROOTFS_FILE : undefined,
        cpus: opts.cpus ?? DEFAULT_MACHINE.cpus,
        memMiB: opts.memMiB ?? DEFAULT_MACHINE.memMiB,
        vsockCid: TEMPLATE_VSOCK_CID,
        state: STATE_FILE,
        memory: MEMORY_FILE,
      };
      const partManifest = join(dir, `.${TEMPLATE_MANIFEST}.partial`);
      made.push(partManifest);
      writeFileSync(partManifest, `${JSON.stringify(manifest, null, 2)}\n`);
      renameSync(partManifest, join(dir, TEMPLATE_MANIFEST));
      return { ...loadTemplate(dir), bootMs: readyAt - t0, snapshotMs };
    } catch (e) {
      await vm?.stop().catch(() => undefined);
      if (madeDir) rmSync(dir, { recursive: true, force: true });
      else for (const p of made) rmSync(p, { force: true });
      throw e;
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  },
};
