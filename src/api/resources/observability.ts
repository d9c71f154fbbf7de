/** PUT /logger, PUT /metrics, and vireo's Prometheus endpoint (not part of Firecracker's API). */
import { noContent, type Route, route } from '../routes.js';
import type { LoggerConfig, MetricsConfig } from '../types.js';

/** The path of the Prometheus text endpoint on the API socket (a vireo extension). */
export const PROMETHEUS_PATH = '/metrics/prometheus';

export const observabilityRoutes: Route[] = [
  route<LoggerConfig>({
    method: 'PUT',
    path: '/logger',
    body: 'Logger',
    metric: 'logger',
    // Firecracker takes the level in any case ("info", "WARNING"): the body reader accepts it so (serde.ts).
    async handle({ ctl, body }) {
      ctl.requirePreBoot();
      await ctl.logger.configure(body);
      ctl.logger.info('api_server', 'logger configured', { level: body.level ?? 'Info' });
      return noContent();
    },
  }),
  route<MetricsConfig>({
    method: 'PUT',
    path: '/metrics',
    body: 'Metrics',
    metric: 'metrics',
    handle({ ctl, body }) {
      ctl.requirePreBoot();
      ctl.metrics.configure(body, ctl.metricsIntervalMs);
      return noContent();
    },
  }),
  route({
    method: 'GET',
    path: PROMETHEUS_PATH,
    metric: 'prometheus',
    extension: true,
    async handle({ ctl }) {
      return { status: 200, body: await ctl.metrics.prometheus(), contentType: 'text/plain; version=0.0.4' };
    },
  }),
];
