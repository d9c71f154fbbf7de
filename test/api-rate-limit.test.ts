/**
 * Firecracker's drive rate limiter through a real vireo-firecracker and a native guest with its own
 * virtio-blk driver (test/guests/blkfault.c: 16 MiB written in 64 KiB requests, read back, one
 * rewritten): a bandwidth limit holds the guest to it (the run cannot finish sooner than the limit
 * allows; the measured rate is printed), GET /vm/config shows the limiter, and a PATCH at run time
 * that lifts a crawling limit lets the guest finish. Nothing is dropped: every request answers OK.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestPath } from './guests/build.js';
import { type FirecrackerProcess, fcRequest, startFirecracker } from './support/fc-client.js';
import { kvmSkipReason } from './support/vireo.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-ratelimit-'));
const procs: FirecrackerProcess[] = [];
after(() => {
  for (const p of procs) p.kill();
  rmSync(tmp, { recursive: true, force: true });
});

const MIB = 1 << 20;
/** What the guest moves in read mode: READS reads of 64 KiB. */
const READS = 512;
const GUEST_BYTES = READS * 64 * 1024;
/** In its main mode: 32 chunks of 64 KiB written and read back, one rewritten. */
const CHUNKS = 32;
// Whole lines only: the serial port brings the guest's output a byte at a time.
const READ_REPORT = /blkread n=(\d+) ok=(\d+)\n/;
const REPORT =
  /blkfault cap=\d+ ok=(\d+) ioerr=(\d+) other=(\d+) flush=(\d,\d) readerr=(\d+) bad=(\d+) rewrite=(\d+) map=/;

async function boot(
  name: string,
  rateLimiter: unknown,
  args = `chunks=${CHUNKS} kib=64 batch=4`,
): Promise<{ p: FirecrackerProcess; started: number }> {
  const disk = join(tmp, `${name}.img`);
  writeFileSync(disk, Buffer.alloc(32 * MIB));
  const socket = join(tmp, `${name}.sock`);
  const p = await startFirecracker(['--api-sock', socket], { socket });
  procs.push(p);
  const ok = async (method: string, path: string, body: unknown): Promise<void> => {
    const r = await fcRequest(socket, method, path, body);
    assert.equal(r.status, 204, `${method} ${path}: ${r.text}\n${p.stderr().slice(-2000)}`);
  };
  await ok('PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 32 });
  await ok('PUT', '/boot-source', {
    kernel_image_path: guestPath('blkfault'),
    boot_args: args,
  });
  await ok('PUT', '/drives/d', {
    drive_id: 'd',
    path_on_host: disk,
    is_root_device: false,
    ...(rateLimiter === undefined ? {} : { rate_limiter: rateLimiter }),
  });
  const cfg = JSON.parse((await fcRequest(socket, 'GET', '/vm/config')).text) as {
    drives: { rate_limiter: unknown }[];
  };
  assert.deepEqual(cfg.drives[0]?.rate_limiter, rateLimiter ?? null, 'GET /vm/config shows the limiter as given');
  await ok('PUT', '/actions', { action_type: 'InstanceStart' });
  return { p, started: Date.now() };
}

async function report(p: FirecrackerProcess, ms: number, re = REPORT): Promise<RegExpMatchArray> {
  const t0 = Date.now();
  for (;;) {
    const m = p.stdout().match(re);
    if (m) return m;
    if (Date.now() - t0 > ms)
      assert.fail(`no report in ${ms} ms\nstdout: ${p.stdout()}\nstderr: ${p.stderr().slice(-2000)}`);
    await sleep(20);
  }
}

const allOk = (m: RegExpMatchArray): void => {
  assert.deepEqual(
    [m[1], m[2], m[3], m[4], m[5], m[6], m[7]],
    [String(CHUNKS), '0', '0', '0,0', '0', '0', '0'],
    `every request answered OK (none dropped): ${m[0]}`,
  );
};

describe('drive rate limiter (PUT and PATCH /drives rate_limiter)', { skip: kvmSkipReason() }, () => {
  test('a bandwidth limit holds the guest to it; nothing is dropped', async () => {
    // 4 MiB/s: a bucket of 1 MiB refilled every 250 ms.
    const limit = { bandwidth: { size: MIB, refill_time: 250 } };
    const { p, started } = await boot('bw', limit, `reads=${READS} kib=64 batch=4`);
    const m = await report(p, 60_000, READ_REPORT);
    const secs = (Date.now() - started) / 1000;
    assert.deepEqual([m[1], m[2]], [String(READS), String(READS)], 'every read answered OK (none dropped)');
    // The same reads without a limit, for how long the guest itself takes.
    const free = await boot('free', undefined, `reads=${READS} kib=64 batch=4`);
    await report(free.p, 60_000, READ_REPORT);
    const freeSecs = (Date.now() - free.started) / 1000;
    const rate = (GUEST_BYTES - MIB) / MIB / secs;
    process.stderr.write(
      `rate limiter: ${(GUEST_BYTES / MIB).toFixed(2)} MiB of reads through a 4 MiB/s limit in ${secs.toFixed(2)} s (${freeSecs.toFixed(2)} s without it): ${rate.toFixed(3)} MiB/s after the first bucket (${((rate / 4 - 1) * 100).toFixed(1)} %, boot included)\n`,
    );
    // The limit cannot be beaten: what is beyond the first bucket takes at least its time at 4 MiB/s.
    assert.ok(secs >= (GUEST_BYTES - MIB) / MIB / 4, `${secs} s is faster than the limit allows`);
  });

  test('a crawling limit lifted by PATCH at run time: the guest finishes', async () => {
    // 16 KiB/s would take over half an hour for the guest's 32 MiB.
    const crawl = { bandwidth: { size: 16 * 1024, refill_time: 1000 }, ops: { size: 100, refill_time: 1000 } };
    const { p } = await boot('patch', crawl);
    await sleep(1500);
    assert.doesNotMatch(p.stdout(), REPORT, 'still crawling');
    // A bad limiter at run time: one line, 400; the crawl goes on.
    const bad = await fcRequest(p.socket, 'PATCH', '/drives/d', {
      drive_id: 'd',
      rate_limiter: { ops: { size: 10, refill_time: 0 } },
    });
    assert.equal(bad.status, 400, bad.text);
    assert.match(bad.text, /Drive config error: drive d: rate_limiter\.ops\.refill_time must be above 0/);
    const r = await fcRequest(p.socket, 'PATCH', '/drives/d', {
      drive_id: 'd',
      rate_limiter: { bandwidth: { size: 0, refill_time: 0 } },
    });
    assert.equal(r.status, 204, r.text);
    allOk(await report(p, 60_000));
  });
});
