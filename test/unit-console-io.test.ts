/**
 * Output files and console sinks (src/backends/output-file.ts, console-io.ts): opening never blocks
 * (a FIFO nobody reads), a full output is dropped and counted rather than waited for, a failing one
 * (/dev/full: ENOSPC) is returned, never thrown. The end-to-end cases are in hostile-files.test.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, readSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { FdConsole, FdSink } from '../src/backends/console-io.js';
import { openOutputFile, writeOrDrop } from '../src/backends/output-file.js';
import * as sys from '../src/os/sys.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-console-io-'));
const fds: number[] = [];
after(() => {
  for (const fd of fds) closeSync(fd);
});

/** A non-blocking pipe whose write end is full: [read end, write end]. */
function fullPipe(): [number, number] {
  const [r, w] = sys.pipe();
  fds.push(r, w);
  const chunk = Buffer.alloc(4096, 0x2e);
  while (writeOrDrop(w, chunk).kind === 'written');
  // Top up byte by byte: the last page may still take a few.
  while (writeOrDrop(w, Buffer.of(0x2e)).kind === 'written');
  return [r, w];
}

function drain(fd: number): number {
  const buf = Buffer.alloc(65536);
  let total = 0;
  for (;;) {
    try {
      const n = readSync(fd, buf);
      if (n === 0) return total;
      total += n;
    } catch {
      return total;
    }
  }
}

describe('openOutputFile', () => {
  test('a FIFO nobody reads opens at once (read-write), and takes writes until full', () => {
    const path = join(tmp, 'out.fifo');
    assert.equal(spawnSync('mkfifo', [path]).status, 0);
    const fd = openOutputFile(path, 'append');
    fds.push(fd);
    assert.equal(writeOrDrop(fd, Buffer.from('one line\n')).kind, 'written');
    let outcome = writeOrDrop(fd, Buffer.alloc(4096));
    for (let i = 0; i < 100 && outcome.kind === 'written'; i++) outcome = writeOrDrop(fd, Buffer.alloc(4096));
    assert.equal(outcome.kind, 'full');
  });

  test('a regular file is appended to, or truncated', () => {
    const path = join(tmp, 'log');
    for (const line of ['a\n', 'b\n']) {
      const fd = openOutputFile(path, 'append');
      assert.equal(writeOrDrop(fd, Buffer.from(line)).kind, 'written');
      closeSync(fd);
    }
    assert.equal(readFileSync(path, 'utf8'), 'a\nb\n');
    const fd = openOutputFile(path, 'truncate');
    closeSync(fd);
    assert.equal(readFileSync(path, 'utf8'), '');
  });

  test('two outputs truncating one file (--serial file:P with --virtio-console) interleave, not overwrite', () => {
    // `vireo run` gives the virtio-console the serial's path, and each opens it: with an offset of its
    // own, the console's first line overwrote the start of the serial output (the hostile guest's
    // first line lost its first 33 bytes).
    const path = join(tmp, 'console');
    const old = openOutputFile(path, 'append');
    writeOrDrop(old, Buffer.from('last run\n'));
    closeSync(old);
    const serial = openOutputFile(path, 'truncate');
    const hvc = openOutputFile(path, 'truncate');
    fds.push(serial, hvc);
    assert.equal(writeOrDrop(serial, Buffer.from('serial one\n')).kind, 'written');
    assert.equal(writeOrDrop(hvc, Buffer.from('hvc\n')).kind, 'written');
    assert.equal(writeOrDrop(serial, Buffer.from('serial two\n')).kind, 'written');
    assert.equal(readFileSync(path, 'utf8'), 'serial one\nhvc\nserial two\n');
  });

  test('/dev/full: the write fails with ENOSPC, returned, not thrown', () => {
    const fd = openOutputFile('/dev/full', 'append');
    fds.push(fd);
    assert.deepEqual(writeOrDrop(fd, Buffer.from('x')), { kind: 'failed', written: 0, code: 'ENOSPC' });
  });
});

describe('console sinks onto a full output', () => {
  test('the serial sink drops and counts what a full pipe cannot take, and writes again once read', () => {
    const [r, w] = fullPipe();
    let dropped = 0;
    const sink = new FdSink(w, () => dropped++);
    for (let i = 0; i < 1000; i++) sink.write(0x41);
    assert.equal(dropped, 1000);
    assert.ok(drain(r) > 0);
    sink.write(0x42);
    assert.equal(dropped, 1000);
    const buf = Buffer.alloc(4);
    assert.equal(readSync(r, buf), 1);
    assert.equal(buf[0], 0x42);
  });

  test('the virtio-console backend drops and counts a full output, and writes again once read', () => {
    const [r, w] = fullPipe();
    const con = new FdConsole({ outFd: w, inFd: -1 });
    con.write(new Uint8Array(10_000));
    con.write(new Uint8Array(500));
    assert.equal(con.droppedBytes, 10_500);
    drain(r);
    con.write(Buffer.from('back'));
    assert.equal(con.droppedBytes, 10_500);
    const buf = Buffer.alloc(16);
    assert.equal(buf.toString('utf8', 0, readSync(r, buf)), 'back');
  });
});

describe('console sinks onto a full blocking output, kicked', () => {
  test('a kick (the vCPU stop signal) during the wait for a full blocking output does not leave the thread in write(2)', async () => {
    // A blocking description of a FIFO (a user's stdout), its pipe full, its reader never reading.
    const path = join(tmp, 'kicked.fifo');
    assert.equal(spawnSync('mkfifo', [path]).status, 0);
    const reader = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const writer = openSync(path, constants.O_WRONLY);
    const filler = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
    fds.push(reader, writer, filler);
    while (writeOrDrop(filler, Buffer.alloc(4096, 0x2e)).kind === 'written');
    while (writeOrDrop(filler, Buffer.of(0x2e)).kind === 'written');
    sys.installKickSignal();
    const consoleIo = new URL('../src/backends/console-io.js', import.meta.url).href;
    const sysUrl = new URL('../src/os/sys.js', import.meta.url).href;
    // The serial port's sink on a thread of its own, as on a vCPU thread: one byte onto the full output.
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       (async () => {
         const { FdSink } = await import(workerData.consoleIo);
         const sys = await import(workerData.sysUrl);
         parentPort.postMessage({ thread: sys.pthreadSelf() });
         let dropped = 0;
         new FdSink(workerData.fd, () => dropped++).write(0x41);
         parentPort.postMessage({ done: dropped });
       })();`,
      { eval: true, workerData: { fd: writer, consoleIo, sysUrl } },
    );
    const thread = await new Promise<bigint>((resolve) =>
      worker.on('message', (m: { thread?: bigint }) => {
        if (m.thread !== undefined) resolve(m.thread);
      }),
    );
    const done = new Promise<number>((resolve) =>
      worker.on('message', (m: { done?: number }) => {
        if (m.done !== undefined) resolve(m.done);
      }),
    );
    // Kicks as Vm.stop sends them, while the sink waits its 50 ms for the output.
    const kicks = setInterval(() => sys.pthreadKill(thread, sys.KICK_SIGNAL), 2);
    const outcome = await Promise.race([done, sleep(3000).then(() => 'stuck' as const)]);
    clearInterval(kicks);
    if (outcome === 'stuck') drain(reader); // lets the blocked write finish, so the worker can end
    await done;
    await worker.terminate();
    assert.notEqual(outcome, 'stuck', 'the sink was still in write(2) on the full output 3 s after the kicks');
    assert.equal(outcome, 1, 'the byte the full output could not take is dropped and counted');
  });
});
