/**
 * virtio devices under a real Linux guest (Debian's cloud kernel, found through the DSDT as LNRO0005),
 * booted by vireo in the nested lane: two virtio-blk drives (one read-only) read and written by the
 * guest with the host file checked afterwards, virtio-rng as the guest's hwrng, and a balloon the guest
 * inflates to the target it is given.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession } from './support/lane.js';

const session = GUEST_SESSION;

/** Runs `inner` (a shell script) in the lane, up to 3 times when the lane itself hangs. */
async function inLane(script: string): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await runNested({ command: ['/bin/sh', '-c', script], cwd: repoRoot, timeoutMs: 6 * 60_000, cpus: 1 });
      return r.output;
    } catch (e) {
      if (!(e instanceof NestedError) || attempt === 3) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
    }
  }
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

test('virtio-blk (rw and ro), virtio-rng and virtio-balloon under Linux', { timeout: 25 * 60_000 }, async () => {
  const kit = await prepareKit();
  const steps = [
    { expect: 'vireo guest ready', timeoutMs: 180_000 },
    { expect: '# ', timeoutMs: 60_000 },
    // Disk: size, a marker the host wrote, a write that must reach the host file.
    {
      send: 'echo "size=$(cat /sys/block/vda/size) ro=$(cat /sys/block/vdb/ro) serial=$(cat /sys/block/vda/serial 2>/dev/null)"; dd if=/dev/vda bs=512 skip=10 count=1 2>/dev/null | head -c 22; echo\n',
    },
    { expect: 'VIREO-MARKER-SECTOR-10', timeoutMs: 60_000 },
    {
      send: 'echo WRITTEN-BY-GUEST | dd of=/dev/vda bs=512 seek=20 conv=sync,fsync 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; echo "back=$(dd if=/dev/vda bs=512 skip=20 count=1 2>/dev/null | head -c 16)"\n',
    },
    { expect: 'back=WRITTEN-BY-GUEST', timeoutMs: 60_000 },
    // The whole disk in 4 MiB direct reads: Linux splits each into several requests sent together,
    // which run in parallel on the disk's I/O threads; the checksum must match the host file's.
    {
      send: 'echo "guest-md5=$(dd if=/dev/vda bs=4M iflag=direct 2>/dev/null | md5sum | cut -c1-32) n=$((2+2))"\n',
    },
    { expect: 'n=4', timeoutMs: 120_000 },
    {
      send: 'dd if=/dev/zero of=/dev/vdb bs=512 count=1 oflag=sync 2>/dev/null; echo "ro-write-status=$? of=$((1+1))"\n',
    },
    { expect: 'of=2', timeoutMs: 60_000 },
    // Entropy: the kernel's hwrng is the virtio one and gives bytes.
    { send: 'echo "rng=$(cat /sys/class/misc/hw_random/rng_current) bytes=$(head -c 4096 /dev/hwrng | wc -c)"\n' },
    { expect: 'bytes=4096', timeoutMs: 60_000 },
    // Balloon: the guest gives back the 32 MiB target (MemTotal drops by that much).
    // Inflating goes a megabyte per round trip; wait until MemTotal stops moving (at most 40 s).
    {
      send: 'mt() { sed -n "s/^MemTotal: *\\([0-9]*\\) kB$/\\1/p" /proc/meminfo; }; a=$(mt); i=0; while [ $i -lt 40 ]; do sleep 2; b=$(mt); [ "$a" = "$b" ] && break; a=$b; i=$((i+1)); done; echo "memnow=$(mt)kB done=$((2*3))"\n',
    },
    { expect: 'done=6', timeoutMs: 60_000 },
    { send: 'poweroff -f\n' },
  ];
  const script = [
    'set -e',
    'export VIREO_VERBOSE=1',
    'd=$(mktemp -d)',
    `node -e ${q(
      "const fs=require('fs');const b=Buffer.alloc(64<<20);b.write('VIREO-MARKER-SECTOR-10',5120);fs.writeFileSync(process.argv[1]+'/rw.img',b);fs.writeFileSync(process.argv[1]+'/ro.img',Buffer.alloc(1<<20,7));",
    )} "$d"`,
    `${q(process.execPath)} ${q(session)} ${q(JSON.stringify(steps))} -- --native --kernel ${q(kit.kernel)} --initrd ${q(kit.initrd)} --mem 256 --drive "path=$d/rw.img,id=rootdisk" --drive "path=$d/ro.img,ro" --rng --balloon amount=32`,
    `echo "host-md5=$(md5sum "$d/rw.img" | cut -c1-32)"`,
    `echo "host-sector-20=$(dd if="$d/rw.img" bs=512 skip=20 count=1 2>/dev/null | head -c 16)"`,
    `node -e ${q("const b=require('fs').readFileSync(process.argv[1]);console.log('host-ro-intact='+b.every((x)=>x===7))")} "$d/ro.img"`,
  ].join('\n');
  const out = await inLane(script);
  const line = out.split('\n').find((l) => l.startsWith('@@guest-session '));
  assert.ok(line, `no session report:\n${out.slice(-3000)}`);
  const s = JSON.parse(line.slice('@@guest-session '.length)) as GuestSession;
  const g = s.output;
  assert.equal(s.failed, undefined, `${s.failed}\n${g.slice(-4000)}\nstderr: ${s.stderr}`);
  assert.match(g, /size=131072 ro=1 serial=rootdisk/, 'capacity, read-only flag and serial (GET_ID)');
  assert.match(g, /back=WRITTEN-BY-GUEST/);
  assert.match(g, /rng=virtio_rng\.\d+ bytes=4096/);
  assert.match(g, /ro-write-status=[1-9]\d* of=2/, 'the read-only drive refused the write');
  const counters = s.stderr.match(/device counters (\{.*\})/);
  assert.ok(counters, `vireo reports device counters (VIREO_VERBOSE): ${s.stderr}`);
  const c = JSON.parse(counters[1] as string) as Record<string, Record<string, number>>;
  assert.equal(c['virtio-balloon']?.inflatedPages, 8192, 'the guest gave back exactly the 32 MiB target');
  assert.equal(c['virtio-balloon']?.invalidPages, 0);
  assert.ok((c['virtio-blk:rootdisk']?.writes ?? 0) >= 1, 'the guest wrote to the rw drive');
  assert.ok((c['virtio-blk:rootdisk']?.offloaded ?? 0) > 0, 'requests ran on the disk I/O threads');
  const guestMd5 = g.match(/guest-md5=([0-9a-f]{32})/)?.[1];
  assert.ok(guestMd5, 'the guest read the whole disk');
  assert.match(out, new RegExp(`host-md5=${guestMd5}`), 'what the guest read is the host file, byte for byte');
  assert.equal(c['virtio-blk:drive1']?.writes, 0, 'the guest never sent a write to the read-only drive');
  assert.ok((c['virtio-rng']?.bytes ?? 0) >= 4096);
  const now = g.match(/memnow=(\d+)kB/);
  assert.ok(now && Number(now[1]) < 256 * 1024 - 32 * 1024, `MemTotal shrank by the balloon: ${now?.[1]} kB`);
  assert.equal(s.status, 0, `clean power-off; stderr: ${s.stderr}`);
  assert.match(out, /host-sector-20=WRITTEN-BY-GUEST/, 'the guest write reached the host file');
  assert.match(out, /host-ro-intact=true/, 'the read-only image is untouched');
  process.stderr.write(`linux virtio: session marks ${JSON.stringify(s.marks)}\n`);
});
