/**
 * The fuzz targets (test/fuzz/) for a fixed seed, each for its CI case count: every line says
 * `target: cases, crashes, out-of-bounds`, and a finding fails with its replay arguments for
 * `npm run fuzz` and the shrunk counterexample. FUZZ_SEED overrides the seed.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatReport, runTarget } from './fuzz/harness.js';
import { TARGETS } from './fuzz/targets.js';

const SEED = Number(process.env.FUZZ_SEED ?? 0x12f022);

describe('fuzz targets, fixed seed', () => {
  for (const t of TARGETS) {
    test(`${t.name}: ${t.ciCases} cases, no crash, no out-of-bounds access`, () => {
      const r = runTarget(t, { seed: SEED, numRuns: t.ciCases });
      const line = formatReport(r);
      console.log(line);
      assert.equal(r.crashes, 0, line);
      assert.equal(r.oob, 0, line);
      assert.equal(r.cases, t.ciCases, line);
    });
  }
});
