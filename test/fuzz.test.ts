/**
 * The fuzz targets (test/fuzz/) for a fixed seed, each for its CI case count: every line says
 * `target: cases, crashes, out-of-bounds`, and a finding fails with its replay arguments for
 * `npm run fuzz` and the shrunk counterexample. FUZZ_SEED overrides the seed.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { applyConfigFile } from '../src/api/config-file.js';
import { VmController } from '../src/api/controller.js';
import { ApiServer } from '../src/api/server.js';
import { ConfigError } from '../src/common/errors.js';
import { formatReport, runTarget } from './fuzz/harness.js';
import { TARGETS } from './fuzz/targets.js';

const SEED = Number(process.env.FUZZ_SEED ?? 0x12f022);

describe('fuzz targets, fixed seed', () => {
  for (const t of TARGETS) {
    test(`${t.name}: ${t.ciCases} cases, no crash, no out-of-bounds access`, async () => {
      const r = await runTarget(t, { seed: SEED, numRuns: t.ciCases });
      const line = formatReport(r);
      console.log(line);
      assert.equal(r.crashes, 0, line);
      assert.equal(r.oob, 0, line);
      assert.equal(r.cases, t.ciCases, line);
    });
  }
});

describe('directed cases', () => {
  test('config file: an id with a lone surrogate is a ConfigError, not a URIError (found by the config-file target)', async () => {
    const ctl = new VmController({ id: 'directed', kvmPath: '/nonexistent/kvm' });
    const doc = `{"drives":[{"drive_id":"root\\ud800","path_on_host":"/dev/null","is_root_device":true,"is_read_only":true}]}`;
    await assert.rejects(applyConfigFile(new ApiServer(ctl), doc), (e: unknown) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.match(e.message, /drives \(root.\): API Resource IDs can only contain alphanumeric/);
      return true;
    });
    await ctl.shutdown();
  });
});
