/**
 * Files vireo reads whole (kernel, initrd, snapshot state, snapshot memory) given as what they must
 * not be: /dev/zero (read until the host ran out of memory), a FIFO (open(2) blocked the API's only
 * thread: no request was answered again), a directory (a raw EISDIR), a file larger than guest
 * memory. Each is refused with one line naming the path, and the API process keeps answering. Every
 * case runs in a child process, so a regression shows as a child that times out rather than a test
 * process that hangs or eats the host's memory.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ImageError } from '../src/common/errors.js';
import { readUserFile } from '../src/common/files.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { type FirecrackerProcess, fcRequest, startFirecracker } from './support/fc-client.js';
import { kvmSkipReason, runVireo } from './support/vireo.js';

const skip = kvmSkipReason();
const dir = mkdtempSync(join(tmpdir(), 'vireo-bounded-reads-'));
const fifo = join(dir, 'fifo');
execFileSync('mkfifo', [fifo]);
const aDir = join(dir, 'a-directory');
mkdirSync(aDir);
const processes: FirecrackerProcess[] = [];
after(() => {
  for (const p of processes) p.kill();
  rmSync(dir, { recursive: true, force: true });
});

/** One line on stderr, no stack trace, a non-zero status, within the child's timeout. */
function refused(args: string[], re: RegExp): void {
  const r = runVireo(args, { timeoutMs: 20_000 });
  assert.equal(r.signal, null, `vireo ${args.join(' ')} did not end by itself (killed: ${r.signal})`);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, re);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}

describe('vireo run: kernel and initrd that are not regular files of a sane size', { skip }, () => {
  test('--kernel /dev/zero', () => {
    refused(
      ['run', '--kernel', '/dev/zero'],
      /^vireo: kernel \/dev\/zero is a character device, not a regular file: give the path of a file\n$/,
    );
  });
  test('--kernel /dev/null', () => {
    refused(['run', '--kernel', '/dev/null'], /^vireo: kernel \/dev\/null is a character device, not a regular/);
  });
  test('--initrd /dev/zero', () => {
    refused(
      ['run', '--kernel', guestPath('multiboot'), '--initrd', '/dev/zero'],
      /^vireo: initrd \/dev\/zero is a character device, not a regular file/,
    );
  });
  test('--kernel FIFO and --initrd FIFO (nobody writes to it)', () => {
    refused(['run', '--kernel', fifo], /^vireo: kernel \S+fifo is a FIFO, not a regular file/);
    refused(['run', '--kernel', guestPath('multiboot'), '--initrd', fifo], /^vireo: initrd \S+fifo is a FIFO/);
  });
  test('--kernel a directory', () => {
    refused(['run', '--kernel', aDir], /^vireo: kernel \S+a-directory is a directory, not a regular file/);
  });
  test('a kernel or initrd larger than guest memory', () => {
    const big = join(dir, 'big');
    writeFileSync(big, '');
    truncateSync(big, 64 << 20); // sparse: costs no disk
    refused(
      ['run', '--kernel', big, '--mem', '16'],
      /^vireo: kernel \S+big is 64\.0 MiB, larger than the guest's 16\.0 MiB of memory: give a smaller file\n$/,
    );
    refused(
      ['run', '--kernel', guestPath('multiboot'), '--initrd', big, '--mem', '16'],
      /^vireo: initrd \S+big is 64\.0 MiB, larger than the guest's 16\.0 MiB of memory/,
    );
  });
  test('vireo snapshot merge: a FIFO or /dev/zero as --diff', () => {
    const reg = join(dir, 'regular.mem');
    writeFileSync(reg, 'x');
    refused(
      ['snapshot', 'merge', '--base', reg, '--diff', fifo],
      /diff memory file \S+fifo is a FIFO, not a regular file/,
    );
    refused(['snapshot', 'merge', '--base', reg, '--diff', '/dev/zero'], /diff memory file \/dev\/zero is a character/);
  });
  test('--drive a FIFO or /dev/zero (a FIFO blocked open(2) until a writer came)', () => {
    refused(
      ['run', '--kernel', guestPath('hello64'), '--drive', fifo],
      /^vireo: drive image \S+fifo is a FIFO, not a regular file/,
    );
    refused(
      ['run', '--kernel', guestPath('hello64'), '--drive', 'path=/dev/zero,ro'],
      /^vireo: drive image \/dev\/zero is a character device, not a regular file/,
    );
  });
  test('an empty kernel file', () => {
    const empty = join(dir, 'empty');
    writeFileSync(empty, '');
    refused(['run', '--kernel', empty], /^vireo: kernel \S+empty is empty\n$/);
  });
});

/** A request that must be answered within 15 s (a frozen API answers nothing). */
async function answered(sock: string, method: string, path: string, body?: unknown) {
  const r = await Promise.race([fcRequest(sock, method, path, body), sleep(15_000).then(() => undefined)]);
  assert.ok(r, `${method} ${path} got no answer: the API is frozen`);
  return r;
}

async function api(name: string): Promise<string> {
  const sock = join(dir, `${name}.sock`);
  processes.push(await startFirecracker(['--api-sock', sock], { socket: sock }));
  return sock;
}

describe('the API: kernel_image_path, initrd_path and snapshot files that are not regular files', { skip }, () => {
  test('kernel_image_path or initrd_path a FIFO or /dev/zero: InstanceStart fails with 400, the API answers on', async () => {
    for (const [i, boot] of [
      { kernel_image_path: fifo },
      { kernel_image_path: '/dev/zero' },
      { kernel_image_path: guestPath('multiboot'), initrd_path: fifo },
    ].entries()) {
      const sock = await api(`boot-${i}`);
      assert.equal((await answered(sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
      assert.equal((await answered(sock, 'PUT', '/boot-source', boot)).status, 204);
      const start = await answered(sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
      assert.equal(start.status, 400, start.text);
      assert.match(
        (start.json as { fault_message: string }).fault_message,
        /(kernel|initrd) \S+ is (a FIFO|a character device), not a regular file/,
      );
      assert.equal((await answered(sock, 'GET', '/')).status, 200, 'the API still answers');
    }
  });

  test('a drive path_on_host that is a FIFO: InstanceStart fails with 400, the API answers on', async () => {
    const sock = await api('drive-fifo');
    assert.equal((await answered(sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
    assert.equal(
      (await answered(sock, 'PUT', '/boot-source', { kernel_image_path: guestPath('hello64') })).status,
      204,
    );
    const drive = { drive_id: 'd0', path_on_host: fifo, is_root_device: false, is_read_only: false };
    const put = await answered(sock, 'PUT', '/drives/d0', drive);
    if (put.status === 204) {
      const start = await answered(sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
      assert.equal(start.status, 400, start.text);
      assert.match(
        (start.json as { fault_message: string }).fault_message,
        /drive image \S+fifo is a FIFO, not a regular file/,
      );
    } else {
      assert.equal(put.status, 400, put.text);
      assert.match((put.json as { fault_message: string }).fault_message, /fifo/);
    }
    assert.equal((await answered(sock, 'GET', '/')).status, 200, 'the API still answers');
  });

  test('PUT /snapshot/create onto a FIFO or a device node: a 400, and the node is left as it was', async () => {
    const dev = join(dir, 'null-device'); // our own node for /dev/null: what a rename over it would destroy
    execFileSync('mknod', [dev, 'c', '1', '3']);
    const sock = await api('create');
    assert.equal((await answered(sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
    const boot = { kernel_image_path: guestPath('modes64'), boot_args: 'c' };
    assert.equal((await answered(sock, 'PUT', '/boot-source', boot)).status, 204);
    assert.equal((await answered(sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.equal((await answered(sock, 'PATCH', '/vm', { state: 'Paused' })).status, 204);
    for (const [body, re] of [
      [{ snapshot_path: fifo, mem_file_path: join(dir, 'c.mem') }, /snapshot_path \S+fifo is a FIFO/],
      [
        { snapshot_path: join(dir, 'c.state'), mem_file_path: dev },
        /mem_file_path \S+null-device is a character device/,
      ],
    ] as const) {
      const r = await answered(sock, 'PUT', '/snapshot/create', body);
      assert.equal(r.status, 400, r.text);
      assert.match((r.json as { fault_message: string }).fault_message, re);
    }
    assert.ok(lstatSync(fifo).isFIFO(), 'the FIFO is still a FIFO');
    assert.ok(lstatSync(dev).isCharacterDevice(), 'the device node is still a device node');
    const ok = await answered(sock, 'PUT', '/snapshot/create', {
      snapshot_path: join(dir, 'c.state'),
      mem_file_path: join(dir, 'c.mem'),
    });
    assert.equal(ok.status, 204, ok.text);
  });

  test('PUT /snapshot/load: a FIFO, /dev/zero or a directory as the state or the memory file is a 400', async () => {
    // A real snapshot, so that the memory-file cases get past the state file.
    const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'c', memMiB: 16, serial: { kind: 'none' } });
    vm.start();
    await vm.pause();
    const state = join(dir, 'good.state');
    await vm.snapshot({ statePath: state, memPath: join(dir, 'good.mem') });
    await vm.stop();
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ snapshot_path: fifo, mem_file_path: join(dir, 'good.mem') }, /snapshot \S+fifo is a FIFO, not a regular file/],
      [{ snapshot_path: '/dev/zero', mem_file_path: join(dir, 'good.mem') }, /snapshot \/dev\/zero is a character/],
      [{ snapshot_path: aDir, mem_file_path: join(dir, 'good.mem') }, /snapshot \S+a-directory is a directory/],
      [{ snapshot_path: state, mem_file_path: fifo }, /memory file \S+fifo is a FIFO, not a regular file/],
      [
        { snapshot_path: state, mem_backend: { backend_type: 'File', backend_path: fifo } },
        /memory file \S+fifo is a FIFO, not a regular file/,
      ],
      [{ snapshot_path: state, mem_file_path: '/dev/zero' }, /memory file \/dev\/zero is a character device/],
      [{ snapshot_path: state, mem_file_path: aDir }, /memory file \S+a-directory is a directory/],
    ];
    for (const [i, [body, re]] of cases.entries()) {
      const sock = await api(`load-${i}`);
      const r = await answered(sock, 'PUT', '/snapshot/load', body);
      assert.equal(r.status, 400, r.text);
      const msg = (r.json as { fault_message: string }).fault_message;
      assert.match(msg, re);
      assert.doesNotMatch(msg, /EISDIR|TypeError|\n/);
      assert.equal((await answered(sock, 'GET', '/')).status, 200, 'the API still answers');
    }
  });
});

describe('readUserFile: a file larger than one Node buffer holds', () => {
  test('a 5 GiB image under a larger bound (a big guest) is one VireoError line, not a raw RangeError', () => {
    const big = join(dir, 'five-gib');
    writeFileSync(big, '');
    truncateSync(big, 5 * 1024 ** 3); // sparse: nothing is written
    let err: unknown;
    try {
      readUserFile(big, { what: 'initrd', maxBytes: 16 * 1024 ** 3, error: (m) => new ImageError(m) });
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof ImageError, `expected an ImageError, got ${String(err)}`);
    assert.match(err.message, /initrd .*five-gib is 5\.0 GiB/);
    assert.equal(err.message.split('\n').length, 1);
  });
});
