/**
 * The qcow2 backend against Debian's qemu-img and qemu-io (qemu-utils): images QEMU made (v3 and v2,
 * with raw and qcow2 backing chains, zero clusters, compressed clusters) read as QEMU reads them; images
 * vireo wrote (fresh, overlays, over compressed clusters, with 512-byte clusters so the refcount table
 * grows) pass qemu-img check with no errors or leaks, compare equal to the bytes the writes should
 * leave, and convert to raw as vireo reads them. Plus the overlay creator and the open-time refusals.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { createQcow2, createQcow2Overlay } from '../src/backends/qcow2/create.js';
import { validateBody } from '../src/vmm/snapshot-body.js';
import { baseBody } from './fuzz/snapshot.js';
import { repoRoot } from './support/cc.js';
import { qemu, qemuCheck, qemuContent, readAll, withDisk, workload } from './support/qcow2.js';

const dir = mkdtempSync(join(tmpdir(), 'vireo-qcow2-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const p = (name: string): string => join(dir, name);
const MiB = 1 << 20;

/** A raw file whose every 512-byte sector holds its own number (and a salt). */
function patterned(name: string, size: number, salt: number): Buffer {
  const b = Buffer.alloc(size);
  for (let s = 0; s < size / 512; s++) b.fill((s * 31 + salt) & 0xff, s * 512, s * 512 + 512).writeUInt32LE(s, s * 512);
  writeFileSync(p(name), b);
  return b;
}

/** vireo's read of an image equals QEMU's (qemu-img convert -O raw). */
function assertReadsAsQemu(name: string): Buffer {
  const mine = withDisk(p(name), true, readAll);
  const theirs = qemuContent(p(name), p(`${name}.qemu.raw`));
  assert.equal(mine.length, theirs.length);
  assert.ok(mine.equals(theirs), `${name}: vireo reads what qemu-img convert gives`);
  return mine;
}

/** After vireo's writes: qemu-img check is clean, compare says equal, convert equals vireo's read. */
function assertWrittenWell(name: string, expected: Buffer): void {
  const c = qemuCheck(p(name));
  assert.ok(c.clean, `qemu-img check ${name}:\n${c.out}`);
  writeFileSync(p(`${name}.expected.raw`), expected);
  qemu('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', p(name), p(`${name}.expected.raw`)]);
  assert.ok(assertReadsAsQemu(name).equals(expected));
}

describe('images made by qemu-img read as QEMU reads them', () => {
  test('v3: data written by qemu-io, zero clusters, holes', () => {
    qemu('qemu-img', ['create', '-f', 'qcow2', p('q3.qcow2'), '8M']);
    qemu('qemu-io', [
      '-c',
      'write -P 0xab 0 64k',
      '-c',
      'write -P 0xcd 1M 4k',
      '-c',
      'write -P 0x11 3000k 300k',
      '-c',
      'write -z 2M 128k',
      '-c',
      'write -z -u 3072k 64k',
      p('q3.qcow2'),
    ]);
    const b = assertReadsAsQemu('q3.qcow2');
    assert.equal(b[0], 0xab);
    assert.equal(b[MiB], 0xcd);
  });

  test('v2 (compat=0.10)', () => {
    qemu('qemu-img', ['create', '-f', 'qcow2', '-o', 'compat=0.10', p('q2.qcow2'), '4M']);
    qemu('qemu-io', ['-c', 'write -P 0x42 512 70k', '-c', 'write -P 0x43 3M 1k', p('q2.qcow2')]);
    assert.match(qemu('qemu-img', ['info', p('q2.qcow2')]).out, /compat: 0\.10/);
    assert.equal(assertReadsAsQemu('q2.qcow2')[512], 0x42);
  });

  test('a chain: qcow2 over qcow2 over raw, each with writes of its own, a smaller base', () => {
    patterned('base.raw', 3 * MiB, 1);
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', p('base.raw'), '-F', 'raw', p('mid.qcow2'), '6M']);
    qemu('qemu-io', ['-c', 'write -P 0x77 64k 64k', '-c', 'write -P 0x78 5M 8k', p('mid.qcow2')]);
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', p('top.qcow2')]);
    qemu('qemu-io', ['-c', 'write -P 0x99 100k 10k', '-c', 'write -z 0 4k', p('top.qcow2')]);
    assertReadsAsQemu('top.qcow2');
  });

  test('compressed clusters (qemu-img convert -c), 64 KiB and 4 KiB clusters', () => {
    patterned('plain.raw', 2 * MiB, 9);
    qemu('qemu-img', ['convert', '-c', '-O', 'qcow2', p('plain.raw'), p('c64.qcow2')]);
    qemu('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', p('plain.raw'), p('c4.qcow2')]);
    assert.match(qemu('qemu-img', ['check', p('c64.qcow2')]).out, /compressed clusters/);
    const plain = readFileSync(p('plain.raw'));
    assert.ok(assertReadsAsQemu('c64.qcow2').equals(plain));
    assert.ok(assertReadsAsQemu('c4.qcow2').equals(plain));
  });
});

describe('images written by vireo pass qemu-img check and compare', () => {
  test('a fresh image made by vireo: 600 random writes, write-zeroes and discards', () => {
    createQcow2(p('fresh.qcow2'), { size: 16 * MiB });
    assert.ok(qemuCheck(p('fresh.qcow2')).clean, 'a fresh image is clean');
    const expected = Buffer.alloc(16 * MiB);
    withDisk(p('fresh.qcow2'), false, (d) => workload(d, expected, 1, 600, 65536));
    assertWrittenWell('fresh.qcow2', expected);
  });

  test('an overlay over a raw base (createQcow2Overlay): copy-on-write keeps the base unchanged', () => {
    const base = patterned('ovbase.raw', 8 * MiB, 3);
    createQcow2Overlay(p('ov.qcow2'), p('ovbase.raw'));
    assert.match(qemu('qemu-img', ['info', p('ov.qcow2')]).out, /backing file format: raw/);
    const expected = Buffer.from(base);
    withDisk(p('ov.qcow2'), false, (d) => workload(d, expected, 2, 500, 65536));
    assertWrittenWell('ov.qcow2', expected);
    assert.ok(readFileSync(p('ovbase.raw')).equals(base), 'the base is untouched');
  });

  test('an overlay over a qcow2 made by QEMU, larger than its base; reopened and written again', () => {
    qemu('qemu-img', ['create', '-f', 'qcow2', p('qbase.qcow2'), '4M']);
    qemu('qemu-io', ['-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0x5b 2M 512k', p('qbase.qcow2')]);
    createQcow2Overlay(p('qov.qcow2'), p('qbase.qcow2'), { size: 6 * MiB });
    const expected = Buffer.concat([qemuContent(p('qbase.qcow2'), p('qbase.raw')), Buffer.alloc(2 * MiB)]);
    withDisk(p('qov.qcow2'), false, (d) => workload(d, expected, 3, 300, 65536));
    withDisk(p('qov.qcow2'), false, (d) => workload(d, expected, 4, 300, 65536));
    assertWrittenWell('qov.qcow2', expected);
  });

  test('writes over compressed clusters move them out (copy-on-write from the inflated data)', () => {
    patterned('cplain.raw', 2 * MiB, 5);
    qemu('qemu-img', ['convert', '-c', '-O', 'qcow2', p('cplain.raw'), p('cw.qcow2')]);
    const expected = readFileSync(p('cplain.raw'));
    withDisk(p('cw.qcow2'), false, (d) => workload(d, expected, 5, 200, 65536));
    assertWrittenWell('cw.qcow2', expected);
  });

  test('512-byte clusters: enough writes that the refcount table moves and grows', () => {
    qemu('qemu-img', ['create', '-f', 'qcow2', '-o', 'cluster_size=512', p('small.qcow2'), '24M']);
    const before = qemu('qemu-img', ['info', '--output=json', p('small.qcow2')]).out;
    const expected = Buffer.alloc(24 * MiB);
    withDisk(p('small.qcow2'), false, (d) => {
      const chunk = Buffer.alloc(64 * 1024);
      for (let off = 0; off < 20 * MiB; off += chunk.length) {
        chunk.fill((off >> 16) & 0xff);
        d.writev([chunk], off);
        chunk.copy(expected, off);
      }
      workload(d, expected, 6, 300, 512);
    });
    const c = qemuCheck(p('small.qcow2'));
    assert.ok(c.clean, c.out);
    assert.ok(before.length > 0);
    assertWrittenWell('small.qcow2', expected);
  });

  test('a v2 image written by vireo (no zero flag: zeroes are written as data)', () => {
    qemu('qemu-img', ['create', '-f', 'qcow2', '-o', 'compat=0.10', p('w2.qcow2'), '4M']);
    const expected = Buffer.alloc(4 * MiB);
    withDisk(p('w2.qcow2'), false, (d) => workload(d, expected, 7, 200, 65536));
    assertWrittenWell('w2.qcow2', expected);
  });
});

describe('opening refuses what it cannot use, in one line', () => {
  const oneLine = (re: RegExp) => (e: Error) => re.test(e.message) && !e.message.includes('\n');

  test('a dirty or corrupt image opens read-only only; unknown incompatible features never', () => {
    createQcow2(p('bits.qcow2'), { size: MiB });
    const img = readFileSync(p('bits.qcow2'));
    const withBits = (bits: bigint, name: string): string => {
      const b = Buffer.from(img);
      b.writeBigUInt64BE(bits, 72);
      writeFileSync(p(name), b);
      return p(name);
    };
    const dirty = withBits(1n, 'dirty.qcow2');
    assert.throws(() => withDisk(dirty, false, () => 0), oneLine(/marked dirty.*qemu-img check -r all/));
    assert.equal(
      withDisk(dirty, true, (d) => d.size),
      MiB,
    );
    const corrupt = withBits(2n, 'corrupt.qcow2');
    assert.throws(() => withDisk(corrupt, false, () => 0), oneLine(/marked corrupt/));
    assert.throws(
      () => withDisk(withBits(1n << 40n, 'unknown.qcow2'), true, () => 0),
      oneLine(/incompatible feature bit 40 is not supported/),
    );
    assert.throws(
      () => withDisk(withBits(1n << 4n, 'ext-l2.qcow2'), true, () => 0),
      oneLine(/extended L2 entries.*not supported/),
    );
  });

  test('encryption, external data files and internal snapshots (for writing) are refused', () => {
    qemu('qemu-img', ['create', '-f', 'qcow2', '-o', 'data_file=' + p('data.raw'), p('ext.qcow2'), '1M']);
    assert.throws(() => withDisk(p('ext.qcow2'), true, () => 0), oneLine(/external data file.*not supported/));
    qemu('qemu-img', ['create', '-f', 'qcow2', p('snap.qcow2'), '1M']);
    qemu('qemu-img', ['snapshot', '-c', 's1', p('snap.qcow2')]);
    assert.throws(() => withDisk(p('snap.qcow2'), false, () => 0), oneLine(/internal snapshots/));
    assert.equal(
      withDisk(p('snap.qcow2'), true, (d) => d.size),
      MiB,
    );
    const enc = Buffer.from(readFileSync(p('bits.qcow2')));
    enc.writeUInt32BE(1, 32);
    writeFileSync(p('enc.qcow2'), enc);
    assert.throws(
      () => withDisk(p('enc.qcow2'), true, () => 0),
      oneLine(/crypt_method 1: encrypted images are not supported/),
    );
  });

  test('backing chains that loop, are too deep, or name a missing file', () => {
    createQcow2(p('loop-a.qcow2'), { size: MiB, backing: { file: 'loop-b.qcow2', format: 'qcow2' } });
    createQcow2(p('loop-b.qcow2'), { size: MiB, backing: { file: 'loop-a.qcow2', format: 'qcow2' } });
    assert.throws(() => withDisk(p('loop-a.qcow2'), true, () => 0), oneLine(/backing chain loops back/));
    writeFileSync(p('deep0.raw'), Buffer.alloc(MiB));
    for (let i = 1; i <= 18; i++)
      createQcow2(p(`deep${i}.qcow2`), {
        size: MiB,
        backing: { file: i === 1 ? 'deep0.raw' : `deep${i - 1}.qcow2`, format: i === 1 ? 'raw' : 'qcow2' },
      });
    assert.equal(
      withDisk(p('deep16.qcow2'), true, (d) => d.size),
      MiB,
    );
    assert.throws(() => withDisk(p('deep18.qcow2'), true, () => 0), oneLine(/backing chain is deeper than 16/));
    createQcow2(p('orphan.qcow2'), { size: MiB, backing: { file: 'nowhere.raw', format: 'raw' } });
    assert.throws(
      () => withDisk(p('orphan.qcow2'), true, () => 0),
      oneLine(/its backing file .*nowhere\.raw: cannot open drive image .*ENOENT/),
    );
  });

  test("a raw image opened without a format refuses a write of qcow2's magic at its start; with format=raw it takes it", () => {
    writeFileSync(p('probe.raw'), Buffer.alloc(MiB));
    const magic = Buffer.alloc(512);
    magic.writeUInt32BE(0x514649fb, 0);
    assert.throws(
      () => withDisk(p('probe.raw'), false, (d) => d.writev([magic], 0)),
      /refused a write of qcow2's magic/,
    );
    assert.equal(
      withDisk(p('probe.raw'), false, (d) => d.writev([magic], 512)),
      512,
    );
    assert.equal(
      withDisk(p('probe.raw'), false, (d) => d.writev([magic], 0), 'raw'),
      512,
    );
  });

  test('format=raw reads a qcow2 file as bytes; format=qcow2 on a raw file is refused', () => {
    createQcow2(p('fmt.qcow2'), { size: MiB });
    assert.equal(
      withDisk(p('fmt.qcow2'), true, (d) => readAll(d).readUInt32BE(0), 'raw'),
      0x514649fb,
    );
    writeFileSync(p('fmt.raw'), Buffer.alloc(MiB));
    assert.throws(() => withDisk(p('fmt.raw'), true, () => 0, 'qcow2'), oneLine(/bad magic/));
  });
});

describe('vireo image create', () => {
  const vireo = (...args: string[]) =>
    spawnSync(process.execPath, [join(repoRoot, 'bin', 'vireo.js'), 'image', 'create', ...args], { encoding: 'utf8' });

  test('an empty image and an overlay over it; qemu-img sees the backing file and finds no errors', () => {
    assert.equal(vireo('--size', '64M', p('cli-base.qcow2')).status, 0);
    const r = vireo('--backing', p('cli-base.qcow2'), p('cli-clone.qcow2'));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `${p('cli-clone.qcow2')}\n`);
    const info = qemu('qemu-img', ['info', p('cli-clone.qcow2')]).out;
    assert.match(info, /virtual size: 64 MiB/);
    assert.match(info, new RegExp(`backing file: ${p('cli-base.qcow2')}`));
    assert.ok(qemuCheck(p('cli-clone.qcow2')).clean);
  });

  test('usage errors are one line and exit 2', () => {
    for (const [args, re] of [
      [[p('cli-clone.qcow2'), '--backing', p('cli-base.qcow2')], /exists; remove it/],
      [['--size', '12Q', p('cli-x.qcow2')], /--size 12Q: give bytes/],
      [['--backing', p('nowhere.img'), p('cli-y.qcow2')], /backing image .*nowhere\.img does not exist/],
      [[p('cli-z.qcow2')], /needs --size/],
    ] as const) {
      const r = vireo(...args);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, re);
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    }
  });
});

test("a VM snapshot's configuration keeps a drive's format (and refuses one vireo does not have)", () => {
  const body = baseBody() as { config: { drives: unknown[] } };
  body.config.drives = [{ id: 'clone', path: '/images/clone.qcow2', readOnly: false, format: 'qcow2' }];
  validateBody(body, 's.state');
  body.config.drives = [{ id: 'clone', path: '/images/clone.img', format: 'vmdk' }];
  assert.throws(() => validateBody(body, 's.state'), /\$\.config\.drives\[0\]\.format: expected one of raw, qcow2/);
});
