/**
 * Metrics in Firecracker's manner (PUT /metrics, --metrics-path): one JSON object per line, written on
 * FlushMetrics, every 60 s, and when the VM ends. As in Firecracker, counters are what happened since the
 * previous line (the line's deltas add up to the totals). The groups: API requests by method and resource
 * (`put_api_requests.drive_count`, `..._fails`), vCPU exits by kind (vm.stats()), and device counters
 * (vm.deviceCounters()). The same numbers, as running totals, are served as Prometheus text (not part
 * of Firecracker's API: GET /metrics/prometheus on the API socket, or --prometheus-port).
 *
 * As the log, the metrics file never stalls nor ends the API: opened non-blocking, a line its reader has
 * no room for is dropped and counted (`logger.missed_metrics_count`, Firecracker's name), a failing
 * write (ENOSPC, EIO) is counted (`logger.metrics_fails`) and reported once on stderr.
 */
import { closeSync } from 'node:fs';
import { openOutputFile, writeOrDrop } from '../backends/output-file.js';
import { badRequest, osErrorText } from './errors.js';
import { type LogWriteCounters, reportOnce } from './logger.js';
import type { MetricsConfig } from './types.js';

export type ApiMethod = 'get' | 'put' | 'patch';

/** What the VM side contributes: running totals, read when a line is written or scraped. */
export interface MetricsSource {
  /** vCPU exits and unclaimed accesses by kind (snake_case), empty before InstanceStart. */
  vcpu(): Record<string, number>;
  /** Per device (its bus name), its counters. */
  devices(): Record<string, Record<string, number>>;
  /** The instance state as GET / reports it. */
  state(): string;
  /** The log's write counters (Firecracker reports them in the metrics' `logger` group). */
  log?(): LogWriteCounters;
}

export type MetricGroups = Record<string, Record<string, number>>;

/**
 * The groups Firecracker's metrics lines carry that are not per device (its logger/metrics.rs,
 * FirecrackerMetrics), in its order, each with its fields in its order: every field is written, zero
 * or not. `store` fields are values (the last one measured: startup times, latencies); the others are
 * counters, written as what happened since the previous line. Counters vireo keeps that Firecracker
 * has no field for follow a group's own fields.
 *
 * vCPU exits: Firecracker splits them by direction (exit_io_in, exit_io_out, exit_mmio_read,
 * exit_mmio_write, with latency aggregates); vireo's vCPU loop counts I/O and MMIO exits without
 * the direction, so those fields are not written (vireo's exits_io, exits_mmio, ... are).
 */
const FC_GROUPS: [group: string, fields: string[], store?: string[]][] = [
  ['api_server', [], ['process_startup_time_us', 'process_startup_time_cpu_us']],
  ['deprecated_api', ['deprecated_http_api_calls']],
  [
    'get_api_requests',
    ['instance_info_count', 'machine_cfg_count', 'mmds_count', 'vmm_version_count', 'hotplug_memory_count'],
  ],
  [
    'latencies_us',
    [],
    [
      'full_create_snapshot',
      'diff_create_snapshot',
      'load_snapshot',
      'pause_vm',
      'resume_vm',
      'vmm_full_create_snapshot',
      'vmm_diff_create_snapshot',
      'vmm_load_snapshot',
      'vmm_pause_vm',
      'vmm_resume_vm',
    ],
  ],
  ['logger', ['missed_metrics_count', 'metrics_fails', 'missed_log_count']],
  [
    'mmds',
    [
      'rx_accepted',
      'rx_accepted_err',
      'rx_accepted_unusual',
      'rx_bad_eth',
      'rx_invalid_token',
      'rx_no_token',
      'rx_count',
      'tx_bytes',
      'tx_count',
      'tx_errors',
      'tx_frames',
      'connections_created',
      'connections_destroyed',
    ],
  ],
  [
    'patch_api_requests',
    [
      'drive_count',
      'drive_fails',
      'network_count',
      'network_fails',
      'machine_cfg_count',
      'machine_cfg_fails',
      'mmds_count',
      'mmds_fails',
      'hotplug_memory_count',
      'hotplug_memory_fails',
    ],
  ],
  [
    'put_api_requests',
    [
      'actions_count',
      'actions_fails',
      'boot_source_count',
      'boot_source_fails',
      'drive_count',
      'drive_fails',
      'logger_count',
      'logger_fails',
      'machine_cfg_count',
      'machine_cfg_fails',
      'cpu_cfg_count',
      'cpu_cfg_fails',
      'metrics_count',
      'metrics_fails',
      'network_count',
      'network_fails',
      'mmds_count',
      'mmds_fails',
      'vsock_count',
      'vsock_fails',
      'pmem_count',
      'pmem_fails',
      'serial_count',
      'serial_fails',
      'hotplug_memory_count',
      'hotplug_memory_fails',
    ],
  ],
  ['seccomp', [], ['num_faults']],
  ['vcpu', ['failures', 'kvmclock_ctrl_fails']],
  ['vmm', [], ['panic_count']],
  ['signals', ['sigpipe'], ['sigbus', 'sigsegv', 'sigxfsz', 'sigxcpu', 'sighup', 'sigill']],
  ['interrupts', ['triggers', 'config_updates']],
];

/** A group's fields as Firecracker declares them (counters and values interleaved as in its structs). */
const FC_FIELD_ORDER: Record<string, string[]> = {
  signals: ['sigbus', 'sigsegv', 'sigxfsz', 'sigxcpu', 'sigpipe', 'sighup', 'sigill'],
};

/** `exitsIo` → `exits_io`. */
export const snakeCase = (s: string): string => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

export const DEFAULT_METRICS_INTERVAL_MS = 60_000;

export class ApiMetrics {
  private readonly requests: Record<ApiMethod, Record<string, number>> = { get: {}, put: {}, patch: {} };
  private readonly api = { requests: 0, request_errors: 0, payloads_too_large: 0 };
  /** Firecracker's store metrics ("group.field"): the last value measured. */
  private readonly stored = new Map<string, number>();
  private deprecatedCalls = 0;
  private readonly flushed = { lines: 0, failures: 0 };
  /** Firecracker's logger.missed_metrics_count and logger.metrics_fails. */
  private readonly writes = { missed_metrics_count: 0, metrics_fails: 0 };
  private reportedFailure = false;
  /** Totals as of the previous line, to write deltas. */
  private last: Record<string, number> = {};
  private fd = -1;
  private timer: NodeJS.Timeout | undefined;
  config: MetricsConfig | undefined;

  constructor(
    private readonly instanceId: string,
    private readonly source: MetricsSource,
  ) {}

  /** Counts one API request to `resource` (Firecracker's metric names: drive, machine_cfg, ...). */
  countRequest(method: ApiMethod, resource: string, failed: boolean): void {
    const r = this.requests[method];
    r[`${resource}_count`] = (r[`${resource}_count`] ?? 0) + 1;
    if (failed) r[`${resource}_fails`] = (r[`${resource}_fails`] ?? 0) + 1;
    this.api.requests++;
    if (failed) this.api.request_errors++;
  }

  /** A value metric (Firecracker's SharedStoreMetric): written as it is, not as a difference. */
  store(group: string, field: string, value: number): void {
    this.stored.set(`${group}.${field}`, Math.max(0, Math.round(value)));
  }

  /** A request answered with the Deprecation header (Firecracker's deprecated_http_api_calls). */
  countDeprecated(): void {
    this.deprecatedCalls++;
  }

  countPayloadTooLarge(): void {
    this.api.payloads_too_large++;
    this.api.requests++;
    this.api.request_errors++;
  }

  /** Opens (appends to) metrics_path and starts the periodic lines. Once per process, as in Firecracker. */
  configure(cfg: MetricsConfig, intervalMs = DEFAULT_METRICS_INTERVAL_MS): void {
    if (this.config) throw badRequest('Metrics error: Reinitialization of metrics not allowed.');
    try {
      this.fd = openOutputFile(cfg.metrics_path, 'append');
    } catch (e) {
      throw badRequest(`Metrics error: Cannot initialize the metrics system: ${osErrorText(e)}`);
    }
    this.config = cfg;
    this.timer = setInterval(() => this.flush(), intervalMs);
    this.timer.unref();
  }

  /** Running totals of every group. */
  totals(): MetricGroups {
    const vcpu = this.source.vcpu();
    const groups: MetricGroups = {
      api_server: { ...this.api },
      deprecated_api: { deprecated_http_api_calls: this.deprecatedCalls },
      get_api_requests: { ...this.requests.get },
      put_api_requests: { ...this.requests.put },
      patch_api_requests: { ...this.requests.patch },
      // Firecracker's `failures`: runs that ended in an error (KVM_EXIT_INTERNAL_ERROR, FAIL_ENTRY).
      vcpu: { failures: (vcpu.exits_internal_error ?? 0) + (vcpu.exits_fail_entry ?? 0), ...vcpu },
      metrics: { ...this.flushed },
      logger: { ...(this.source.log?.() ?? { missed_log_count: 0, log_fails: 0 }), ...this.writes },
    };
    for (const [dev, counters] of Object.entries(this.source.devices())) groups[`device:${dev}`] = { ...counters };
    return groups;
  }

  /**
   * The next line: Firecracker's groups in its order with every field (counters as what changed
   * since the previous line, values as they are), then vireo's own (per-device counters, lines).
   */
  line(): Record<string, unknown> {
    const totals = this.totals();
    const next: Record<string, number> = {};
    const delta = (group: string, k: string, v: number): number => {
      const key = `${group}.${k}`;
      next[key] = v;
      return v - (this.last[key] ?? 0);
    };
    const out: Record<string, unknown> = { utc_timestamp_ms: Date.now() };
    if (this.config?.emit_id) out.id = this.instanceId;
    if (this.config?.properties) out.properties = this.config.properties;
    for (const [group, counters, stores = []] of FC_GROUPS) {
      const have = totals[group] ?? {};
      const g: Record<string, number> = {};
      for (const f of FC_FIELD_ORDER[group] ?? [...stores, ...counters])
        g[f] = stores.includes(f) ? (this.stored.get(`${group}.${f}`) ?? 0) : delta(group, f, have[f] ?? 0);
      for (const [k, v] of Object.entries(have)) if (!(k in g)) g[k] = delta(group, k, v);
      out[group] = g;
    }
    const devices: Record<string, Record<string, number>> = {};
    for (const [group, values] of Object.entries(totals)) {
      if (FC_GROUPS.some(([g]) => g === group)) continue;
      const d: Record<string, number> = {};
      for (const [k, v] of Object.entries(values)) d[k] = delta(group, k, v);
      if (group.startsWith('device:')) devices[group.slice(7)] = d;
      else out[group] = d;
    }
    out.devices = devices;
    this.last = next;
    return out;
  }

  /** Writes one line; false when metrics are not configured (Firecracker's FlushMetrics then does nothing). */
  flush(): boolean {
    if (this.fd < 0) return false;
    this.flushed.lines++;
    const r = writeOrDrop(this.fd, Buffer.from(`${JSON.stringify(this.line())}\n`));
    if (r.kind === 'written') return true;
    this.flushed.failures++;
    if (r.kind === 'full') this.writes.missed_metrics_count++;
    else {
      this.writes.metrics_fails++;
      if (!this.reportedFailure)
        reportOnce(
          `vireo: cannot write metrics to ${this.config?.metrics_path}: ${r.code}; lines are dropped and counted (logger.metrics_fails)`,
        );
      this.reportedFailure = true;
    }
    return false;
  }

  /** The totals in Prometheus' text format. */
  async prometheus(): Promise<string> {
    const { Counter, Gauge, Registry } = await import('prom-client');
    const registry = new Registry();
    const totals = this.totals();
    const requests = new Counter({
      name: 'vireo_api_requests_total',
      help: 'Firecracker API requests by method and resource',
      labelNames: ['method', 'resource'] as const,
      registers: [registry],
    });
    const failures = new Counter({
      name: 'vireo_api_request_failures_total',
      help: 'Firecracker API requests answered with an error, by method and resource',
      labelNames: ['method', 'resource'] as const,
      registers: [registry],
    });
    for (const method of ['get', 'put', 'patch'] as const)
      for (const [k, v] of Object.entries(totals[`${method}_api_requests`] ?? {})) {
        const resource = k.replace(/_(count|fails)$/, '');
        (k.endsWith('_fails') ? failures : requests).inc({ method, resource }, v);
      }
    const exits = new Counter({
      name: 'vireo_vcpu_events_total',
      help: 'vCPU exits by kind and accesses no device claimed (vm.stats())',
      labelNames: ['kind'] as const,
      registers: [registry],
    });
    for (const [kind, v] of Object.entries(totals.vcpu ?? {})) exits.inc({ kind }, v);
    const devices = new Counter({
      name: 'vireo_device_events_total',
      help: 'Device counters (vm.deviceCounters())',
      labelNames: ['device', 'counter'] as const,
      registers: [registry],
    });
    for (const [group, values] of Object.entries(totals))
      if (group.startsWith('device:'))
        for (const [counter, v] of Object.entries(values)) devices.inc({ device: group.slice(7), counter }, v);
    const state = new Gauge({
      name: 'vireo_instance_state',
      help: 'The instance state (1 for the current one)',
      labelNames: ['state'] as const,
      registers: [registry],
    });
    for (const s of ['Not started', 'Running', 'Paused']) state.set({ state: s }, s === this.source.state() ? 1 : 0);
    const lines = new Counter({
      name: 'vireo_metrics_lines_total',
      help: 'Metrics lines written to metrics_path',
      registers: [registry],
    });
    lines.inc(this.flushed.lines);
    const logger = new Counter({
      name: 'vireo_logger_events_total',
      help: "Log records and metrics lines dropped (missed_*: the reader was behind) or failed (*_fails: ENOSPC, EIO), Firecracker's logger metrics",
      labelNames: ['counter'] as const,
      registers: [registry],
    });
    for (const [counter, v] of Object.entries(totals.logger ?? {})) logger.inc({ counter }, v);
    return registry.metrics();
  }

  /** Stops the periodic lines and closes the file (after a last line when `final`). */
  close(final = true): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (final) this.flush();
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
