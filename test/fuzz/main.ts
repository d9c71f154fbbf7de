/**
 * `npm run fuzz -- --minutes N [--target NAME] [--seed S] [--path P]`: runs each target for its share
 * of N minutes from a random seed (or S), prints `target: cases, crashes, out-of-bounds` with the seed,
 * and on a finding the replay arguments and the shrunk counterexample, exiting 1.
 */
import { parseArgs } from 'node:util';
import { formatReport, runTarget } from './harness.js';
import { TARGETS } from './targets.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '1' },
    target: { type: 'string', multiple: true },
    seed: { type: 'string' },
    path: { type: 'string' },
  },
});
const minutes = Number(values.minutes);
if (!(minutes > 0)) {
  console.error(`--minutes ${values.minutes}: give a positive number`);
  process.exit(2);
}
const chosen = values.target ? TARGETS.filter((t) => values.target?.includes(t.name)) : TARGETS;
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
