/** Snapshots: PUT /snapshot/create (paused VM) and PUT /snapshot/load (fresh instance). */
import { deserializeError, unsupported } from '../errors.js';
import { DEPRECATION, noContent, type Route, route } from '../routes.js';
import type { SnapshotCreateParams, SnapshotLoadParams } from '../types.js';

export const snapshotRoutes: Route[] = [
  route<SnapshotCreateParams>({
    method: 'PUT',
    path: '/snapshot/create',
    body: 'SnapshotCreateParams',
    metric: 'snapshot_create',
    async handle({ ctl, body }) {
      await ctl.createSnapshot(body);
      return noContent();
    },
  }),
  route<SnapshotLoadParams>({
    method: 'PUT',
    path: '/snapshot/load',
    body: 'SnapshotLoadParams',
    metric: 'snapshot_load',
    async handle({ ctl, body }) {
      // Exactly one of mem_backend and (deprecated) mem_file_path, as Firecracker's parser insists.
      if (body.mem_backend && body.mem_file_path !== undefined)
        throw deserializeError('too many fields: either `mem_backend` or `mem_file_path` exclusively is required');
      if (!body.mem_backend && body.mem_file_path === undefined)
        throw deserializeError('missing field: either `mem_backend` or `mem_file_path` is required');
      ctl.requirePreBoot();
      if (body.mem_backend?.backend_type === 'Uffd')
        throw unsupported(
          'vireo does not support userfaultfd memory backends (`mem_backend.backend_type`: Uffd): use File',
        );
      if (body.huge_pages === '2M' || body.huge_pages === 'Transparent')
        throw unsupported(`vireo does not support huge pages (\`huge_pages\`: ${body.huge_pages})`);
      const memPath = body.mem_backend?.backend_path ?? (body.mem_file_path as string);
      await ctl.loadSnapshot(body, memPath);
      return noContent(body.mem_file_path !== undefined ? DEPRECATION : undefined);
    },
  }),
];
