/** Every fuzz target, in the order they run. */
import { apiTarget, configFileTarget } from './api.js';
import type { TargetSpec } from './harness.js';
import { legacyRestoreTarget, legacyTarget } from './legacy.js';
import { loaderTarget } from './loaders.js';
import { qcow2Target } from './qcow2.js';
import { restoreTarget } from './restore.js';
import { snapshotTarget } from './snapshot.js';
import { mmioTarget, virtioTargets } from './virtio.js';
import { vsockTarget } from './vsock.js';

export const TARGETS: readonly TargetSpec[] = [
  ...virtioTargets,
  vsockTarget,
  mmioTarget,
  restoreTarget,
  snapshotTarget,
  legacyTarget,
  legacyRestoreTarget,
  loaderTarget,
  apiTarget,
  configFileTarget,
  qcow2Target,
];
