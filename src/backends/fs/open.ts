/**
 * Opening a share's directory on the VMM's main thread: what the I/O thread then builds the FUSE
 * server from (plain data: the O_PATH fd, the resolved path, read-only). A directory that is not
 * there (at boot, or at a restore when it has gone since the snapshot) is one ConfigError line.
 */
import { realpathSync } from 'node:fs';
import { ConfigError, errnoName } from '../../common/errors.js';
import * as fsat from '../../os/fsat.js';
import type { ShareSpec } from './server.js';

/** Opens share `c` (its tag names it in an error). */
export function openShare(c: { path: string; tag: string; readOnly?: boolean | undefined }): ShareSpec {
  let rootPath: string;
  try {
    rootPath = realpathSync(c.path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError(`share ${c.tag}: cannot open directory ${c.path}: ${code}; give an existing host directory`);
  }
  const fd = fsat.openat(fsat.AT_FDCWD, fsat.cstr(rootPath), fsat.O_PATH | fsat.O_DIRECTORY);
  if (fd < 0)
    throw new ConfigError(
      `share ${c.tag}: cannot open directory ${c.path}: ${errnoName(-fd)}; give an existing host directory`,
    );
  return { rootFd: fd, rootPath, readOnly: c.readOnly ?? false };
}

export function closeShare(spec: ShareSpec): void {
  fsat.close(spec.rootFd);
}
