/**
 * The seeded hostile guest (test/guests/hostile-guest.c) as a fuzz target: each case is one real
 * `vireo run` of the guest from a seed fast-check draws, with every virtio device attached
 * (test/support/hostile-guest.ts). A run where the VMM did not come through (a vCPU error, a signal,
 * the guest's "done" missing, a device that no longer serves a well-behaved driver, a changed read-only
 * image or share) is a crash. Only in `npm run fuzz` (it needs /dev/kvm and takes seconds a case); the
 * fixed-seed run is test/hostile-guest-seeded.test.ts.
 */
import fc from 'fast-check';
import { hostileRig } from '../support/hostile-guest.js';
import { crash, OK, target, type Verdict } from './harness.js';

const ROUNDS = 40;

export const hostileGuestTarget = target(
  'hostile-guest',
  // Not run by test/fuzz.test.ts: one case is a VM run of a few seconds.
  1,
  () => {
    const rig = hostileRig();
    return {
      // No shrinking: a smaller seed is another attack altogether, not a smaller one.
      arbitrary: fc.noShrink(fc.integer({ min: 0, max: 2 ** 31 - 1 })),
      async run(seed: number): Promise<Verdict> {
        const r = await rig;
        const res = await r.run(seed, ROUNDS, 60_000);
        const bad = r.judge(res);
        if (bad.length === 0) return OK;
        const tail = `${res.stdout.slice(-2000)}\n${res.stderr.slice(-4000)}`;
        // Printed as it happens: a finding that depends on timing may not show again when the
        // harness re-runs the counterexample for its report.
        process.stderr.write(`hostile-guest: seed ${seed}: ${bad.join('; ')}\n${tail}\n`);
        return crash(new Error(`seed ${seed}: ${bad.join('; ')}\n${tail}`));
      },
      close() {
        void rig.then((r) => r.close());
      },
    };
  },
  true,
  // A run takes seconds; a stall is a run past the harness's own timeout above.
  90_000,
);
