/**
 * Every route: the ones vireo implements, and for every other operation in Firecracker's API a route
 * that answers 400 saying vireo does not support it. 400 rather than 404: Firecracker answers every
 * request it cannot serve with 400 and a fault_message (its catch-all for an unknown path is a 400
 * too), and these operations' only documented error response is 400/default, so clients map the
 * answer to an error as they would Firecracker's.
 */
import { unsupported } from '../errors.js';
import type { HttpMethod, Route } from '../routes.js';
import { loadSpec } from '../spec.js';
import { balloonRoutes } from './balloon.js';
import { deviceRoutes } from './devices.js';
import { instanceRoutes } from './instance.js';
import { machineRoutes } from './machine.js';
import { observabilityRoutes } from './observability.js';
import { snapshotRoutes } from './snapshot.js';

export const implementedRoutes: Route[] = [
  ...instanceRoutes,
  ...machineRoutes,
  ...deviceRoutes,
  ...balloonRoutes,
  ...snapshotRoutes,
  ...observabilityRoutes,
];

/** What each family of unsupported paths is, for the fault message. */
const FEATURES: [prefix: string, what: string, metric: string][] = [
  ['/balloon/hinting', 'balloon free page hinting', 'balloon_hinting'],
  ['/mmds', 'MMDS (the microVM metadata service)', 'mmds'],
  ['/pmem', 'virtio-pmem devices', 'pmem'],
  ['/hotplug', 'memory hotplug (virtio-mem)', 'hotplug_memory'],
  ['/cpu-config', 'custom CPU templates', 'cpu_cfg'],
];

function unsupportedRoute(method: HttpMethod, path: string): Route {
  const [, what, metric] = FEATURES.find(([prefix]) => path.startsWith(prefix)) ?? ['', `${method} ${path}`, 'other'];
  return {
    method,
    path,
    metric,
    handle() {
      throw unsupported(`vireo does not support ${what}: ${method} ${path} is not available`);
    },
  };
}

/** Implemented routes plus one refusing route per other operation of the spec. */
export function allRoutes(): Route[] {
  const routes = [...implementedRoutes];
  const have = new Set(routes.map((r) => `${r.method} ${r.path}`));
  for (const [path, ops] of Object.entries(loadSpec().paths))
    for (const m of Object.keys(ops)) {
      const method = m.toUpperCase() as HttpMethod;
      if (!have.has(`${method} ${path}`)) routes.push(unsupportedRoute(method, path));
    }
  return routes;
}
