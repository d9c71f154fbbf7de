/** Where vireo keeps files of its own (shared by the guest kit and the API's spec cache). */
import { homedir } from 'node:os';
import { join } from 'node:path';

/** vireo's cache: $VIREO_CACHE_DIR, else ${XDG_CACHE_HOME:-~/.cache}/vireo. */
export function cacheRoot(): string {
  if (process.env.VIREO_CACHE_DIR) return process.env.VIREO_CACHE_DIR;
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg?.startsWith('/') ? xdg : join(homedir(), '.cache'), 'vireo');
}
