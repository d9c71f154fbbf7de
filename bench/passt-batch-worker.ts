/** The other end for bench/passt-batch.ts: writes framed frames, or drains, until told to stop. */
import { parentPort, workerData } from 'node:worker_threads';
import { FRAME_LEN_BYTES, putLength } from '../src/backends/passt-frames.js';
import * as sys from '../src/os/sys.js';

const { mode, fd, size, stop } = workerData as {
  mode: 'write' | 'drain';
  fd: number;
  size: number;
  stop: SharedArrayBuffer;
};
const halt = new Int32Array(stop);
const buf = new Uint8Array(256 * 1024);
const ep = new sys.Epoll(1);
ep.add(fd, sys.EPOLLIN, 1);
parentPort?.postMessage('ready');
if (mode === 'write') {
  // Whole frames only, so the reader never waits on a frame cut at the end of a chunk for long.
  const per = FRAME_LEN_BYTES + size;
  const count = Math.max(1, Math.floor(buf.length / per));
  for (let i = 0; i < count; i++) putLength(buf, i * per, size);
  const chunk = buf.subarray(0, count * per);
  let o = 0;
  while (Atomics.load(halt, 0) === 0) {
    const n = sys.send(fd, chunk.subarray(o));
    if (n < 0) sys.waitWritable(fd, 50);
    else o = (o + n) % chunk.length;
  }
} else {
  while (Atomics.load(halt, 0) === 0) {
    const n = sys.recv(fd, buf);
    if (n < 0) ep.wait(50, () => {});
  }
}
ep.close();
