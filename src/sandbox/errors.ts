/** The sandbox's typed errors (the agent's own are in agent/errors.ts and pass through unchanged). */
import { VireoError } from '../common/errors.js';

/** What a finished command gave: E2B's CommandResult. */
export interface CommandResult {
  exitCode: number;
  /** The agent's word on how the command ended, when it was not a plain exit (a signal, a failed start). */
  error?: string | undefined;
  stdout: string;
  stderr: string;
}

/** A sandbox cannot be created or used now; the message says why and what to do. */
export class SandboxError extends VireoError {
  override name = 'SandboxError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('VIREO_ERR_SANDBOX', message, options);
  }
}

/** A command exited non-zero; carries its exit code and output, as E2B's CommandExitError does. */
export class CommandExitError extends VireoError implements CommandResult {
  override name = 'CommandExitError';
  readonly exitCode: number;
  readonly error: string | undefined;
  readonly stdout: string;
  readonly stderr: string;
  constructor(result: CommandResult, what: string) {
    super(
      'VIREO_ERR_COMMAND_EXIT',
      `${what} exited with ${result.exitCode}${result.error ? ` (${result.error})` : ''}`,
    );
    this.exitCode = result.exitCode;
    this.error = result.error;
    this.stdout = result.stdout;
    this.stderr = result.stderr;
  }
}

/** A command ran past its timeoutMs and was killed; carries the output it gave until then. */
export class CommandTimeoutError extends VireoError {
  override name = 'CommandTimeoutError';
  readonly stdout: string;
  readonly stderr: string;
  constructor(what: string, timeoutMs: number, out: { stdout: string; stderr: string }) {
    super('VIREO_ERR_COMMAND_TIMEOUT', `${what} ran past its timeout of ${timeoutMs} ms and was killed`);
    this.stdout = out.stdout;
    this.stderr = out.stderr;
  }
}
