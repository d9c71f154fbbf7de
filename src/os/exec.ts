/**
 * execve(2): replaces the process image, keeping its PID. Node has no exec (only spawn, which makes a
 * child); vireo-jailer needs one so that the process an orchestrator started is the one that ends up
 * jailed, as Firecracker's jailer execs Firecracker. Called from the main thread: the kernel ends every
 * other thread of the process (libuv's pool, V8's workers) as part of the exec.
 */
import { SyscallError } from '../common/errors.js';
import { errno, libc } from './libc.js';

const c_execve = libc.func('execve', 'int', ['str', 'const char **', 'const char **']);
const c_fcntl = libc.func('fcntl', 'int', ['int', 'int', 'int']);
const F_SETFD = 2;

/**
 * Never returns: on success the process runs `path` with stdin, stdout and stderr passed on (Node
 * marks its own descriptors close-on-exec, those three included); on failure a SyscallError is thrown.
 */
export function execve(path: string, argv: readonly string[], env: readonly string[]): never {
  for (let fd = 0; fd < 3; fd++) c_fcntl(fd, F_SETFD, 0);
  c_execve(path, [...argv, null], [...env, null]);
  throw new SyscallError(`execve(${path})`, errno());
}
