/**
 * The request and response bodies of Firecracker's API, as TypeScript types (field names as in
 * spec/firecracker-api.yaml). Bodies are checked against the spec before they are used as these.
 */

export interface TokenBucket {
  size: number;
  refill_time: number;
  one_time_burst?: number;
}

export interface RateLimiter {
  bandwidth?: TokenBucket;
  ops?: TokenBucket;
}

export type CpuTemplate = 'C3' | 'T2' | 'T2S' | 'T2CL' | 'T2A' | 'V1N1' | 'None';
export type HugePages = 'None' | 'Transparent' | '2M';

export interface MachineConfiguration {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
  huge_pages?: HugePages;
  cpu_template?: CpuTemplate;
}

export interface BootSource {
  kernel_image_path: string;
  initrd_path?: string;
  boot_args?: string;
}

export interface Drive {
  drive_id: string;
  is_root_device: boolean;
  partuuid?: string;
  cache_type?: 'Unsafe' | 'Writeback';
  is_read_only?: boolean;
  path_on_host?: string;
  rate_limiter?: RateLimiter;
  io_engine?: 'Sync' | 'Async';
  socket?: string;
}

export interface PartialDrive {
  drive_id: string;
  path_on_host?: string;
  rate_limiter?: RateLimiter;
}

export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  mtu?: number;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
}

export interface PartialNetworkInterface {
  iface_id: string;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
}

export interface Vsock {
  guest_cid: number;
  uds_path: string;
  vsock_id?: string;
}

export interface EntropyDevice {
  rate_limiter?: RateLimiter;
}

export interface SerialDevice {
  serial_out_path?: string;
  rate_limiter?: TokenBucket;
}

export interface Balloon {
  amount_mib: number;
  deflate_on_oom: boolean;
  stats_polling_interval_s?: number;
  free_page_hinting?: boolean;
  free_page_reporting?: boolean;
}

export interface BalloonUpdate {
  amount_mib: number;
}

export interface BalloonStatsUpdate {
  stats_polling_interval_s: number;
}

export type BalloonStats = {
  target_pages: number;
  actual_pages: number;
  target_mib: number;
  actual_mib: number;
} & Record<string, number>;

export type LoggerLevel = 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';

export interface LoggerConfig {
  log_path?: string;
  level?: LoggerLevel;
  show_level?: boolean;
  show_log_origin?: boolean;
  module?: string;
}

export interface MetricsConfig {
  metrics_path: string;
  emit_id?: boolean;
  properties?: Record<string, string>;
}

export interface InstanceActionInfo {
  action_type: 'FlushMetrics' | 'InstanceStart' | 'SendCtrlAltDel';
}

export interface VmStateBody {
  state: 'Paused' | 'Resumed';
}

export interface SnapshotCreateParams {
  snapshot_path: string;
  mem_file_path: string;
  snapshot_type?: 'Full' | 'Diff';
}

export interface MemoryBackend {
  backend_type: 'File' | 'Uffd';
  backend_path: string;
}

export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_file_path?: string;
  mem_backend?: MemoryBackend;
  enable_diff_snapshots?: boolean;
  track_dirty_pages?: boolean;
  resume_vm?: boolean;
  network_overrides?: { iface_id: string; host_dev_name: string }[];
  vsock_override?: { uds_path: string };
  clock_realtime?: boolean;
  huge_pages?: 'Snapshot' | 'None' | 'Transparent' | '2M';
}

export type InstanceState = 'Not started' | 'Running' | 'Paused';

export interface InstanceInfo {
  app_name: string;
  id: string;
  state: InstanceState;
  vmm_version: string;
}

/** GET /vm/config and the --config-file format (sections vireo does not have are left out). */
export interface FullVmConfiguration {
  'boot-source'?: BootSource;
  'machine-config'?: MachineConfiguration;
  drives?: Drive[];
  'network-interfaces'?: NetworkInterface[];
  vsock?: Vsock;
  balloon?: Balloon;
  entropy?: EntropyDevice;
  logger?: LoggerConfig;
  metrics?: MetricsConfig;
  'cpu-config'?: Record<string, unknown>;
  'mmds-config'?: Record<string, unknown>;
  'memory-hotplug'?: Record<string, unknown>;
  pmem?: Record<string, unknown>[];
}
