/**
 * A clone's disk under a real Linux guest (Debian's cloud kernel, the kit initramfs), booted by vireo in
 * the nested lane: the drive is a qcow2 overlay (made by `vireo image create --backing`) over a raw
 * base. The guest reads the base's marker through the overlay, writes (with fsync) and reads its whole
 * disk back with O_DIRECT; afterwards, on the host, qemu-img check finds no errors or leaks, qemu-img
 * convert of the overlay gives exactly what the guest read, and the base is unchanged.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession } from './support/lane.js';

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

test('Linux on a qcow2 overlay: reads the base through it, writes it, and QEMU agrees afterwards', {
  timeout: 25 * 60_000,
}, async () => {
  const kit = await prepareKit();
  const steps = [
    { expect: 'vireo guest ready', timeoutMs: 180_000 },
    { expect: '# ', timeoutMs: 60_000 },
    {
      send: 'echo "size=$(cat /sys/block/vda/size)"; dd if=/dev/vda bs=512 skip=10 count=1 2>/dev/null | head -c 20; echo\n',
    },
    { expect: 'BASE-MARKER-SECTOR10', timeoutMs: 60_000 },
    // 3 MiB of writes across clusters, one unaligned to them, synced; then the whole disk read back.
    {
      send: 'dd if=/dev/urandom of=/dev/vda bs=1M seek=5 count=2 oflag=direct 2>/dev/null; echo GUEST-WROTE-THIS | dd of=/dev/vda bs=512 seek=20 conv=sync,fsync 2>/dev/null; dd if=/dev/urandom of=/dev/vda bs=4k seek=3001 count=250 conv=fsync 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; echo "back=$(dd if=/dev/vda bs=512 skip=20 count=1 2>/dev/null | head -c 16)"\n',
    },
    { expect: 'back=GUEST-WROTE-T', timeoutMs: 120_000 },
    { send: 'echo "guest-md5=$(dd if=/dev/vda bs=4M iflag=direct 2>/dev/null | md5sum | cut -c1-32) n=$((2+2))"\n' },
    { expect: 'n=4', timeoutMs: 120_000 },
    { send: 'poweroff -f\n' },
  ];
  const vireo = `${q(process.execPath)} ${q(`${repoRoot}/bin/vireo.js`)}`;
  const script = [
    'set -e',
    'd=$(mktemp -d)',
    `node -e ${q("const fs=require('fs');const b=Buffer.alloc(32<<20);b.write('BASE-MARKER-SECTOR10',5120);fs.writeFileSync(process.argv[1]+'/base.raw',b);")} "$d"`,
    'base_md5=$(md5sum "$d/base.raw" | cut -c1-32)',
    `${vireo} image create --backing "$d/base.raw" "$d/clone.qcow2"`,
    `${q(process.execPath)} ${q(GUEST_SESSION)} ${q(JSON.stringify(steps))} -- --native --kernel ${q(kit.kernel)} --initrd ${q(kit.initrd)} --mem 256 --drive "path=$d/clone.qcow2,id=clone"`,
    'qemu-img check "$d/clone.qcow2" && echo "host-check=clean"',
    'qemu-img convert -O raw "$d/clone.qcow2" "$d/out.raw"',
    'echo "host-md5=$(md5sum "$d/out.raw" | cut -c1-32)"',
    '[ "$(md5sum "$d/base.raw" | cut -c1-32)" = "$base_md5" ] && echo "base-intact=true"',
  ].join('\n');
  const r = await runNested({ command: ['/bin/sh', '-c', script], cwd: repoRoot, timeoutMs: 10 * 60_000, cpus: 1 });
  const out = r.output;
  const line = out.split('\n').find((l) => l.startsWith('@@guest-session '));
  assert.ok(line, `no session report:\n${out.slice(-3000)}`);
  const s = JSON.parse(line.slice('@@guest-session '.length)) as GuestSession;
  assert.equal(s.failed, undefined, `${s.failed}\n${s.output.slice(-4000)}\nstderr: ${s.stderr}`);
  assert.match(s.output, /size=65536/, "the overlay has the base's size");
  const guestMd5 = s.output.match(/guest-md5=([0-9a-f]{32})/)?.[1];
  assert.ok(guestMd5, 'the guest read its whole disk');
  assert.equal(s.status, 0, `clean power-off; stderr: ${s.stderr}`);
  assert.match(out, /host-check=clean/, `qemu-img check: ${out.slice(-2000)}`);
  assert.match(out, new RegExp(`host-md5=${guestMd5}`), 'qemu-img convert gives what the guest read');
  assert.match(out, /base-intact=true/);
});
