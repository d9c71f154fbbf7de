/**
 * Firecracker's --config-file: a FullVmConfiguration JSON document, applied section by section through
 * the same handlers (and so the same checks and messages) as the API requests, in Firecracker's order,
 * then InstanceStart.
 */
import { ConfigError } from '../common/errors.js';
import { ID_CHARS } from '../config/index.js';
import type { ApiServer } from './server.js';
import { specValidator } from './spec.js';
import type { FullVmConfiguration } from './types.js';

/**
 * `s` as one printable line of at most `max` characters: control bytes, non-ASCII and the U+FFFD
 * of invalid UTF-8 escaped (\xNN, \u{N}). JSON.parse quotes the text around an error, which for a
 * binary file would put raw bytes (escape sequences included) on the user's terminal.
 */
export function printableExcerpt(s: string, max = 200): string {
  let out = '';
  for (const ch of s) {
    if (out.length >= max) return `${out}...`;
    const c = ch.codePointAt(0) ?? 0;
    if (c >= 0x20 && c < 0x7f) out += ch;
    else if (c <= 0xff) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else out += `\\u{${c.toString(16)}}`;
  }
  return out;
}

/**
 * `s` with its control characters (C0, DEL, C1) escaped as \xNN, the rest as it is: the schema's and
 * the API's messages quote keys, ids and paths from the document, and a key holding ESC or a newline
 * would drive the user's terminal or split the one line.
 */
export function escapeControls(s: string): string {
  let out = '';
  for (const ch of s) {
    const c = ch.charCodeAt(0);
    out += c < 0x20 || (c >= 0x7f && c <= 0x9f) ? `\\x${c.toString(16).padStart(2, '0')}` : ch;
  }
  return out;
}

const UNSUPPORTED_SECTIONS = ['cpu-config', 'mmds-config', 'memory-hotplug', 'pmem'] as const;

/** Applies a configuration document and boots it; throws ConfigError naming the section that failed. */
export async function applyConfigFile(api: ApiServer, text: string, source = 'the configuration file'): Promise<void> {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${source} is not valid JSON: ${printableExcerpt((e as Error).message)}`);
  }
  // A section given as null is absent (Firecracker's Option sections; GET /vm/config writes them so).
  if (doc !== null && typeof doc === 'object' && !Array.isArray(doc))
    doc = Object.fromEntries(Object.entries(doc).filter(([, v]) => v !== null));
  const problem = specValidator().check('FullVmConfiguration', doc);
  if (problem) throw new ConfigError(`${source}: ${escapeControls(problem)}`);
  const cfg = doc as FullVmConfiguration;
  for (const s of UNSUPPORTED_SECTIONS)
    if (cfg[s] !== undefined && !(Array.isArray(cfg[s]) && cfg[s].length === 0))
      throw new ConfigError(`${source}: vireo does not support the "${s}" section`);

  const steps: [what: string, method: string, path: string, body: unknown][] = [];
  if (cfg.logger) steps.push(['logger', 'PUT', '/logger', cfg.logger]);
  if (cfg.metrics) steps.push(['metrics', 'PUT', '/metrics', cfg.metrics]);
  if (cfg['machine-config']) steps.push(['machine-config', 'PUT', '/machine-config', cfg['machine-config']]);
  if (cfg['boot-source']) steps.push(['boot-source', 'PUT', '/boot-source', cfg['boot-source']]);
  for (const d of cfg.drives ?? []) steps.push([`drives (${d.drive_id})`, 'PUT', `/drives/${d.drive_id}`, d]);
  for (const n of cfg['network-interfaces'] ?? [])
    steps.push([`network-interfaces (${n.iface_id})`, 'PUT', `/network-interfaces/${n.iface_id}`, n]);
  if (cfg.vsock) steps.push(['vsock', 'PUT', '/vsock', cfg.vsock]);
  if (cfg.balloon) steps.push(['balloon', 'PUT', '/balloon', cfg.balloon]);
  if (cfg.entropy) steps.push(['entropy', 'PUT', '/entropy', cfg.entropy]);
  steps.push(['InstanceStart', 'PUT', '/actions', { action_type: 'InstanceStart' }]);

  for (const [what, method, path, body] of steps) {
    // The API reads paths as Firecracker does, without percent-decoding: an id goes into the path as it
    // is, once it is known to be letters, digits and underscores only (so it holds no '/' nor '?');
    // any other id is refused with the message the API gives it.
    const id = /^\/(?:drives|network-interfaces)\/(.*)$/s.exec(path)?.[1];
    if (id !== undefined && !ID_CHARS.test(id))
      throw new ConfigError(
        `${source}, ${escapeControls(what)}: ${id === '' ? 'The ID cannot be empty.' : 'API Resource IDs can only contain alphanumeric characters and underscores.'}`,
      );
    const r = await api.dispatch(method, path, JSON.stringify(body));
    if (r.status >= 400) {
      const fault = (JSON.parse(r.body) as { fault_message?: string }).fault_message ?? r.body;
      throw new ConfigError(`${source}, ${escapeControls(what)}: ${escapeControls(fault)}`);
    }
  }
}
