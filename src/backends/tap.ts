/**
 * A Linux TAP interface as a virtio-net backend (Firecracker's host_dev_name): /dev/net/tun attached
 * to a named TAP with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a 12-byte virtio_net_hdr_v1, non-blocking.
 * Frames go straight between the TAP and guest memory (readv/writev on zero-copy views), header
 * included both ways; the offloads the host may use towards the guest follow what the guest negotiated.
 * ioctl numbers and layouts are from <linux/if_tun.h> and <linux/if.h> (proven by test/net-tap.test.ts).
 */
import { readvSync, writevSync } from 'node:fs';
import { ConfigError, errnoName, SyscallError } from '../common/errors.js';
import { NET_IOV_MAX, NET_OFFLOAD, type NetBackend, VIRTIO_NET_HDR_LEN } from '../devices/virtio/net.js';
import * as sys from '../os/sys.js';

const IOC_WRITE = 1;
const IOC_READ = 2;
const ioc = (dir: number, nr: number, size: number): number =>
  ((dir << 30) | (size << 16) | ('T'.charCodeAt(0) << 8) | nr) >>> 0;

/** TUN ioctls (<linux/if_tun.h>: _IOW('T', n, int) and _IOR('T', n, unsigned int)). */
export const TUN_IOCTL = {
  TUNSETIFF: ioc(IOC_WRITE, 202, 4),
  TUNGETFEATURES: ioc(IOC_READ, 207, 4),
  TUNSETOFFLOAD: ioc(IOC_WRITE, 208, 4),
  TUNGETIFF: ioc(IOC_READ, 210, 4),
  TUNGETVNETHDRSZ: ioc(IOC_READ, 215, 4),
  TUNSETVNETHDRSZ: ioc(IOC_WRITE, 216, 4),
} as const;

export const IFF = { TAP: 0x0002, NO_PI: 0x1000, VNET_HDR: 0x4000, MULTI_QUEUE: 0x0100 } as const;
export const TUN_F = { CSUM: 0x01, TSO4: 0x02, TSO6: 0x04, TSO_ECN: 0x08, UFO: 0x10 } as const;
/** struct ifreq: a 16-byte name, then a union whose ifru_flags (short) is what TUNSETIFF reads. */
export const IFNAMSIZ = 16;
export const IFREQ_SIZE = 40;
export const IFREQ_FLAGS_OFFSET = 16;
const TUN_DEVICE = '/dev/net/tun';

/** What the VMM opens in the main thread and posts to the I/O thread. */
export interface TapSpec {
  fd: number;
  /** The interface name. */
  name: string;
  /** NET_OFFLOAD bits the kernel accepts on this TAP (probed at open). */
  offloads: number;
}

/** TUN_F_* for NET_OFFLOAD bits (the same values; kept apart so the device never knows TUN). */
const tunFlags = (o: number): number =>
  (o & NET_OFFLOAD.CSUM ? TUN_F.CSUM : 0) |
  (o & NET_OFFLOAD.TSO4 ? TUN_F.TSO4 : 0) |
  (o & NET_OFFLOAD.TSO6 ? TUN_F.TSO6 : 0) |
  (o & NET_OFFLOAD.ECN ? TUN_F.TSO_ECN : 0) |
  (o & NET_OFFLOAD.UFO ? TUN_F.UFO : 0);

function tapHint(name: string, errno: number): string {
  switch (errnoName(errno)) {
    case 'EPERM':
    case 'EACCES':
      return `it does not exist and creating it needs CAP_NET_ADMIN, or it belongs to another user: create it with \`ip tuntap add ${name} mode tap user $USER\` or run vireo as root`;
    case 'EBUSY':
      return 'another process is attached to it (a TAP serves one process): stop that process or use another TAP';
    case 'EINVAL':
      return `an interface of that name exists but is not a single-queue TAP: create one with \`ip tuntap add ${name} mode tap\``;
    default:
      return 'check the interface with `ip link show`';
  }
}

/** Which offloads the kernel takes: all, then without UFO (removed in some kernels), then checksum only. */
function probeOffloads(fd: number): number {
  const all = NET_OFFLOAD.CSUM | NET_OFFLOAD.TSO4 | NET_OFFLOAD.TSO6 | NET_OFFLOAD.ECN | NET_OFFLOAD.UFO;
  for (const o of [all, all & ~NET_OFFLOAD.UFO, NET_OFFLOAD.CSUM]) {
    try {
      sys.ioctlInt(fd, TUN_IOCTL.TUNSETOFFLOAD, tunFlags(o), 'TUNSETOFFLOAD');
      sys.ioctlInt(fd, TUN_IOCTL.TUNSETOFFLOAD, 0, 'TUNSETOFFLOAD');
      return o;
    } catch {
      // try a smaller set
    }
  }
  return 0;
}

/**
 * Attaches to the TAP `name` (created if absent, which needs CAP_NET_ADMIN); a ConfigError that says
 * what to do when it cannot. The caller owns the fd (closeTap).
 */
export function openTap(name: string): TapSpec {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/.test(name) || name === '.' || name === '..')
    throw new ConfigError(
      `TAP name "${name}" is invalid: use 1-${IFNAMSIZ - 1} letters, digits, '_', '.' or '-' (e.g. tap0)`,
    );
  let fd: number;
  try {
    fd = sys.open(TUN_DEVICE, sys.O_RDWR);
  } catch (e) {
    const errno = e instanceof SyscallError ? e.errno : 0;
    const code = errnoName(errno);
    const hint =
      code === 'ENOENT' || code === 'ENODEV'
        ? 'load the tun module (modprobe tun)'
        : code === 'EACCES' || code === 'EPERM'
          ? `run vireo as root or make ${TUN_DEVICE} accessible to it`
          : 'check the tun driver';
    throw new ConfigError(`cannot open ${TUN_DEVICE} for TAP ${name}: ${code}; ${hint}`);
  }
  try {
    const ifr = Buffer.alloc(IFREQ_SIZE);
    ifr.write(name, 0, 'latin1');
    ifr.writeUInt16LE(IFF.TAP | IFF.NO_PI | IFF.VNET_HDR, IFREQ_FLAGS_OFFSET);
    try {
      sys.ioctl(fd, TUN_IOCTL.TUNSETIFF, ifr, 'TUNSETIFF');
    } catch (e) {
      const errno = e instanceof SyscallError ? e.errno : 0;
      throw new ConfigError(`cannot attach to TAP ${name}: ${errnoName(errno)}; ${tapHint(name, errno)}`);
    }
    const hdr = Buffer.alloc(4);
    hdr.writeInt32LE(VIRTIO_NET_HDR_LEN, 0);
    sys.ioctl(fd, TUN_IOCTL.TUNSETVNETHDRSZ, hdr, 'TUNSETVNETHDRSZ');
    sys.setNonBlocking(fd);
    const actual = ifr.toString('latin1', 0, IFNAMSIZ).replace(/\0.*$/s, '');
    return { fd, name: actual, offloads: probeOffloads(fd) };
  } catch (e) {
    sys.close(fd);
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(`cannot set up TAP ${name}: ${(e as Error).message}; check that the tun driver is current`);
  }
}

/** Releases the TAP (a TAP vireo created, rather than one made persistent by `ip tuntap add`, goes away). */
export function closeTap(spec: TapSpec): void {
  sys.close(spec.fd);
}

const errnoCode = (e: unknown): string | undefined => (e as NodeJS.ErrnoException)?.code;

/** iovec entries: a frame's buffers plus the spare byte. */
const IOV_ENTRIES = NET_IOV_MAX + 1;
let spareByte: Uint8Array | undefined;
/** One byte of native memory (readv needs a native address), per thread, kept for the thread's life. */
function spare(): Uint8Array {
  if (spareByte === undefined) {
    const page = sys.mmap(0, 4096, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    spareByte = new Uint8Array(sys.view(page, 1));
  }
  return spareByte;
}

/**
 * The backend over an open TAP; it does not own the fd (the VMM, or the thread that opened it, does).
 * Frames in guest memory (views made by sys.view) go through readv/writev with a reused iovec array;
 * other buffers (tests) through Node's readvSync/writevSync.
 */
export class Tap implements NetBackend {
  readonly fd: number;
  readonly name: string;
  readonly offloads: number;
  private readonly iov = new sys.IoVec(IOV_ENTRIES);
  private readonly spare = spare();

  constructor(spec: TapSpec) {
    this.fd = spec.fd;
    this.name = spec.name;
    this.offloads = spec.offloads;
  }

  read(bufs: readonly Uint8Array[], count: number): number | undefined {
    // A read returns at most what the buffers hold and drops the rest of the frame: one spare byte
    // after the guest's buffers tells a frame that did not fit (the device drops it) from one that did.
    if (this.load(bufs, count) && this.iov.push(this.spare)) {
      const n = this.iov.readv(this.fd);
      return n < 0 ? undefined : n;
    }
    // Asked first: an empty TAP would make readvSync throw EAGAIN, and an exception costs more than a poll.
    if (!sys.readable(this.fd)) return undefined;
    try {
      return readvSync(this.fd, [...bufs.slice(0, count), this.spare]);
    } catch (e) {
      if (errnoCode(e) === 'EAGAIN') return undefined;
      throw e;
    }
  }

  write(bufs: readonly Uint8Array[], count: number): number {
    if (this.load(bufs, count)) {
      const n = this.iov.writev(this.fd);
      // A TAP takes a frame whole or not at all; full (EAGAIN) means the frame is dropped.
      if (n < 0) throw new SyscallError('writev', sys.EAGAIN);
      return n;
    }
    return writevSync(this.fd, bufs.slice(0, count));
  }

  /** Puts bufs[0..count) into the iovec array; false when one of them is not native memory. */
  private load(bufs: readonly Uint8Array[], count: number): boolean {
    const iov = this.iov;
    iov.clear();
    if (count > NET_IOV_MAX) return false;
    for (let i = 0; i < count; i++) if (!iov.push(bufs[i] as Uint8Array)) return false;
    return true;
  }

  setOffloads(flags: number): void {
    sys.ioctlInt(this.fd, TUN_IOCTL.TUNSETOFFLOAD, tunFlags(flags & this.offloads), 'TUNSETOFFLOAD');
  }
}
