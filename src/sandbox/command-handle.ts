/**
 * A running command: its events (start, output, end, keepalive) from the agent's Start or Connect
 * stream, gathered into stdout/stderr and an exit, with E2B's CommandHandle verbs.
 */

import { AgentError, agentErrorFrom } from '../agent/errors.js';
import type { ProcessEvent } from '../agent/gen/process_pb.js';
import { CommandExitError, type CommandResult, CommandTimeoutError, SandboxError } from './errors.js';

export interface CommandControl {
  kill(): Promise<boolean>;
  sendStdin(data: Uint8Array): Promise<void>;
  closeStdin(): Promise<void>;
  /** Ends the stream from the agent (the command goes on). */
  disconnect(): void;
}

export interface OutputHandlers {
  onStdout?: ((data: string) => void | Promise<void>) | undefined;
  onStderr?: ((data: string) => void | Promise<void>) | undefined;
}

export class CommandHandle {
  readonly pid: number;
  private _stdout = '';
  private _stderr = '';
  private result: CommandResult | undefined;
  private disconnected = false;
  private timedOut = false;
  private readonly ended: Promise<CommandResult>;
  private readonly outDecoder = new TextDecoder();
  private readonly errDecoder = new TextDecoder();
  private timer: NodeJS.Timeout | undefined;

  /** @internal Commands makes these once the stream's start event named the pid. */
  constructor(
    pid: number,
    events: AsyncIterator<ProcessEvent | undefined>,
    private readonly control: CommandControl,
    private readonly handlers: OutputHandlers,
    private readonly what: string,
    timeoutMs: number | undefined,
  ) {
    this.pid = pid;
    this.ended = this.pump(events);
    this.ended.catch(() => undefined); // wait() is where it is seen; a background handle may never wait
    if (timeoutMs !== undefined && timeoutMs > 0) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        void this.control
          .kill()
          .catch(() => false)
          .finally(() => this.control.disconnect());
      }, timeoutMs);
      this.timeoutMs = timeoutMs;
    }
  }

  private timeoutMs = 0;

  get stdout(): string {
    return this._stdout;
  }

  get stderr(): string {
    return this._stderr;
  }

  /** The exit code once it ended, else undefined. */
  get exitCode(): number | undefined {
    return this.result?.exitCode;
  }

  get error(): string | undefined {
    return this.result?.error;
  }

  /** The result once the command ends; a non-zero exit throws CommandExitError (with the output). */
  async wait(): Promise<CommandResult> {
    const r = await this.ended;
    if (r.exitCode !== 0) throw new CommandExitError(r, this.what);
    return r;
  }

  /** SIGKILL; true when the agent found the process. */
  kill(): Promise<boolean> {
    return this.control.kill();
  }

  sendStdin(data: string | Uint8Array): Promise<void> {
    return this.control.sendStdin(typeof data === 'string' ? Buffer.from(data) : data);
  }

  closeStdin(): Promise<void> {
    return this.control.closeStdin();
  }

  /** Stops receiving the command's events; it goes on running (commands.connect(pid) finds it again). */
  async disconnect(): Promise<void> {
    this.disconnected = true;
    this.control.disconnect();
  }

  private async pump(events: AsyncIterator<ProcessEvent | undefined>): Promise<CommandResult> {
    try {
      for (;;) {
        let r: IteratorResult<ProcessEvent | undefined>;
        try {
          r = await events.next();
        } catch (e) {
          throw this.streamError(e);
        }
        if (r.done) break;
        const ev = r.value?.event;
        if (ev === undefined) continue;
        if (ev.case === 'data') {
          const out = ev.value.output;
          if (out.case === 'stdout') {
            const s = this.outDecoder.decode(out.value, { stream: true });
            this._stdout += s;
            if (s) await this.handlers.onStdout?.(s);
          } else if (out.case === 'stderr') {
            const s = this.errDecoder.decode(out.value, { stream: true });
            this._stderr += s;
            if (s) await this.handlers.onStderr?.(s);
          }
        } else if (ev.case === 'end') {
          this.flush();
          if (this.timedOut) throw this.timeoutError();
          const e = ev.value;
          this.result = {
            exitCode: e.exitCode,
            error: e.error !== undefined && e.error !== '' ? e.error : e.exited ? undefined : e.status || undefined,
            stdout: this._stdout,
            stderr: this._stderr,
          };
          return this.result;
        }
      }
      throw this.streamError(undefined);
    } finally {
      if (this.timer) clearTimeout(this.timer);
    }
  }

  private flush(): void {
    this._stdout += this.outDecoder.decode();
    this._stderr += this.errDecoder.decode();
  }

  private timeoutError(): CommandTimeoutError {
    return new CommandTimeoutError(this.what, this.timeoutMs, { stdout: this._stdout, stderr: this._stderr });
  }

  private streamError(e: unknown): Error {
    this.flush();
    if (this.timedOut) return this.timeoutError();
    if (this.disconnected) return new SandboxError(`${this.what} (pid ${this.pid}): disconnected before it ended`);
    if (e === undefined)
      return new AgentError(
        'VIREO_ERR_AGENT',
        `the agent ended the stream of ${this.what} (pid ${this.pid}) without its exit`,
      );
    return agentErrorFrom(e, `${this.what} (pid ${this.pid})`);
  }
}
