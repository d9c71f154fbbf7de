/**
 * `vireo image create [--backing BASE] [--size SIZE] OUT.qcow2`: a qcow2 (v3) image, empty or an
 * overlay over BASE (raw or qcow2, found by its magic; stored as an absolute path). OUT must not exist.
 */
import { existsSync } from 'node:fs';
import { createQcow2, createQcow2Overlay } from '../backends/qcow2/create.js';
import { ConfigError } from '../common/errors.js';

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** "10G", "512M", "1048576": bytes. */
export function parseImageSize(text: string): number {
  const m = /^(\d+)([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  const n = m ? Number(m[1]) * (UNITS[(m[2] ?? '').toLowerCase()] ?? 1) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 512)
    throw new ConfigError(`--size ${text}: give bytes or a number with K, M, G or T (at least 512 bytes)`);
  return n;
}

export function imageCreateCommand(out: string, opts: { backing?: string; size?: string }): number {
  if (existsSync(out)) throw new ConfigError(`${out} exists; remove it or give another name`);
  const size = opts.size !== undefined ? parseImageSize(opts.size) : undefined;
  if (opts.backing !== undefined) createQcow2Overlay(out, opts.backing, size !== undefined ? { size } : {});
  else if (size !== undefined) createQcow2(out, { size });
  else throw new ConfigError('an image without --backing needs --size');
  process.stdout.write(`${out}\n`);
  return 0;
}
