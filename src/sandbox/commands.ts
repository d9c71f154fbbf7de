/**
 * `sb.commands`: E2B's Commands in vireo — run (foreground or background), connect to a running
 * command by pid, list, kill, stdin — over the agent's process.Process service.
 *
 * Timeouts: `timeoutMs` bounds a command's whole run (it is killed after; none when not given — the
 * stream's keepalive still detects a dead agent); `requestTimeoutMs` bounds each call to the agent
 * (the start event, a signal, stdin), the sandbox's requestTimeoutMs when not given.
 */
import { Code, ConnectError } from '@connectrpc/connect';
import type { AgentClient } from '../agent/client.js';
import { AgentError, agentErrorFrom } from '../agent/errors.js';
import type { ConnectResponse, ProcessEvent, StartResponse } from '../agent/gen/process_pb.js';
import { Signal } from '../agent/gen/process_pb.js';
import { CommandHandle, type OutputHandlers } from './command-handle.js';
import type { CommandResult } from './errors.js';

export interface CommandRequestOpts {
  requestTimeoutMs?: number | undefined;
}

export interface CommandStartOpts extends OutputHandlers, CommandRequestOpts {
  /** Keep stdin open for sendStdin (true), or send these bytes and close it. Default: closed. */
  stdin?: boolean | string | Uint8Array | undefined;
  cwd?: string | undefined;
  envs?: Record<string, string> | undefined;
  /** The guest user it runs as (the sandbox's default user when not given). */
  user?: string | undefined;
  /** Kill the command after this long (ms); none when not given or 0. */
  timeoutMs?: number | undefined;
  /** Return a CommandHandle at once instead of waiting for the exit. */
  background?: boolean | undefined;
  /** envd's tag, to find the process again by name. */
  tag?: string | undefined;
}

export interface CommandConnectOpts extends OutputHandlers, CommandRequestOpts {
  timeoutMs?: number | undefined;
}

export interface ProcessInfo {
  pid: number;
  tag?: string | undefined;
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  cwd?: string | undefined;
}

export class Commands {
  /** @internal */
  constructor(
    private readonly agent: AgentClient,
    /** The shell a command line is given to (`[...shell, cmd]`). */
    private readonly shell: readonly string[],
  ) {}

  run(cmd: string, opts: CommandStartOpts & { background: true }): Promise<CommandHandle>;
  run(cmd: string, opts?: CommandStartOpts & { background?: false | undefined }): Promise<CommandResult>;
  async run(cmd: string, opts: CommandStartOpts = {}): Promise<CommandHandle | CommandResult> {
    const h = await this.start(cmd, opts);
    return opts.background ? h : h.wait();
  }

  /** Attaches to a running command by pid: its output from now on, and its exit. */
  async connect(pid: number, opts: CommandConnectOpts = {}): Promise<CommandHandle> {
    checkPid(pid);
    const ac = new AbortController();
    const stream = this.agent.process.connect(
      { process: { selector: { case: 'pid', value: pid } } },
      { ...this.agent.callOptions({ timeoutMs: 0 }), signal: ac.signal },
    );
    return this.open(stream, ac, `pid ${pid}`, opts, opts.timeoutMs, (got) =>
      got === pid ? undefined : `the agent answered Connect(${pid}) with pid ${got}`,
    );
  }

  async list(opts: CommandRequestOpts = {}): Promise<ProcessInfo[]> {
    try {
      const r = await this.agent.process.list({}, this.agent.callOptions({ timeoutMs: opts.requestTimeoutMs }));
      return r.processes.map((p) => ({
        pid: p.pid,
        tag: p.tag,
        cmd: p.config?.cmd ?? '',
        args: p.config?.args ?? [],
        envs: p.config?.envs ?? {},
        cwd: p.config?.cwd,
      }));
    } catch (e) {
      throw agentErrorFrom(e, 'listing processes');
    }
  }

  /** SIGKILL; false when no such process. */
  async kill(pid: number, opts: CommandRequestOpts = {}): Promise<boolean> {
    checkPid(pid);
    try {
      await this.agent.process.sendSignal(
        { process: { selector: { case: 'pid', value: pid } }, signal: Signal.SIGKILL },
        this.agent.callOptions({ timeoutMs: opts.requestTimeoutMs }),
      );
      return true;
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.NotFound) return false;
      throw agentErrorFrom(e, `killing pid ${pid}`);
    }
  }

  async sendStdin(pid: number, data: string | Uint8Array, opts: CommandRequestOpts = {}): Promise<void> {
    checkPid(pid);
    try {
      await this.agent.process.sendInput(
        {
          process: { selector: { case: 'pid', value: pid } },
          input: { input: { case: 'stdin', value: typeof data === 'string' ? Buffer.from(data) : data } },
        },
        this.agent.callOptions({ timeoutMs: opts.requestTimeoutMs }),
      );
    } catch (e) {
      throw agentErrorFrom(e, `sending stdin to pid ${pid}`);
    }
  }

  async closeStdin(pid: number, opts: CommandRequestOpts = {}): Promise<void> {
    checkPid(pid);
    try {
      await this.agent.process.closeStdin(
        { process: { selector: { case: 'pid', value: pid } } },
        this.agent.callOptions({ timeoutMs: opts.requestTimeoutMs }),
      );
    } catch (e) {
      throw agentErrorFrom(e, `closing stdin of pid ${pid}`);
    }
  }

  private async start(cmd: string, opts: CommandStartOpts): Promise<CommandHandle> {
    if (typeof cmd !== 'string' || cmd === '')
      throw new AgentError('VIREO_ERR_AGENT', 'a command needs a command line');
    const feed = typeof opts.stdin === 'string' || opts.stdin instanceof Uint8Array ? opts.stdin : undefined;
    const ac = new AbortController();
    const stream = this.agent.process.start(
      {
        process: {
          cmd: this.shell[0] ?? '/bin/sh',
          args: [...this.shell.slice(1), cmd],
          envs: opts.envs ?? {},
          cwd: opts.cwd,
        },
        stdin: opts.stdin !== undefined && opts.stdin !== false,
        tag: opts.tag,
      },
      { ...this.agent.callOptions({ user: opts.user, timeoutMs: 0 }), signal: ac.signal },
    );
    const what = `command ${JSON.stringify(cmd.length > 60 ? `${cmd.slice(0, 57)}...` : cmd)}`;
    const h = await this.open(stream, ac, what, opts, opts.timeoutMs, () => undefined);
    if (feed !== undefined) {
      try {
        await h.sendStdin(feed);
        await h.closeStdin();
      } catch (e) {
        // A command left waiting for input it will not get: end it rather than leave it behind.
        await h.kill().catch(() => false);
        await h.disconnect();
        throw e;
      }
    }
    return h;
  }

  /** Waits (at most the request timeout) for the stream's start event, then hands the rest to a CommandHandle. */
  private async open(
    stream: AsyncIterable<StartResponse | ConnectResponse>,
    ac: AbortController,
    what: string,
    opts: OutputHandlers & CommandRequestOpts,
    timeoutMs: number | undefined,
    check: (pid: number) => string | undefined,
  ): Promise<CommandHandle> {
    const it = events(stream);
    const limit = opts.requestTimeoutMs ?? this.agent.timeouts.requestTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    let pid: number;
    try {
      pid = await Promise.race([
        (async () => {
          for (;;) {
            const r = await it.next();
            if (r.done)
              throw new AgentError('VIREO_ERR_AGENT', `the agent ended the stream of ${what} before it started`);
            const ev = r.value?.event;
            if (ev?.case === 'start') return ev.value.pid;
            if (ev?.case !== 'keepalive')
              throw new AgentError('VIREO_ERR_AGENT', `the agent sent ${ev?.case ?? 'nothing'} before ${what} started`);
          }
        })(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new AgentError('VIREO_ERR_AGENT_TIMEOUT', `${what} did not start within ${limit} ms`)),
            limit,
          );
        }),
      ]);
    } catch (e) {
      ac.abort();
      throw agentErrorFrom(e, what);
    } finally {
      clearTimeout(timer);
    }
    const bad = check(pid);
    if (bad) {
      ac.abort();
      throw new AgentError('VIREO_ERR_AGENT', bad);
    }
    return new CommandHandle(
      pid,
      it,
      {
        kill: () => this.kill(pid, opts),
        sendStdin: (d) => this.sendStdin(pid, d, opts),
        closeStdin: () => this.closeStdin(pid, opts),
        disconnect: () => ac.abort(),
      },
      opts,
      what,
      timeoutMs,
    );
  }
}

async function* events(
  stream: AsyncIterable<StartResponse | ConnectResponse>,
): AsyncGenerator<ProcessEvent | undefined> {
  for await (const r of stream) yield r.event;
}

function checkPid(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0 || pid > 0xffffffff)
    throw new AgentError('VIREO_ERR_AGENT', `pid ${pid} is not a process id: give a positive integer`);
}
