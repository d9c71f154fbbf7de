/** Open-file-description locks (fcntl F_OFD_*), as QEMU locks its images. */
import { SyscallError } from '../common/errors.js';
import { EAGAIN, errno, libc } from './libc.js';

const c_fcntlPtr = libc.func('fcntl', 'int', ['int', 'int', 'void *']);

const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;

/** struct flock (x86_64): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid. */
function flock(type: number): Buffer {
  const b = Buffer.alloc(32); // l_whence SEEK_SET, l_start 0, l_len 0 (the whole file), l_pid 0 (OFD locks need 0)
  b.writeInt16LE(type, 0);
  return b;
}

/** What holds a lock that conflicts with ours. */
export type LockHolder = 'shared' | 'exclusive';

/**
 * Takes an open-file-description lock on the whole file (fcntl F_OFD_SETLK, as QEMU locks its images):
 * shared or exclusive, without waiting. OFD locks belong to the open file, not the process, so two
 * opens in one process conflict as two processes do, and the lock goes when the last fd of that open
 * file closes (also when the process dies). Returns undefined when taken, else the kind of lock that
 * stands in the way (F_OFD_GETLK; 'exclusive' when it went away in between and cannot be told).
 */
export function lockFile(fd: number, kind: LockHolder): LockHolder | undefined {
  const type = kind === 'shared' ? F_RDLCK : F_WRLCK;
  if ((c_fcntlPtr(fd, F_OFD_SETLK, flock(type)) as number) === 0) return undefined;
  const e = errno();
  if (e !== EAGAIN && e !== 13 /* EACCES */) throw new SyscallError('fcntl(F_OFD_SETLK)', e);
  const probe = flock(type);
  if ((c_fcntlPtr(fd, F_OFD_GETLK, probe) as number) < 0) throw new SyscallError('fcntl(F_OFD_GETLK)', errno());
  const held = probe.readInt16LE(0);
  return held === F_RDLCK ? 'shared' : 'exclusive';
}

/** Whether lockFile() failed because the file system has no OFD locks (ENOLCK, EINVAL, EOPNOTSUPP). */
export function locksUnsupported(e: unknown): boolean {
  return e instanceof SyscallError && (e.errno === 37 || e.errno === 22 || e.errno === 95);
}

/** Drops this open file's OFD lock (closing its last fd does the same). */
export function unlockFile(fd: number): void {
  if ((c_fcntlPtr(fd, F_OFD_SETLK, flock(F_UNLCK)) as number) < 0)
    throw new SyscallError('fcntl(F_OFD_SETLK)', errno());
}
