/**
 * A temporary host directory to share in virtio-fs tests, with a sibling "outside" that the guest
 * must never reach: share/ holds a file, a directory and symlinks that point out of it (absolute, and
 * '..'), outside/ holds a secret.
 */
import { mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassthroughFs, type ShareSpec } from '../../src/backends/fs/server.js';
import * as fsat from '../../src/os/fsat.js';
import { FuseClient } from './fuse-client.js';

export const SECRET = 'the-secret-outside-the-share';

export interface TestShare {
  base: string;
  dir: string;
  outside: string;
  server: PassthroughFs;
  client: FuseClient;
  rootFd: number;
  cleanup(): void;
}

/** `under`: where the temporary directory goes (default the system's tmpdir; /dev/shm for tmpfs). */
export function makeShare(opts: Partial<Omit<ShareSpec, 'rootFd' | 'rootPath'>> = {}, under = tmpdir()): TestShare {
  const base = realpathSync(mkdtempSync(join(under, 'vireo-fs-')));
  const dir = join(base, 'share');
  const outside = join(base, 'outside');
  mkdirSync(dir);
  mkdirSync(outside);
  writeFileSync(join(outside, 'secret'), SECRET);
  writeFileSync(join(dir, 'hello.txt'), 'hello from the host\n');
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'inner'), 'inner');
  symlinkSync(join(outside, 'secret'), join(dir, 'abs-link'));
  symlinkSync('../outside', join(dir, 'up-link'));
  const rootFd = fsat.openat(fsat.AT_FDCWD, fsat.cstr(dir), fsat.O_PATH | fsat.O_DIRECTORY);
  if (rootFd < 0) throw new Error(`open ${dir}: ${-rootFd}`);
  const server = new PassthroughFs({ rootFd, rootPath: dir, readOnly: opts.readOnly ?? false, ...opts });
  const client = new FuseClient(server);
  return {
    base,
    dir,
    outside,
    server,
    client,
    rootFd,
    cleanup() {
      client.close();
      server.close();
      fsat.close(rootFd);
      rmSync(base, { recursive: true, force: true });
    },
  };
}
