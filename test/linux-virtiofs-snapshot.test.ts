/**
 * virtio-fs across a snapshot, in the nested lane (test/support/linux-virtiofs-snapshot-lane.ts): the
 * share is kept by path and tag, a restore without its directory is refused with one clear line, and
 * a restored guest goes on with the file it held open, its working directory in the share, a file
 * the host wrote meanwhile, and a write that reaches the host.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { repoRoot } from './support/cc.js';

const lane = join(repoRoot, 'dist', 'test', 'support', 'linux-virtiofs-snapshot-lane.js');

test('virtio-fs: snapshot, restore refused without the directory, restored guest goes on', {
  timeout: 20 * 60_000,
}, async () => {
  const kit = await prepareKit();
  const r = await runNested({
    command: [process.execPath, lane, kit.kernel, kit.initrd],
    cwd: repoRoot,
    timeoutMs: 10 * 60_000,
    cpus: 1,
  });
  const line = r.output.split('\n').find((l) => l.startsWith('@@linux-virtiofs-snapshot '));
  assert.ok(line, `no report:\n${r.output.slice(-3000)}`);
  const rep = JSON.parse(line.slice('@@linux-virtiofs-snapshot '.length)) as Record<string, unknown>;
  assert.equal(rep.error, undefined, String(rep.error));
  assert.equal(rep.ready, true, 'mounted, a file held open, cwd in the share');
  assert.equal(rep.goneRestored, undefined, 'a restore without the share directory must fail');
  assert.match(
    String(rep.goneError),
    /^ConfigError: share snapshare: cannot open directory .*: ENOENT; give an existing host directory$/,
  );
  assert.equal(rep.after, true, `the restored guest answered:\n${rep.serialB}`);
  const serial = String(rep.serialB);
  assert.match(
    serial,
    /held=HELD-FILE-CONTENT cwd=\/mnt\/s\/sub ls=here\.txt,host-after\.txt, host=HOST-WROTE-AFTER end=10/,
  );
  assert.equal(rep.hostWritten, 'from-restored\n', 'the restored guest wrote through the restored node of its cwd');
  assert.equal(rep.status, 0);
  process.stderr.write(
    `linux virtio-fs snapshot: ${Number(rep.snapshotMs).toFixed(0)} ms, restore ${Number(rep.restoreMs).toFixed(0)} ms\n`,
  );
});
