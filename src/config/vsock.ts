/** virtio-vsock (Firecracker's hybrid vsock: a guest CID and a host Unix socket path). */
import { ConfigError } from '../common/errors.js';
import { optionUint, parseOptions } from './options.js';

export interface VsockConfig {
  cid: number;
  /** Host connections come in on this Unix socket; guest connections to port P go to `${udsPath}_${P}`. */
  udsPath: string;
}

/** CIDs 0-2 are the hypervisor, local and host addresses and 2^32-1 is VMADDR_CID_ANY (virtio spec §5.10). */
export const VSOCK_MIN_GUEST_CID = 3;
export const VSOCK_MAX_GUEST_CID = 0xfffffffe;
/** sockaddr_un holds 107 bytes of path and `_PORT` (up to 11 more) is appended for guest connections. */
export const VSOCK_MAX_UDS_PATH = 107 - 11;

/** One line saying what is wrong with a vsock configuration, or undefined. */
export function vsockProblem(c: VsockConfig): string | undefined {
  if (!Number.isInteger(c.cid) || c.cid < VSOCK_MIN_GUEST_CID || c.cid > VSOCK_MAX_GUEST_CID)
    return `vsock guest CID ${c.cid} is out of range: give ${VSOCK_MIN_GUEST_CID} to ${VSOCK_MAX_GUEST_CID} (0-2 and 2^32-1 are reserved)`;
  if (typeof c.udsPath !== 'string') return 'vsock uds path is empty or contains a NUL byte';
  const len = Buffer.byteLength(c.udsPath, 'utf8');
  if (len === 0 || c.udsPath.includes('\0')) return 'vsock uds path is empty or contains a NUL byte';
  if (len > VSOCK_MAX_UDS_PATH)
    return `vsock uds path ${c.udsPath} is ${len} bytes: give at most ${VSOCK_MAX_UDS_PATH} (Unix socket paths hold 107, and _PORT is appended)`;
  return undefined;
}

export function validateVsock(c: VsockConfig): void {
  const why = vsockProblem(c);
  if (why) throw new ConfigError(why);
}

const VSOCK_OPTIONS = {
  what: 'vsock',
  keys: ['cid', 'uds'],
  aliases: { guest_cid: 'cid', uds_path: 'uds', path: 'uds' },
  usage: 'cid=N,uds=PATH',
} as const;

/** The CLI's `--vsock` value: `cid=N,uds=PATH` (also `guest_cid=` and `uds_path=` as Firecracker names them). */
export function parseVsock(text: string): VsockConfig {
  const o = parseOptions(text, VSOCK_OPTIONS);
  const cid = o.get('cid');
  const udsPath = o.get('uds');
  if (cid === undefined || udsPath === undefined) throw new ConfigError('--vsock needs cid=N,uds=PATH');
  const config = { cid: optionUint('vsock', 'cid', cid), udsPath };
  validateVsock(config);
  return config;
}
