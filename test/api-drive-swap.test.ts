/**
 * PATCH /drives/{id} with a new `path_on_host` on a running VM (how firecracker-containerd attaches a
 * container's rootfs, and Kata swaps a placeholder drive), through a real vireo-firecracker and a
 * native guest with its own virtio-blk driver (test/guests/blkfault.c, swap mode): the guest reads its
 * drive, the host swaps the file, the guest gets a configuration interrupt, reads the new capacity
 * and the new file's contents, and can read its last sector. A file that cannot be used gets a 400
 * with one line and the drive keeps its file; GET /vm/config names the new one.
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

const tmp = mkdtempSync(join(tmpdir(), 'vireo-driveswap-'));
let fc: FirecrackerProcess | undefined;
after(() => {
  fc?.kill();
  rmSync(tmp, { recursive: true, force: true });
});

/** An image of `sectors` sectors whose every sector starts with the 32-bit word `word`. */
function image(name: string, sectors: number, word: number): string {
  const b = Buffer.alloc(sectors * 512);
  for (let s = 0; s < sectors; s++) b.writeUInt32LE(word, s * 512);
  const path = join(tmp, name);
  writeFileSync(path, b);
  return path;
}

async function until(what: string, ok: () => boolean, p: FirecrackerProcess): Promise<void> {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > 60_000)
      assert.fail(`timed out waiting for ${what}\nstdout: ${p.stdout()}\nstderr: ${p.stderr().slice(-2000)}`);
    await sleep(20);
  }
}

describe('PATCH /drives/{id} path_on_host on a running VM', { skip: kvmSkipReason() }, () => {
  test('the guest sees the new file and its capacity after a configuration interrupt; a bad file is refused in one line', async () => {
    const a = image('a.img', 2048, 0x11111111);
    const b = image('b.img', 4096, 0x22222222);
    const socket = join(tmp, 'api.sock');
    const p = await startFirecracker(['--api-sock', socket], { socket });
    fc = p;
    const req = (method: string, path: string, body?: unknown) => fcRequest(socket, method, path, body);
    const ok = async (method: string, path: string, body?: unknown): Promise<void> => {
      const r = await req(method, path, body);
      assert.equal(r.status, 204, `${method} ${path}: ${r.text}\n${p.stderr().slice(-2000)}`);
    };
    await ok('PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 32 });
    await ok('PUT', '/boot-source', { kernel_image_path: guestPath('blkfault'), boot_args: 'swap=1' });
    await ok('PUT', '/drives/rootfs', {
      drive_id: 'rootfs',
      path_on_host: a,
      is_root_device: true,
      is_read_only: false,
    });
    // Before the VM runs there is nothing to patch.
    const early = await req('PATCH', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: b });
    assert.equal(early.status, 400, early.text);
    await ok('PUT', '/actions', { action_type: 'InstanceStart' });
    // Whole lines only: the serial port brings the guest's output a byte at a time.
    await until('the guest to read its drive', () => /blkswap before .*gen=\d+\n/.test(p.stdout()), p);
    assert.match(p.stdout(), new RegExp(`blkswap before cap=2048 word=${0x11111111} gen=(\\d+)`));
    const gen0 = Number(p.stdout().match(/blkswap before .* gen=(\d+)/)?.[1]);

    // Files that cannot be used: one line each, and the drive keeps its file.
    for (const [path, why] of [
      [join(tmp, 'missing.img'), /Drive config error: Unable to patch the block device: .*missing\.img/],
      [tmp, /is a directory|not a regular file/],
    ] as const) {
      const r = await req('PATCH', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: path });
      assert.equal(r.status, 400, r.text);
      const msg = (JSON.parse(r.text) as { fault_message: string }).fault_message;
      assert.match(msg, why);
      assert.doesNotMatch(msg, /\n/, 'one line');
    }
    assert.doesNotMatch(p.stdout(), /blkswap after/, 'no change reached the guest');

    await ok('PATCH', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: b });
    await until('the guest to see the new file', () => /blkswap last=\d+\n/.test(p.stdout()), p);
    const after = p.stdout().match(/blkswap after cap=(\d+) word=(\d+) gen=(\d+)/);
    assert.ok(after, p.stdout());
    assert.equal(Number(after[1]), 4096, 'the new capacity');
    assert.equal(Number(after[2]), 0x22222222, "the new file's contents");
    assert.ok(Number(after[3]) > gen0, 'the configuration generation moved');
    assert.match(p.stdout(), /blkswap last=0/, 'the last sector of the new, larger file reads');
    const cfg = JSON.parse((await req('GET', '/vm/config')).text) as { drives: { path_on_host: string }[] };
    assert.equal(cfg.drives[0]?.path_on_host, b);
    // The path the drive has already: nothing to do.
    const same = await req('PATCH', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: b });
    assert.equal(same.status, 204, 'the path it has: nothing to change');
    assert.equal(JSON.parse((await req('GET', '/')).text).state, 'Running', 'the VM runs on');
    p.kill();
    await p.exited;
  });
});
