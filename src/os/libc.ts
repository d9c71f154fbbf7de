/**
 * libc through koffi: src/os/ is the only place in vireo that declares native functions (kvm/ issues
 * its ioctls through fd.ts). This module loads libc once per thread and reads errno; the topic
 * modules beside it (fd, lock, mman, eventfd, poll, signal, socket, memguard) declare the calls they
 * wrap, and sys.ts gathers them into the one namespace callers import.
 * Every call that can fail is wrapped so that failure becomes a SyscallError with errno.
 * Module state is per thread: each vCPU worker loads its own copy.
 */
import koffi from 'koffi';

export const libc = koffi.load('libc.so.6');

export const errno = (): number => koffi.errno();

export const ENOENT = 2;
export const EINTR = 4;
export const EAGAIN = 11;
export const EPIPE = 32;
export const ECONNRESET = 104;
export const ENOTCONN = 107;
export const ECONNREFUSED = 111;
export const EINPROGRESS = 115;
