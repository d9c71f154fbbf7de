/**
 * Does batching pay on passt's stream socket? Frames of 64, 1514 and 65534 bytes cross a Unix stream
 * socket between two threads, framed as passt frames them (4-byte big-endian length), both ways:
 *
 * - receive, batched: what PasstNet does: one recv into FrameReader's 256 KiB buffer brings many
 *   frames, each is then copied into "guest memory" (a native mapping); against per frame: recv the 4-byte
 *   length, then recv the frame straight into guest memory (no copy, two system calls per frame).
 * - send, batched: what PasstNet does (OutBuffer): frames copied into a 256 KiB buffer, one send per
 *   batch (here: when it is full); against per frame: one writev of [length, the guest's buffers] per
 *   frame, no copy.
 *
 * The other end (a worker thread) writes or drains as fast as it can. Prints frames/s and MB/s.
 * usage: node dist/bench/passt-batch.js [seconds per case, default 1]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { FRAME_LEN_BYTES, FrameReader, PASST_RX_BUFFER, putLength } from '../src/backends/passt-frames.js';
import * as sys from '../src/os/sys.js';

const SECONDS = Number(process.argv[2] ?? 1);
const SIZES = [64, 1514, 65534];

function pair(): { a: number; b: number; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'vireo-batch-'));
  const path = join(dir, 's');
  const l = sys.unixSocket();
  sys.bindListen(l, path);
  const a = sys.unixSocket();
  sys.connectUnix(a, path);
  const b = sys.accept(l);
  sys.close(l);
  return {
    a,
    b,
    done: () => {
      sys.close(a);
      sys.close(b);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function peer(mode: 'write' | 'drain', fd: number, size: number, stop: Int32Array): Worker {
  return new Worker(new URL('./passt-batch-worker.js', import.meta.url), {
    workerData: { mode, fd, size, stop: stop.buffer },
  });
}

const guest = new Uint8Array(
  sys.view(sys.mmap(0, 1 << 20, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0), 1 << 20),
);

function waitIn(ep: sys.Epoll): void {
  ep.wait(100, () => {});
}

/** Receive for SECONDS; returns frames taken. */
function receive(fd: number, batched: boolean): number {
  const ep = new sys.Epoll(1);
  ep.add(fd, sys.EPOLLIN, 1);
  const end = performance.now() + SECONDS * 1000;
  let frames = 0;
  if (batched) {
    const r = new FrameReader();
    while (performance.now() < end) {
      for (let f = r.next(); f !== undefined; f = r.next()) {
        guest.set(f, 12);
        frames++;
      }
      const n = sys.recv(fd, r.space());
      if (n < 0) waitIn(ep);
      else r.commit(n);
    }
  } else {
    const len = new Uint8Array(FRAME_LEN_BYTES);
    const exact = (b: Uint8Array): void => {
      for (let o = 0; o < b.length; ) {
        const n = sys.recv(fd, b.subarray(o));
        if (n < 0) waitIn(ep);
        else o += n;
      }
    };
    while (performance.now() < end) {
      exact(len);
      const l =
        ((len[0] as number) << 24) | ((len[1] as number) << 16) | ((len[2] as number) << 8) | (len[3] as number);
      exact(guest.subarray(12, 12 + l));
      frames++;
    }
  }
  ep.close();
  return frames;
}

/** Send for SECONDS; returns frames sent. */
function send(fd: number, size: number, batched: boolean): number {
  const end = performance.now() + SECONDS * 1000;
  let frames = 0;
  const frame = guest.subarray(12, 12 + size);
  if (batched) {
    const buf = new Uint8Array(PASST_RX_BUFFER);
    let o = 0;
    const flush = (): void => {
      for (let s = 0; s < o; ) {
        const n = sys.send(fd, buf.subarray(s, o));
        if (n < 0) sys.waitWritable(fd, 100);
        else s += n;
      }
      o = 0;
    };
    while (performance.now() < end) {
      if (o + FRAME_LEN_BYTES + size > buf.length) flush();
      putLength(buf, o, size);
      buf.set(frame, o + FRAME_LEN_BYTES);
      o += FRAME_LEN_BYTES + size;
      frames++;
    }
    flush();
  } else {
    const page = new Uint8Array(
      sys.view(sys.mmap(0, 4096, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0), 4),
    );
    const iov = new sys.IoVec(2);
    while (performance.now() < end) {
      putLength(page, 0, size);
      iov.clear();
      iov.push(page);
      iov.push(frame);
      let n = iov.writev(fd);
      while (n < 0) {
        sys.waitWritable(fd, 100);
        n = iov.writev(fd);
      }
      // A partial write: the rest, so the stream stays framed.
      const total = FRAME_LEN_BYTES + size;
      for (let s = n; s < total; ) {
        const k =
          s < FRAME_LEN_BYTES ? sys.send(fd, page.subarray(s)) : sys.send(fd, frame.subarray(s - FRAME_LEN_BYTES));
        if (k < 0) sys.waitWritable(fd, 100);
        else s += k;
      }
      frames++;
    }
  }
  return frames;
}

async function run(kind: 'receive' | 'send', size: number, batched: boolean): Promise<number> {
  const p = pair();
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const w = peer(kind === 'receive' ? 'write' : 'drain', p.b, size, stop);
  await new Promise((r) => w.once('message', r));
  const frames = kind === 'receive' ? receive(p.a, batched) : send(p.a, size, batched);
  Atomics.store(stop, 0, 1);
  await new Promise((r) => w.once('exit', r));
  p.done();
  return frames / SECONDS;
}

const rows: string[] = [
  '| direction | frame | per frame (frames/s, MB/s) | batched (frames/s, MB/s) | batched / per frame |',
  '| --- | --- | --- | --- | --- |',
];
for (const kind of ['receive', 'send'] as const)
  for (const size of SIZES) {
    const single = await run(kind, size, false);
    const batch = await run(kind, size, true);
    const mb = (f: number): string => ((f * size) / 1e6).toFixed(0);
    rows.push(
      `| ${kind} | ${size} | ${Math.round(single)}, ${mb(single)} | ${Math.round(batch)}, ${mb(batch)} | ${(batch / single).toFixed(2)}× |`,
    );
  }
process.stdout.write(`${rows.join('\n')}\n`);
