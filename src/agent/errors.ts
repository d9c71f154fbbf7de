/**
 * The guest agent's typed errors. Each has a stable code (common/errors.ts) and a one-line message
 * saying what failed and what to do.
 */
import { Code, ConnectError } from '@connectrpc/connect';
import { codeToString } from '@connectrpc/connect/protocol-connect';
import { VireoError, type VireoErrorCode } from '../common/errors.js';

export type AgentErrorCode = Extract<
  VireoErrorCode,
  'VIREO_ERR_AGENT' | 'VIREO_ERR_AGENT_TIMEOUT' | 'VIREO_ERR_AGENT_SILENT' | 'VIREO_ERR_AGENT_REMOTE'
>;

/** The agent cannot be reached, did not answer in time, went silent, or broke its protocol. */
export class AgentError extends VireoError {
  override name = 'AgentError';
  declare readonly code: AgentErrorCode;
  constructor(code: AgentErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** The agent answered an HTTP request with an error status; carries the status and the agent's message. */
export class AgentHttpError extends AgentError {
  override name = 'AgentHttpError';
  readonly status: number;
  constructor(status: number, message: string) {
    super('VIREO_ERR_AGENT_REMOTE', message);
    this.status = status;
  }
}

/** A Connect-RPC call the agent answered with an error: `rpcCode` is Connect's name for it (not_found, ...). */
export class AgentRpcError extends AgentError {
  override name = 'AgentRpcError';
  readonly rpcCode: string;
  constructor(rpcCode: string, message: string, options?: { cause?: unknown }) {
    super('VIREO_ERR_AGENT_REMOTE', message, options);
    this.rpcCode = rpcCode;
  }
}

/**
 * What a failed agent call means, as one typed error: the transport's own AgentError (unreachable,
 * silent, timed out) when that is the cause; a deadline as VIREO_ERR_AGENT_TIMEOUT; else the agent's
 * answer as AgentRpcError with its Connect code.
 */
export function agentErrorFrom(e: unknown, what: string): AgentError {
  if (e instanceof AgentError) return e;
  if (e instanceof ConnectError) {
    if (e.cause instanceof AgentError) return e.cause;
    if (e.code === Code.DeadlineExceeded)
      return new AgentError('VIREO_ERR_AGENT_TIMEOUT', `${what} did not finish in time: ${e.rawMessage}`, { cause: e });
    if (e.code === Code.Unavailable && !e.isWireError)
      return new AgentError('VIREO_ERR_AGENT', `${what}: the agent is unreachable: ${e.rawMessage}`, { cause: e });
    const name = codeToString(e.code);
    return new AgentRpcError(name, `${what}: ${name}: ${e.rawMessage}`, { cause: e });
  }
  return new AgentError('VIREO_ERR_AGENT', `${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}
