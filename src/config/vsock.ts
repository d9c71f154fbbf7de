/** The CLI's --vsock value, parsed into the device's VsockConfig and checked. */
import { ConfigError } from '../common/errors.js';
import { checkVsockConfig, type VsockConfig } from '../devices/virtio/vsock/index.js';

/** `cid=N,uds=PATH` (the CLI's --vsock value; also `guest_cid=` and `uds_path=` as Firecracker names them). */
export function parseVsockOption(v: string): VsockConfig {
  let cid: number | undefined;
  let udsPath: string | undefined;
  for (const part of v.split(',')) {
    const eq = part.indexOf('=');
    const k = eq < 0 ? part : part.slice(0, eq);
    const val = eq < 0 ? '' : part.slice(eq + 1);
    if ((k === 'cid' || k === 'guest_cid') && /^[0-9]{1,10}$/.test(val)) cid = Number(val);
    else if ((k === 'uds' || k === 'uds_path' || k === 'path') && val) udsPath = val;
    else throw new ConfigError(`unknown vsock option "${part}": use cid=N,uds=PATH`);
  }
  if (cid === undefined || udsPath === undefined) throw new ConfigError('--vsock needs cid=N,uds=PATH');
  const config = { cid, udsPath };
  const why = checkVsockConfig(config);
  if (why) throw new ConfigError(why);
  return config;
}
