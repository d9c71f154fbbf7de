/**
 * Linux snapshot round trip in the nested lane: Debian's kernel with the kit and a virtio disk, at its
 * shell; paused, snapshotted, stopped; restored by another process, where the same shell answers,
 * the disk still reads (virtio queue positions restored), the uptime clock goes on from where it
 * was, and power-off ends the restored VM with status 0.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';

const lane = join(repoRoot, 'dist', 'test', 'support', 'linux-snapshot-lane.js');

test('Linux: Full then Diff snapshot in one process, merged, restored in another; the guest goes on', {
  timeout: 25 * 60_000,
}, async () => {
  const kit = await prepareKit();
  let out = '';
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await runNested({
        command: [process.execPath, lane, kit.kernel, kit.initrd],
        cwd: repoRoot,
        timeoutMs: 15 * 60_000,
        cpus: 1,
      });
      out = r.output;
      break;
    } catch (e) {
      if (!(e instanceof NestedError) || attempt === 3) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
    }
  }
  const line = out.split('\n').find((l) => l.startsWith('@@linux-snapshot '));
  assert.ok(line, `no report:\n${out.slice(-3000)}`);
  const rep = JSON.parse(line.slice('@@linux-snapshot '.length)) as Record<string, unknown>;
  assert.equal(rep.error, undefined, String(rep.error));
  assert.equal(rep.booted, true, 'the guest booted to its banner');
  assert.equal(rep.before, true, 'the shell answered before the snapshot');
  const child = JSON.parse(String(rep.child)) as {
    after: boolean;
    status: number | null;
    serial: string;
    restoreMs: number;
  };
  assert.equal(child.after, true, `the restored shell answers:\n${child.serial}\n${rep.childStderr}`);
  assert.equal(rep.written, true, 'the guest wrote its file between the snapshots');
  const m = /after=42 up=(\d+) disk=(\S+) mark=(\S*) end=10/.exec(child.serial);
  assert.ok(m, child.serial);
  assert.equal(m[2], 'SNAPSHOT-DISK-MARKER', 'the restored virtio disk reads');
  assert.equal(m[3], 'DIFF-MARK-43', 'the page the guest wrote after the Full snapshot came back through the Diff');
  assert.ok(
    Number(rep.diffWritten) > 0 && Number(rep.diffWritten) * 4 < Number(rep.memoryWritten),
    `the Diff holds only what changed: ${rep.diffWritten} of ${rep.memoryWritten} bytes`,
  );
  const upAfter = Number(m[1]);
  const upBefore = Number(rep.upBefore);
  assert.ok(
    upAfter >= upBefore && upAfter < upBefore + 120,
    `the guest clock goes on from ${upBefore} s (now ${upAfter} s)`,
  );
  assert.equal(child.status, 0, 'power-off ends the restored VM with 0');
  process.stderr.write(
    `linux snapshot: create ${Number(rep.snapshotMs).toFixed(0)} ms (${rep.memoryWritten} bytes written), diff ${Number(rep.diffMs).toFixed(0)} ms (${rep.diffWritten} bytes), restore ${child.restoreMs.toFixed(0)} ms\n`,
  );
});
