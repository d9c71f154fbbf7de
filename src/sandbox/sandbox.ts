/**
 * A sandbox in E2B's shape: a vireo VM with a vsock device whose guest runs vireo's agent (envd's
 * protocol), and the verbs users know — `sb.commands`, `sb.files`, `sb.getHost(port)`,
 * `sb.setTimeout`, `sb.kill`, `sb.pause`/`resume`, `sb.snapshot`.
 *
 * `Sandbox.create` boots a VM and waits for the agent's /health (bootTimeoutMs), then POSTs /init (env
 * vars, an access token of its own, the default user and workdir, the host's clock).
 * `Sandbox.attach` wraps an agent reached some other way (one on this host, for tests and debugging):
 * the same commands and files, without the VM verbs.
 */
import { randomBytes } from 'node:crypto';
import { channel } from 'node:diagnostics_channel';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient, type AgentTimeouts } from '../agent/client.js';
import { AGENT_VSOCK_PORT, type AgentEndpoint, hybridVsockEndpoint } from '../agent/connector.js';
import { createQcow2Overlay } from '../backends/qcow2/create.js';
import type { DriveConfig } from '../config/index.js';
import type { SerialConfig } from '../config/serial.js';
import { type RestoreOverrides, type SnapshotResult, Vm } from '../vmm/vm.js';
import { Commands } from './commands.js';
import { SandboxError } from './errors.js';
import { Files } from './files.js';
import { forwardPort, type PortForward } from './port-forward.js';
import { loadTemplate } from './template.js';

/**
 * Where a clone's create is, published on diagnostics_channel `vireo:sandbox:phase` as
 * `{ dir, phase }` (phase: restored, agent-ready, initialized); free when nobody subscribes.
 */
export const sandboxPhase = channel('vireo:sandbox:phase');

/** vireo's own boot line (the CLI's default), for a sandbox that does not give one. */
export const SANDBOX_DEFAULT_CMDLINE =
  'console=ttyS0 reboot=k panic=1 pci=off nokaslr i8042.noaux i8042.nomux i8042.dumbkbd';

/** E2B's default lifetime: a sandbox is killed this long after create (or its last setTimeout). */
export const SANDBOX_DEFAULT_TIMEOUT_MS = 300_000;
/** How long create waits for the guest to boot and its agent to answer /health. */
export const SANDBOX_DEFAULT_BOOT_TIMEOUT_MS = 60_000;

interface CommonOpts {
  /** Environment variables for every command (the agent's /init envVars). */
  envs?: Record<string, string> | undefined;
  /** Kept with the sandbox for its owner (E2B's metadata); vireo does not read it. */
  metadata?: Record<string, string> | undefined;
  /** The guest user commands and file operations run as unless they say (the agent's default otherwise). */
  user?: string | undefined;
  /** The working directory commands start in unless they say. */
  workdir?: string | undefined;
  /** Killed this long (ms) after create or the last setTimeout; 0 for never. Default SANDBOX_DEFAULT_TIMEOUT_MS. */
  timeoutMs?: number | undefined;
  /** The agent's timeouts (connect, each request, keepalive): AGENT_DEFAULT_TIMEOUTS where not given. */
  agentTimeouts?: Partial<AgentTimeouts> | undefined;
  /** How a command line is run: `[...shell, cmd]`. Default `['/bin/sh', '-c']` (E2B uses bash -l -c). */
  shell?: readonly string[] | undefined;
}

export interface SandboxCreateOpts extends CommonOpts {
  /**
   * A template directory (`vireo template build`): the sandbox is a clone restored from its snapshot
   * instead of a boot (kernel, initrd, cmdline, rootfs, cpus and memMiB are the template's then).
   */
  template?: string | undefined;
  /** The kernel to boot (needed without a template). */
  kernel?: string | undefined;
  initrd?: string | undefined;
  cmdline?: string | undefined;
  /** A root disk image: /dev/vda, writable; `root=/dev/vda rw` is added to the default command line. */
  rootfs?: string | undefined;
  /** More drives after the root disk. */
  drives?: DriveConfig[] | undefined;
  cpus?: number | undefined;
  memMiB?: number | undefined;
  /** Where the guest's serial console goes; default a file in the sandbox's directory (sb.serialLog()). */
  serial?: SerialConfig | undefined;
  bootTimeoutMs?: number | undefined;
  kvmPath?: string | undefined;
}

export interface SandboxAttachOpts extends CommonOpts {
  /** The agent: a client, or an endpoint to make one for. */
  agent: AgentClient | AgentEndpoint;
  /** POST /init first (default true). */
  init?: boolean | undefined;
}

export class Sandbox {
  readonly sandboxId: string;
  readonly commands: Commands;
  readonly files: Files;
  readonly metadata: Readonly<Record<string, string>>;
  /** The agent's client, for what Sandbox does not wrap (its raw process and filesystem services). */
  readonly agent: AgentClient;
  private lifeTimer: NodeJS.Timeout | undefined;
  private lifeMs: number;
  private lifeEnds = 0;
  private readonly forwards = new Map<number, Promise<PortForward>>();
  private killed: Promise<void> | undefined;

  private constructor(
    agent: AgentClient,
    opts: CommonOpts,
    private readonly vm: Vm | undefined,
    private readonly dir: string | undefined,
  ) {
    this.sandboxId = `vireo-${randomBytes(6).toString('hex')}`;
    this.agent = agent;
    this.commands = new Commands(agent, opts.shell ?? ['/bin/sh', '-c']);
    this.files = new Files(agent);
    this.metadata = Object.freeze({ ...opts.metadata });
    this.lifeMs = opts.timeoutMs ?? SANDBOX_DEFAULT_TIMEOUT_MS;
    checkMs('timeoutMs', this.lifeMs, true);
    this.armLife(this.lifeMs);
  }

  /** Boots a VM with the agent in its guest and waits until the agent answers. */
  static async create(opts: SandboxCreateOpts): Promise<Sandbox> {
    if (opts.template !== undefined) return Sandbox.clone(opts, opts.template);
    if (opts.kernel === undefined) throw new SandboxError('Sandbox.create: give a template or a kernel to boot');
    const bootMs = opts.bootTimeoutMs ?? SANDBOX_DEFAULT_BOOT_TIMEOUT_MS;
    checkMs('bootTimeoutMs', bootMs, false);
    checkMs('timeoutMs', opts.timeoutMs ?? SANDBOX_DEFAULT_TIMEOUT_MS, true);
    const dir = mkdtempSync(join(tmpdir(), 'vireo-sandbox-'));
    const udsPath = join(dir, 'vsock');
    const serialPath = join(dir, 'serial.log');
    let vm: Vm | undefined;
    try {
      const drives: DriveConfig[] = [
        ...(opts.rootfs ? [{ id: 'rootfs', path: opts.rootfs }] : []),
        ...(opts.drives ?? []),
      ];
      vm = await Vm.create({
        kernel: opts.kernel,
        initrd: opts.initrd,
        cmdline: opts.cmdline ?? SANDBOX_DEFAULT_CMDLINE + (opts.rootfs ? ' root=/dev/vda rw' : ''),
        cpus: opts.cpus,
        memMiB: opts.memMiB,
        drives,
        rng: true,
        vsock: { cid: 3, udsPath },
        serial: opts.serial ?? { kind: 'file', path: serialPath },
        kvmPath: opts.kvmPath,
      });
      vm.start();
      const token = randomBytes(24).toString('base64url');
      const agent = new AgentClient({
        endpoint: hybridVsockEndpoint(udsPath, AGENT_VSOCK_PORT),
        timeouts: opts.agentTimeouts,
      });
      const exited = vm.waitForExit().then((x) => {
        throw new SandboxError(`the sandbox's VM ended while booting: ${x.message}${tail(serialPath)}`);
      });
      const ac = new AbortController();
      try {
        await Promise.race([agent.waitReady({ timeoutMs: bootMs, signal: ac.signal }), exited]);
      } catch (e) {
        throw e instanceof SandboxError
          ? e
          : new SandboxError(`the sandbox's agent did not answer within ${bootMs} ms of boot${tail(serialPath)}`, {
              cause: e,
            });
      } finally {
        ac.abort();
        exited.catch(() => undefined);
      }
      await agent.init({
        envVars: opts.envs,
        accessToken: token,
        defaultUser: opts.user,
        defaultWorkdir: opts.workdir,
      });
      return new Sandbox(agent, opts, vm, dir);
    } catch (e) {
      await vm?.stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  /**
   * A clone of a template: the snapshot restored with this sandbox's own vsock socket and (over the
   * template's root disk) its own qcow2 overlay, guest memory mapped MAP_PRIVATE from the template's
   * memory file; then /init (a fresh token, the host's clock) and the guest's RNG fed host bytes.
   */
  private static async clone(opts: SandboxCreateOpts, templateDir: string): Promise<Sandbox> {
    for (const k of ['kernel', 'initrd', 'cmdline', 'rootfs', 'drives'] as const)
      if (opts[k] !== undefined)
        throw new SandboxError(
          `Sandbox.create: ${k} comes from the template when cloning ${templateDir}; leave it out`,
        );
    const t = loadTemplate(templateDir);
    for (const k of ['cpus', 'memMiB'] as const) {
      const v = opts[k];
      if (v !== undefined && v !== t.manifest[k])
        throw new SandboxError(`Sandbox.create: template ${t.dir} has ${k} ${t.manifest[k]}; a clone cannot have ${v}`);
    }
    const bootMs = opts.bootTimeoutMs ?? SANDBOX_DEFAULT_BOOT_TIMEOUT_MS;
    checkMs('bootTimeoutMs', bootMs, false);
    checkMs('timeoutMs', opts.timeoutMs ?? SANDBOX_DEFAULT_TIMEOUT_MS, true);
    const dir = mkdtempSync(join(tmpdir(), 'vireo-sandbox-'));
    const udsPath = join(dir, 'vsock');
    const serialPath = join(dir, 'serial.log');
    let vm: Vm | undefined;
    try {
      const overrides: RestoreOverrides = { vsockUdsPath: udsPath };
      if (t.rootfsPath) {
        const disk = join(dir, 'rootfs.qcow2');
        createQcow2Overlay(disk, t.rootfsPath);
        overrides.drives = { rootfs: { path: disk, format: 'qcow2' } };
      }
      vm = await Vm.restore({
        statePath: t.statePath,
        memPath: t.memPath,
        resume: true,
        serial: opts.serial ?? { kind: 'file', path: serialPath },
        kvmPath: opts.kvmPath,
        overrides,
      });
      sandboxPhase.publish({ dir, phase: 'restored' });
      const agent = new AgentClient({
        endpoint: hybridVsockEndpoint(udsPath, AGENT_VSOCK_PORT),
        timeouts: opts.agentTimeouts,
      });
      try {
        await agent.waitReady({ timeoutMs: bootMs });
      } catch (e) {
        throw new SandboxError(
          `the clone's agent did not answer within ${bootMs} ms of its restore${tail(serialPath)}`,
          {
            cause: e,
          },
        );
      }
      sandboxPhase.publish({ dir, phase: 'agent-ready' });
      // A fresh token, the host's clock, and host entropy the agent reseeds the guest's CRNG from:
      // every clone starts from the template's CRNG state otherwise.
      await agent.init({
        envVars: opts.envs,
        accessToken: randomBytes(24).toString('base64url'),
        defaultUser: opts.user,
        defaultWorkdir: opts.workdir,
        vireoEntropy: randomBytes(64).toString('base64'),
      });
      sandboxPhase.publish({ dir, phase: 'initialized' });
      return new Sandbox(agent, opts, vm, dir);
    } catch (e) {
      await vm?.stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  /** A sandbox around an agent reached without a vireo VM (commands and files only). */
  static async attach(opts: SandboxAttachOpts): Promise<Sandbox> {
    const agent =
      opts.agent instanceof AgentClient
        ? opts.agent
        : new AgentClient({ endpoint: opts.agent, timeouts: opts.agentTimeouts });
    if (opts.init ?? true)
      await agent.init({
        envVars: opts.envs,
        accessToken: randomBytes(24).toString('base64url'),
        defaultUser: opts.user,
        defaultWorkdir: opts.workdir,
      });
    return new Sandbox(agent, opts, undefined, undefined);
  }

  /** Whether the agent answers /health now. */
  async isRunning(opts: { requestTimeoutMs?: number | undefined } = {}): Promise<boolean> {
    if (this.killed) return false;
    try {
      await this.agent.health({ timeoutMs: opts.requestTimeoutMs });
      return true;
    } catch {
      return false;
    }
  }

  /** Kill the sandbox `timeoutMs` from now instead (0: never). */
  setTimeout(timeoutMs: number): void {
    checkMs('timeoutMs', timeoutMs, true);
    this.live();
    this.lifeMs = timeoutMs;
    this.armLife(timeoutMs);
  }

  /**
   * `host:port` on this host's loopback, carried to TCP `port` in the guest through the agent (one
   * listener per guest port, kept until kill()).
   */
  async getHost(port: number): Promise<string> {
    this.live();
    let f = this.forwards.get(port);
    if (!f) {
      f = forwardPort(this.agent.endpoint, port, {
        connectTimeoutMs: this.agent.timeouts.connectTimeoutMs,
        accessToken: this.agent.accessToken,
      });
      this.forwards.set(port, f);
      f.catch(() => this.forwards.delete(port));
    }
    return (await f).address;
  }

  /** Stops the guest's vCPUs; its lifetime clock stops too. */
  async pause(): Promise<void> {
    const vm = this.needVm('pause');
    await vm.pause();
    if (this.lifeTimer) {
      clearTimeout(this.lifeTimer);
      this.lifeTimer = undefined;
      this.lifeMs = Math.max(1, this.lifeEnds - Date.now());
    }
  }

  async resume(): Promise<void> {
    const vm = this.needVm('resume');
    await vm.resume();
    this.armLife(this.lifeMs);
  }

  /**
   * A full snapshot of the VM (`dir/state`, `dir/memory`), paused for the moment it takes and running
   * again after if it was running. (The root disk is the caller's to copy alongside.)
   */
  async snapshot(dir: string): Promise<SnapshotResult & { statePath: string; memPath: string }> {
    const vm = this.needVm('snapshot');
    const wasRunning = vm.state === 'running';
    if (wasRunning) await vm.pause();
    try {
      const statePath = join(dir, 'state');
      const memPath = join(dir, 'memory');
      const r = await vm.snapshot({ statePath, memPath });
      return { ...r, statePath, memPath };
    } finally {
      if (wasRunning) await vm.resume();
    }
  }

  /** The sandbox's own directory (its vsock socket, serial log), removed by kill(); none when attached. */
  get directory(): string | undefined {
    return this.dir;
  }

  /** The guest's serial console so far (when it goes to the sandbox's own file). */
  serialLog(): string {
    if (!this.dir) return '';
    try {
      return readFileSync(join(this.dir, 'serial.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** Stops the VM, closes the forwarded ports and removes the sandbox's files. Idempotent. */
  kill(): Promise<void> {
    this.killed ??= (async () => {
      if (this.lifeTimer) clearTimeout(this.lifeTimer);
      this.lifeTimer = undefined;
      for (const f of this.forwards.values()) await f.then((x) => x.close()).catch(() => undefined);
      this.forwards.clear();
      await this.vm?.stop();
      if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    })();
    return this.killed;
  }

  private armLife(ms: number): void {
    if (this.lifeTimer) clearTimeout(this.lifeTimer);
    this.lifeTimer = undefined;
    if (ms === 0) return;
    this.lifeEnds = Date.now() + ms;
    this.lifeTimer = setTimeout(() => void this.kill().catch(() => undefined), ms);
    this.lifeTimer.unref();
  }

  private live(): void {
    if (this.killed) throw new SandboxError(`sandbox ${this.sandboxId} was killed`);
  }

  private needVm(what: string): Vm {
    this.live();
    if (!this.vm)
      throw new SandboxError(
        `cannot ${what} sandbox ${this.sandboxId}: it was attached to an agent, not created with a VM`,
      );
    return this.vm;
  }
}

function checkMs(name: string, v: number, zeroOk: boolean): void {
  if (!Number.isFinite(v) || v < 0 || (!zeroOk && v === 0) || !Number.isInteger(v))
    throw new SandboxError(`${name} ${v}: give whole milliseconds${zeroOk ? ' (0 for none)' : ' above 0'}`);
}

/** The last lines of the serial log, for a boot failure's message. */
function tail(path: string): string {
  try {
    const lines = readFileSync(path, 'utf8').trimEnd().split('\n').slice(-3).join(' | ');
    return lines ? `; the console's last lines: ${lines.slice(-300)}` : '';
  } catch {
    return '';
  }
}
