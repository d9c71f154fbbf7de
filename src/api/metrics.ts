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

/** `exitsIo` → `exits_io`. */
export const snakeCase = (s: string): string => s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

export const DEFAULT_METRICS_INTERVAL_MS = 60_000;

export class ApiMetrics {
  private readonly requests: Record<ApiMethod, Record<string, number>> = { get: {}, put: {}, patch: {} };
  private readonly api = { requests: 0, request_errors: 0, payloads_too_large: 0 };
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
    const groups: MetricGroups = {
      api_server: { ...this.api },
      get_api_requests: { ...this.requests.get },
      put_api_requests: { ...this.requests.put },
      patch_api_requests: { ...this.requests.patch },
      vcpu: this.source.vcpu(),
      metrics: { ...this.flushed },
      logger: { ...(this.source.log?.() ?? { missed_log_count: 0, log_fails: 0 }), ...this.writes },
    };
    for (const [dev, counters] of Object.entries(this.source.devices())) groups[`device:${dev}`] = { ...counters };
    return groups;
  }

  /** The next line: what changed since the previous one. */
  private line(): Record<string, unknown> {
    const totals = this.totals();
    const next: Record<string, number> = {};
    const out: Record<string, unknown> = { utc_timestamp_ms: Date.now() };
    if (this.config?.emit_id) out.id = this.instanceId;
    if (this.config?.properties) out.properties = this.config.properties;
    const devices: Record<string, Record<string, number>> = {};
    for (const [group, values] of Object.entries(totals)) {
      const delta: Record<string, number> = {};
      for (const [k, v] of Object.entries(values)) {
        const key = `${group}.${k}`;
        next[key] = v;
        delta[k] = v - (this.last[key] ?? 0);
      }
      if (group.startsWith('device:')) devices[group.slice(7)] = delta;
      else out[group] = delta;
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
