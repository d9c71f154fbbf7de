/**
 * vireo as a library: `import { Vm } from 'vireo'`. The VM, its configuration types and typed errors;
 * the serial console as streams; and the Firecracker-compatible API server for programs that serve it
 * themselves.
 */

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
