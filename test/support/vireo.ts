/** Helpers to run the vireo CLI as a user would, and to check that tests have a KVM to run on. */
import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './cc.js';

export const vireoBin = join(repoRoot, 'bin', 'vireo.js');

export interface RunResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function runVireo(
  args: string[],
  opts: { input?: string; env?: Record<string, string>; timeoutMs?: number; uid?: number; gid?: number } = {},
): RunResult {
  const r = spawnSync(process.execPath, [vireoBin, ...args], {
    input: opts.input ?? '',
    env: { ...process.env, ...opts.env },
    timeout: opts.timeoutMs ?? 30_000,
    encoding: 'utf8',
    ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.gid ?? opts.uid } : {}),
  });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/**
 * KVM tests need /dev/kvm. They fail (not skip) without it unless VIREO_ALLOW_NO_KVM=1 says a
 * machine without KVM is expected, in which case the reason is printed and they skip.
 */
export function kvmSkipReason(): string | undefined {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return undefined;
  } catch {
    if (process.env.VIREO_ALLOW_NO_KVM === '1') {
      const why = 'no usable /dev/kvm on this machine (VIREO_ALLOW_NO_KVM=1)';
      process.stderr.write(`skipping KVM tests: ${why}\n`);
      return why;
    }
    return undefined; // let the tests fail with vireo's own error message
  }
}
