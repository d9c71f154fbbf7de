/**
 * The SIGBUS guard (src/native/memguard.c) on its own: file-backed guest RAM whose file is truncated
 * reads as zeros from any thread (here a worker, as the I/O thread and the disk threads are), the
 * fault is counted and reported once; a SIGBUS outside guarded memory still ends the process as before.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';
import { repoRoot } from './support/cc.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-memguard-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const SIZE = 1 << 20;

function fileOf(name: string): string {
  const p = join(dir, name);
  writeFileSync(p, Buffer.alloc(SIZE, 0xab));
  return p;
}

test('a truncated memory file reads as zeros in a worker thread; the loss is counted and reported', async () => {
  const path = fileOf('a.mem');
  const fd = openSync(path, 'r');
  const m = GuestMemoryMapping.mapFile(fd, [{ gpa: 0, size: SIZE, offset: 0 }], path);
  closeSync(fd); // the mapping keeps its own fd (and the lock on it)
  try {
    const mem = new GuestMemory(m.descriptors);
    assert.equal(mem.read8(0), 0xab, "a page touched before the truncation is the file's");
    assert.equal(m.lost(), undefined);
    let reported: string | undefined;
    m.watchLoss((p) => {
      reported = p;
    }, 10);
    truncateSync(path, 0);
    const memoryUrl = new URL('../src/memory/guest-memory.js', import.meta.url).href;
    const script = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(${JSON.stringify(memoryUrl)}).then(({ GuestMemory }) => {
        const mem = new GuestMemory(workerData);
        parentPort.postMessage([mem.read8(4096 * 7), mem.read32(SIZE_MINUS_4)]);
      });`.replace('SIZE_MINUS_4', String(SIZE - 4));
    const w = new Worker(script, { eval: true, workerData: m.descriptors });
    const read = await new Promise<number[]>((res, rej) => {
      w.once('message', res);
      w.once('error', rej);
    });
    await w.terminate();
    assert.deepEqual(read, [0, 0], 'pages past the end of the file read as zeros');
    assert.equal(m.lost(), path);
    for (let i = 0; i < 200 && reported === undefined; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(reported, path, 'watchLoss reports the file');
  } finally {
    m.release();
  }
});

test('a SIGBUS outside guarded memory still ends the process', () => {
  const path = fileOf('b.mem');
  const sysUrl = new URL('../src/os/sys.js', import.meta.url).href;
  // Installs the guard (by guarding one range), then touches an unguarded mapping of a truncated file.
  const script = `
    import { openSync, truncateSync } from 'node:fs';
    const sys = await import(${JSON.stringify(sysUrl)});
    const fd = openSync(${JSON.stringify(path)}, 'r');
    const guarded = sys.mmap(0, 4096, sys.PROT_READ, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
    sys.guardMemory(guarded, 4096);
    const addr = sys.mmap(0, ${SIZE}, sys.PROT_READ, sys.MAP_PRIVATE, fd, 0);
    truncateSync(${JSON.stringify(path)}, 0);
    const v = new Uint8Array(sys.view(addr, ${SIZE}));
    console.log('read', v[8192]);`;
  const file = join(dir, 'unguarded.mjs');
  writeFileSync(file, script);
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 30_000, cwd: repoRoot });
  assert.equal(r.signal, 'SIGBUS', `expected the default SIGBUS action, got status ${r.status}: ${r.stderr}`);
});
