/**
 * `npm run fuzz -- --minutes N [--target NAME] [--seed S] [--path P]`: runs each target for its share
 * of N minutes from a random seed (or S), prints `target: cases, crashes, out-of-bounds` with the seed,
 * and on a finding the replay arguments and the shrunk counterexample, exiting 1. Besides the
 * in-process targets (targets.ts, also run by test/fuzz.test.ts) there is `hostile-guest`: real VM
 * runs of the seeded hostile guest, one per case, which needs /dev/kvm (left out, with a line, without).
 */
import { accessSync, constants } from 'node:fs';
import { parseArgs } from 'node:util';
import { formatReport, runTarget, type TargetSpec } from './harness.js';
import { hostileGuestTarget } from './hostile-guest.js';
import { TARGETS as IN_PROCESS } from './targets.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '1' },
    target: { type: 'string', multiple: true },
    seed: { type: 'string' },
    path: { type: 'string' },
  },
});
const kvm = ((): boolean => {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
})();
const TARGETS: readonly TargetSpec[] = [...IN_PROCESS, hostileGuestTarget];
if (!kvm && !values.target?.includes(hostileGuestTarget.name))
  console.log(`${hostileGuestTarget.name}: left out (no usable /dev/kvm on this machine)`);
const minutes = Number(values.minutes);
if (!(minutes > 0)) {
  console.error(`--minutes ${values.minutes}: give a positive number`);
  process.exit(2);
}
const chosen = values.target
  ? TARGETS.filter((t) => values.target?.includes(t.name))
  : TARGETS.filter((t) => kvm || t !== hostileGuestTarget);
const unknown = (values.target ?? []).filter((n) => !TARGETS.some((t) => t.name === n));
if (unknown.length > 0 || chosen.length === 0) {
  console.error(`unknown target ${unknown.join(', ')}; the targets are: ${TARGETS.map((t) => t.name).join(', ')}`);
  process.exit(2);
}
const share = (minutes * 60_000) / chosen.length;
let findings = 0;
for (const t of chosen) {
  const seed = values.seed !== undefined ? Number(values.seed) : (Math.random() * 2 ** 31) | 0;
  const r = await runTarget(t, {
    seed,
    timeLimitMs: share,
    ...(values.path !== undefined ? { path: values.path, numRuns: 1 } : {}),
  });
  console.log(formatReport(r));
  if (r.crashes + r.oob > 0) findings++;
}
process.exit(findings > 0 ? 1 : 0);
