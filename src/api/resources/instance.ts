/** The instance: GET / and /version, GET /vm/config, PUT /actions, PATCH /vm. */
import { badRequest } from '../errors.js';
import { noContent, ok, type Route, route } from '../routes.js';
import { apiVersion } from '../spec.js';
import type { InstanceActionInfo, VmStateBody } from '../types.js';

export const instanceRoutes: Route[] = [
  route({ method: 'GET', path: '/', metric: 'instance_info', handle: ({ ctl }) => ok(ctl.instanceInfo()) }),
  route({
    method: 'GET',
    path: '/version',
    metric: 'vmm_version',
    handle: () => ok({ firecracker_version: apiVersion() }),
  }),
  route({ method: 'GET', path: '/vm/config', metric: 'vm_config', handle: ({ ctl }) => ok(ctl.fullConfig()) }),
  route<InstanceActionInfo>({
    method: 'PUT',
    path: '/actions',
    body: 'InstanceActionInfo',
    metric: 'actions',
    async handle({ ctl, body }) {
      switch (body.action_type) {
        case 'InstanceStart':
          await ctl.start();
          break;
        case 'FlushMetrics':
          ctl.requireVm();
          ctl.metrics.flush();
          break;
        case 'SendCtrlAltDel': {
          // After start only (as in Firecracker, which offers it on x86_64: so does vireo, x86_64 only).
          const vm = ctl.requireVm();
          try {
            vm.sendCtrlAltDel();
          } catch (e) {
            throw badRequest(`Failed to send Ctrl+Alt+Del: ${(e as Error).message}`);
          }
          ctl.logger.info('vmm', 'Ctrl+Alt+Del sent to the guest');
          break;
        }
      }
      return noContent();
    },
  }),
  route<VmStateBody>({
    method: 'PATCH',
    path: '/vm',
    body: 'Vm',
    metric: 'vm',
    async handle({ ctl, body }) {
      if (body.state === 'Paused') await ctl.pause();
      else await ctl.resume();
      return noContent();
    },
  }),
];
