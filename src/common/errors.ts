/**
 * Typed errors with stable codes. Every failure a user can meet has one class and one code;
 * the message says what is wrong and what to do about it, on one line.
 */
import { getSystemErrorName } from 'node:util';

export type VireoErrorCode =
  | 'VIREO_ERR_NO_KVM'
  | 'VIREO_ERR_KVM_PERMISSION'
  | 'VIREO_ERR_KVM_API_VERSION'
  | 'VIREO_ERR_KVM_CAPABILITY'
  | 'VIREO_ERR_IOCTL'
  | 'VIREO_ERR_SYSCALL'
  | 'VIREO_ERR_MEMORY_LAYOUT'
  | 'VIREO_ERR_GUEST_MEMORY_ACCESS'
  | 'VIREO_ERR_BUS_CONFLICT'
  | 'VIREO_ERR_BAD_IMAGE'
  /** A qcow2 disk image is malformed or uses a feature vireo does not have (src/backends/qcow2). */
  | 'VIREO_ERR_QCOW2'
  | 'VIREO_ERR_CONFIG'
  | 'VIREO_ERR_VCPU'
  | 'VIREO_ERR_VM'
  | 'VIREO_ERR_STATE'
  | 'VIREO_ERR_SNAPSHOT'
  | 'VIREO_ERR_SNAPSHOT_VERSION'
  | 'VIREO_ERR_SNAPSHOT_CORRUPT'
  | 'VIREO_ERR_KIT'
  | 'VIREO_ERR_NESTED'
  /** passt (the user-mode network's helper) is missing, exited or refused to start. */
  | 'VIREO_ERR_PASST'
  /** passt's stream carried a frame length vireo does not take: the connection is dropped. */
  | 'VIREO_ERR_PASST_FRAME'
  /** Firecracker-compatible API (src/api): a malformed or invalid request (HTTP 400). */
  | 'VIREO_ERR_API_BAD_REQUEST'
  /** A request the microVM's current state does not allow (e.g. configuration after InstanceStart). */
  | 'VIREO_ERR_API_STATE'
  /** A request for a Firecracker feature vireo does not have (MMDS, pmem, hotplug, ...). */
  | 'VIREO_ERR_API_UNSUPPORTED'
  /** A request body above the API's payload limit (51200 bytes unless configured). */
  | 'VIREO_ERR_API_PAYLOAD_TOO_LARGE'
  /** The guest agent cannot be reached (socket, hybrid vsock handshake) or broke its protocol. */
  | 'VIREO_ERR_AGENT'
  /** A call to the guest agent ran past its explicit timeout. */
  | 'VIREO_ERR_AGENT_TIMEOUT'
  /** A stream from the guest agent went silent past its keepalive interval. */
  | 'VIREO_ERR_AGENT_SILENT'
  /** The guest agent answered with an error (a missing file, a bad argument, a refused user). */
  | 'VIREO_ERR_AGENT_REMOTE'
  /** A sandbox cannot be created or used in its current state. */
  | 'VIREO_ERR_SANDBOX'
  /** A command in a sandbox exited non-zero (CommandExitError carries its output). */
  | 'VIREO_ERR_COMMAND_EXIT'
  /** A command in a sandbox ran past its timeout and was killed. */
  | 'VIREO_ERR_COMMAND_TIMEOUT'
  /** `vireo serve` (src/serve): a bad service configuration, or a request to it that cannot be served. */
  | 'VIREO_ERR_SERVE';

export class VireoError extends Error {
  readonly code: VireoErrorCode;
  constructor(code: VireoErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'VireoError';
  }
}

/** A snapshot cannot be written or restored; the message says why and what to do. */
export class SnapshotError extends VireoError {
  override name = 'SnapshotError';
}

/** The KVM device or one of its features is unusable on this host. */
export class KvmUnavailableError extends VireoError {
  override name = 'KvmUnavailableError';
}

/** A system call failed; carries errno and the call's name. */
export class SyscallError extends VireoError {
  override name = 'SyscallError';
  readonly errno: number;
  readonly call: string;
  constructor(call: string, errno: number, detail?: string) {
    super(
      call.startsWith('ioctl') ? 'VIREO_ERR_IOCTL' : 'VIREO_ERR_SYSCALL',
      `${call} failed: ${errnoName(errno)} (errno ${errno})${detail ? `: ${detail}` : ''}`,
    );
    this.errno = errno;
    this.call = call;
  }
}

/** A guest-physical access fell outside every memory region. */
export class GuestMemoryError extends VireoError {
  override name = 'GuestMemoryError';
  constructor(message: string) {
    super('VIREO_ERR_GUEST_MEMORY_ACCESS', message);
  }
}

/** A kernel or guest image could not be loaded. */
export class ImageError extends VireoError {
  override name = 'ImageError';
  constructor(message: string) {
    super('VIREO_ERR_BAD_IMAGE', message);
  }
}

/** User configuration is invalid. */
export class ConfigError extends VireoError {
  override name = 'ConfigError';
  constructor(message: string) {
    super('VIREO_ERR_CONFIG', message);
  }
}

/** The user-mode network (passt) failed: its process, or the frames on its socket. */
export class PasstError extends VireoError {
  override name = 'PasstError';
}

/** The symbolic name of a Linux errno (ECONNREFUSED for 111), or errnoN when the platform has none. */
export function errnoName(errno: number): string {
  try {
    const name = getSystemErrorName(-errno);
    return name.startsWith('Unknown') ? `errno${errno}` : name;
  } catch {
    return `errno${errno}`;
  }
}
