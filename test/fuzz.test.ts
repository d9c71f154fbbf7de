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
import { SharedState } from '../src/common/shared-state.js';
import { STATUS } from '../src/devices/virtio/device.js';
import { MMIO_MAGIC } from '../src/devices/virtio/mmio.js';
import { VirtioRng } from '../src/devices/virtio/rng.js';
import { formatReport, runTarget } from './fuzz/harness.js';
import { TARGETS } from './fuzz/targets.js';
import { MockMmioDriver, R } from './support/virtio-driver.js';

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

describe('directed cases: restored state', () => {
  test('a state file with a device lock word set: the restore clears it, the first register access returns', () => {
    const drv = new MockMmioDriver(new VirtioRng((b) => b.fill(1)));
    try {
      const bytes = new Uint8Array(drv.spec.state.slice(0));
      new DataView(bytes.buffer).setInt32(0, 1, true); // "locked" by a thread of the process that saved it
      SharedState.restore(drv.spec.state, bytes);
      const t0 = performance.now();
      assert.equal(drv.read(R.MAGIC), MMIO_MAGIC, 'before the fix this spun in SharedState.locked() for ever');
      assert.ok(performance.now() - t0 < 100);
    } finally {
      drv.release();
    }
  });

  test('resetGen at 2^31 - 1 (2^31 guest resets, or a restored state): the next reset does not stall the vCPU', () => {
    const drv = new MockMmioDriver(new VirtioRng((b) => b.fill(1)));
    try {
      drv.transport.st.s.set('resetGen', 0x7fffffff);
      const t0 = performance.now();
      drv.write(R.STATUS, 0);
      // The device side acknowledged -2^31 while the transport waited for +2^31: a 1 s stall per reset.
      assert.ok(performance.now() - t0 < 100, `the reset took ${(performance.now() - t0).toFixed(0)} ms`);
      assert.equal(drv.transport.st.s.get('resetAck'), -0x80000000);
      drv.probe(16);
      assert.ok(drv.status & STATUS.DRIVER_OK);
    } finally {
      drv.release();
    }
  });
});
