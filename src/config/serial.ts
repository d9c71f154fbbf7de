/** Where the serial console (COM1) and the virtio-console write. */
import { ConfigError } from '../common/errors.js';

export type SerialConfig =
  | { kind: 'stdio' }
  | { kind: 'file'; path: string }
  | { kind: 'none' }
  | { kind: 'fd'; fd: number };

/** The CLI's `--serial` value: stdio, none or file:PATH. */
export function parseSerial(text: string): SerialConfig {
  if (text === 'stdio') return { kind: 'stdio' };
  if (text === 'none') return { kind: 'none' };
  if (text.startsWith('file:') && text.length > 5) return { kind: 'file', path: text.slice(5) };
  throw new ConfigError('use stdio, none or file:PATH');
}

export function validateSerial(s: SerialConfig, what = 'serial'): void {
  switch (s.kind) {
    case 'stdio':
    case 'none':
      return;
    case 'file':
      if (typeof s.path !== 'string' || s.path === '') throw new ConfigError(`${what} output file needs a path`);
      return;
    case 'fd':
      if (!Number.isInteger(s.fd) || s.fd < 0) throw new ConfigError(`${what} output fd ${s.fd} is invalid`);
      return;
    default:
      throw new ConfigError(`${what} output ${JSON.stringify(s)} is invalid: use stdio, none, file or fd`);
  }
}
