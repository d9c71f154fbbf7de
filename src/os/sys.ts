/**
 * The libc surface as one namespace (`import * as sys from '../os/sys.js'`): every wrapper of src/os/,
 * so a call reads as the system call it is (sys.mmap, sys.eventfdWrite). The topic modules can also be
 * imported alone.
 */
export * from './eventfd.js';
export * from './fd.js';
export * from './libc.js';
export * from './lock.js';
export * from './memguard.js';
export * from './mman.js';
export * from './poll.js';
export * from './seccomp.js';
export * from './signal.js';
export * from './socket.js';
