/** `vireo serve`'s errors: a bad configuration (one line for the user), or an HTTP error to answer. */
import { VireoError } from '../common/errors.js';

export class ServeError extends VireoError {
  override name = 'ServeError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('VIREO_ERR_SERVE', message, options);
  }
}

/** A request the service refuses: answered with `status` and E2B's error body `{ code, message }`. */
export class HttpError extends ServeError {
  override name = 'HttpError';
  constructor(
    readonly status: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
