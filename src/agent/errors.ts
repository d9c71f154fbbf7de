/**
 * The guest agent's typed errors. Each has a stable code (common/errors.ts) and a one-line message
 * saying what failed and what to do.
 */
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
