/**
 * API errors: each carries the HTTP status and the `fault_message` Firecracker would send. The
 * messages follow Firecracker's own wording where it has one, so tools that match on them keep working.
 */
import { constants } from 'node:os';
import { ConfigError, VireoError, type VireoErrorCode } from '../common/errors.js';
import { ID_CHARS } from '../config/index.js';

export class ApiError extends VireoError {
  override name = 'ApiError';
  readonly status: number;
  /** Extra response headers (e.g. Connection: close after an oversized payload). */
  readonly headers: Record<string, string>;
  constructor(status: number, code: VireoErrorCode, message: string, headers: Record<string, string> = {}) {
    super(code, message);
    this.status = status;
    this.headers = headers;
  }
}

export const badRequest = (message: string): ApiError => new ApiError(400, 'VIREO_ERR_API_BAD_REQUEST', message);

/** A body serde would not deserialize (Firecracker's RequestError::SerdeJson). */
export const deserializeError = (detail: string): ApiError =>
  badRequest(`An error occurred when deserializing the json body of a request: ${detail}.`);

export const notSupportedPreBoot = (): ApiError =>
  new ApiError(400, 'VIREO_ERR_API_STATE', 'The requested operation is not supported before starting the microVM.');

export const notSupportedPostBoot = (): ApiError =>
  new ApiError(400, 'VIREO_ERR_API_STATE', 'The requested operation is not supported after starting the microVM.');

export const stateError = (message: string): ApiError => new ApiError(400, 'VIREO_ERR_API_STATE', message);

/** A Firecracker feature vireo does not have: 400, as Firecracker answers every request it cannot serve. */
export const unsupported = (message: string): ApiError => new ApiError(400, 'VIREO_ERR_API_UNSUPPORTED', message);

export const payloadTooLarge = (size: number | undefined, limit: number): ApiError =>
  new ApiError(
    400,
    'VIREO_ERR_API_PAYLOAD_TOO_LARGE',
    `Request payload with size ${size ?? `over ${limit}`} is larger than the limit of ${limit} allowed by server. All previous unanswered requests will be dropped.`,
    { Connection: 'close' },
  );

/** Firecracker's RequestError::InvalidPathMethod. */
export const invalidPathMethod = (method: string, path: string): ApiError =>
  badRequest(`Invalid request method and/or path: ${method} ${path}.`);

/** Firecracker's checked_id(): ids are non-empty and only alphanumerics and underscores. */
export function checkId(id: string | undefined): string {
  if (id === undefined || id === '') throw badRequest('The ID cannot be empty.');
  if (!ID_CHARS.test(id))
    throw badRequest('API Resource IDs can only contain alphanumeric characters and underscores.');
  return id;
}

export const idMismatch = (): ApiError => badRequest('The id from the path does not match the id from the body!');

/**
 * Runs a config/ validator for a request: its ConfigError becomes a 400 whose fault_message is
 * `prefix: message` (Firecracker's "Drive config error: ..." style).
 */
export function validated(prefix: string, check: () => void): void {
  try {
    check();
  } catch (e) {
    if (e instanceof ConfigError) throw badRequest(`${prefix}: ${e.message}`);
    throw e;
  }
}

/** glibc's strerror() texts for the errors a host path gives (what Rust's io::Error prints). */
const STRERROR: Record<string, string> = {
  EPERM: 'Operation not permitted',
  ENOENT: 'No such file or directory',
  EIO: 'Input/output error',
  ENXIO: 'No such device or address',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EACCES: 'Permission denied',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EISDIR: 'Is a directory',
  EINVAL: 'Invalid argument',
  EMFILE: 'Too many open files',
  ETXTBSY: 'Text file busy',
  EFBIG: 'File too large',
  ENOSPC: 'No space left on device',
  EROFS: 'Read-only file system',
  ENAMETOOLONG: 'File name too long',
  ELOOP: 'Too many levels of symbolic links',
  EADDRINUSE: 'Address already in use',
  ENOTSOCK: 'Socket operation on non-socket',
  ECONNREFUSED: 'Connection refused',
};

/**
 * A system error as Rust's io::Error displays it ("No such file or directory (os error 2)"), which is
 * how Firecracker's messages end; anything else keeps its message.
 */
export function osErrorText(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const errno = code === undefined ? undefined : (constants.errno as Record<string, number>)[code];
  if (code === undefined || errno === undefined) return e instanceof Error ? e.message : String(e);
  const text = STRERROR[code] ?? (e as Error).message.replace(/^[A-Z]+: /, '').replace(/,.*$/, '');
  return `${text} (os error ${errno})`;
}
