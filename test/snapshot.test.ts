/**
 * Snapshots: a paused VM written to a state file and a memory file, restored in ANOTHER process,
 * goes on where it stopped (a counter guest continues from its value, the echo guest answers input
 * through the restored serial port and exits with its status). Bad snapshots — truncated, corrupted,
 * another format version, a memory file of the wrong size — give one clear error each, and a failed
 * write leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { repoRoot } from './support/cc.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const COUNTER = 0x1ff000;
const dir = mkdtempSync(join(tmpdir(), 'vireo-snap-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const child = join(repoRoot, 'dist', 'test', 'support', 'restore-child.js');

function restoreInChild(state: string, mem: string, mode: string, serial = ''): Record<string, unknown> {
  const r = spawnSync(process.execPath, [child, state, mem, mode, serial], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `restore child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
}

test('a running guest, paused and snapshotted, continues in another process', { skip }, async () => {
  const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 64, serial: { kind: 'none' } });
  const mem = vm.memory;
  assert.ok(mem);
  vm.start();
  const t0 = Date.now();
  while (mem.read64(COUNTER) < 100_000n && Date.now() - t0 < 10_000) await sleep(5);
  await assert.rejects(
    vm.snapshot({ statePath: join(dir, 'x.state'), memPath: join(dir, 'x.mem') }),
    /cannot snapshot a VM that is running: pause it first/,
  );
  await vm.pause();
  const frozen = mem.read64(COUNTER);
  const state = join(dir, 'counter.state');
  const memFile = join(dir, 'counter.mem');
  const r = await vm.snapshot({ statePath: state, memPath: memFile });
  assert.equal(r.memoryBytes, 64 << 20);
  assert.ok(r.memoryWritten < 4 << 20, `a mostly empty guest writes little (${r.memoryWritten} bytes)`);
  assert.ok(statSync(memFile).blocks * 512 < 8 << 20, 'the memory file is sparse');
  assert.deepEqual(
    readdirSync(dir).filter((f) => f.includes('.tmp-')),
    [],
    'no temporary file is left',
  );
  // The original goes on too, and is then stopped: the snapshot does not depend on it.
  await vm.resume();
  await sleep(20);
  await vm.stop();
  const c = restoreInChild(state, memFile, 'counter');
  assert.equal(BigInt(c.atRestore as string), frozen, 'restored memory holds the counter as it was when paused');
  assert.ok(BigInt(c.later as string) > frozen + 1000n, 'the restored vCPU runs the same loop on');
  process.stderr.write(
    `snapshot: state ${r.stateMs.toFixed(1)} ms, memory ${r.memoryMs.toFixed(1)} ms; restore ${(c.restoreMs as number).toFixed(1)} ms\n`,
  );
});

test('the serial port and the vCPU mid-loop come back: the restored echo guest answers and exits', {
  skip,
}, async () => {
  const serialA = join(dir, 'echo-a.log');
  const vm = await Vm.create({
    kernel: guestPath('modes64'),
    cmdline: 'e',
    memMiB: 16,
    serial: { kind: 'file', path: serialA },
  });
  vm.start();
  const t0 = Date.now();
  while (!readFileSync(serialA, 'latin1').includes('echo ready') && Date.now() - t0 < 10_000) await sleep(5);
  vm.sendSerialInput(Buffer.from('ab'));
  while (!readFileSync(serialA, 'latin1').includes('AB') && Date.now() - t0 < 10_000) await sleep(5);
  await vm.pause();
  await vm.snapshot({ statePath: join(dir, 'echo.state'), memPath: join(dir, 'echo.mem') });
  await vm.stop();
  const serialB = join(dir, 'echo-b.log');
  const r = restoreInChild(join(dir, 'echo.state'), join(dir, 'echo.mem'), 'echo', serialB);
  assert.equal(r.serial, 'XYZ', 'the restored guest echoes new input upper-cased (and nothing from before)');
  assert.equal(r.status, 0x25, "'q' ends it with the guest's debug-exit status");
});

test('bad snapshots: truncated, corrupted, another version, wrong memory file, missing files', { skip }, async () => {
  const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 16, serial: { kind: 'none' } });
  vm.start();
  await sleep(20);
  await vm.pause();
  const state = join(dir, 'good.state');
  const mem = join(dir, 'good.mem');
  await vm.snapshot({ statePath: state, memPath: mem });
  await vm.stop();
  const good = readFileSync(state);
  const variant = (name: string, b: Buffer): string => {
    const p = join(dir, name);
    writeFileSync(p, b);
    return p;
  };
  const restore = (statePath: string, memPath = mem) => Vm.restore({ statePath, memPath, serial: { kind: 'none' } });
  await assert.rejects(restore(variant('t.state', good.subarray(0, good.length - 100))), {
    code: 'VIREO_ERR_SNAPSHOT_CORRUPT',
    message: /truncated/,
  });
  const flipped = Buffer.from(good);
  flipped[200] = (flipped[200] as number) ^ 0x40;
  await assert.rejects(restore(variant('c.state', flipped)), {
    code: 'VIREO_ERR_SNAPSHOT_CORRUPT',
    message: /checksum/,
  });
  const v2 = Buffer.from(good);
  v2.writeUInt32LE(99, 8);
  await assert.rejects(restore(variant('v.state', v2)), { code: 'VIREO_ERR_SNAPSHOT_VERSION', message: /version 99/ });
  await assert.rejects(restore(variant('m.state', Buffer.from('not a snapshot at all'))), /not a vireo snapshot/);
  const shortMem = join(dir, 'short.mem');
  writeFileSync(shortMem, readFileSync(mem));
  truncateSync(shortMem, 4096);
  await assert.rejects(restore(state, shortMem), { code: 'VIREO_ERR_SNAPSHOT_CORRUPT', message: /wrong or truncated/ });
  await assert.rejects(restore(join(dir, 'none.state')), /snapshot \S+none\.state does not exist/);
  await assert.rejects(restore(state, join(dir, 'none.mem')), /memory file \S+none\.mem does not exist/);
  // A write that cannot happen leaves the old files as they were and no temporary file.
  const vm2 = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 16, serial: { kind: 'none' } });
  vm2.start();
  await vm2.pause();
  await assert.rejects(
    vm2.snapshot({ statePath: join(dir, 'no-such-dir', 's'), memPath: join(dir, 'no-such-dir', 'm') }),
    /cannot write memory file/,
  );
  await vm2.stop();
  assert.equal(existsSync(join(dir, 'no-such-dir')), false);
  assert.deepEqual(readFileSync(state), good);
});
