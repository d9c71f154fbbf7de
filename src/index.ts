/**
 * vireo as a library: `import { Vm } from 'vireo'`. The VM, its configuration types and typed errors;
 * the serial console as streams; the Firecracker-compatible API server for programs that serve it
 * themselves; and sandboxes in E2B's shape (`Sandbox`) with the guest agent's client under them.
 */

export {
  AGENT_DEFAULT_LIMITS,
  AGENT_DEFAULT_TIMEOUTS,
  AgentClient,
  type AgentClientOptions,
  type AgentLimits,
  type AgentTimeouts,
} from './agent/client.js';
export {
  AGENT_VSOCK_PORT,
  type AgentEndpoint,
  hybridVsockEndpoint,
  tcpEndpoint,
  unixEndpoint,
} from './agent/connector.js';
export { AgentError, AgentHttpError, AgentRpcError } from './agent/errors.js';
export { applyConfigFile } from './api/config-file.js';
export {
  type ControllerOptions,
  FIRECRACKER_DEFAULT_BOOT_ARGS,
  type Phase,
  VmController,
} from './api/controller.js';
export { ApiError } from './api/errors.js';
export { ApiServer, type ApiServerOptions, HTTP_MAX_PAYLOAD_SIZE } from './api/server.js';
export { apiVersion } from './api/spec.js';
export {
  ConfigError,
  GuestMemoryError,
  ImageError,
  KvmUnavailableError,
  SyscallError,
  VireoError,
  type VireoErrorCode,
} from './common/errors.js';
export type {
  BalloonConfig,
  DriveConfig,
  NetConfig,
  PortForward,
  TapNetConfig,
  UserNetConfig,
} from './config/index.js';
export type { VsockConfig } from './devices/virtio/vsock/index.js';
export type { CommandHandle } from './sandbox/command-handle.js';
export type { CommandConnectOpts, CommandStartOpts, ProcessInfo } from './sandbox/commands.js';
export { CommandExitError, type CommandResult, CommandTimeoutError, SandboxError } from './sandbox/errors.js';
export type { EntryInfo, FilesystemEvent, WatchHandle, WriteInfo } from './sandbox/files.js';
export {
  SANDBOX_DEFAULT_BOOT_TIMEOUT_MS,
  SANDBOX_DEFAULT_TIMEOUT_MS,
  Sandbox,
  type SandboxAttachOpts,
  type SandboxCreateOpts,
} from './sandbox/sandbox.js';
export type { VcpuStop } from './vcpu/protocol.js';
export { type ConsoleStreams, type ConsoleStreamsBuilder, createConsoleStreams } from './vmm/console-stream.js';
export {
  describeExit,
  prewarmIoThread,
  prewarmVcpuThreads,
  type SerialConfig,
  Vm,
  type VmConfig,
  type VmEvents,
  type VmExit,
  type VmState,
} from './vmm/vm.js';
