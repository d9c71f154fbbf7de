/**
 * virtio-fs under a real Linux guest (Debian's cloud kernel, its fuse and virtiofs modules), booted by
 * vireo in the nested lane, once, checking many things: two shares mounted by tag, files written on
 * the host read in the guest and the other way round (checked on the host afterwards), a tree made,
 * archived and unpacked on the share, an 8 MiB file byte for byte, renames, links, symlinks; a
 * read-only share refusing every write; and escapes from inside (symlinks out of the share, '..',
 * a link to /, a host loop that keeps swapping a directory for a symlink to a secret beside the share
 * while the guest looks up through it) that must reach nothing outside it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { prepareKit } from '../src/kit/kit.js';
import { runNested } from '../src/kit/nested.js';
import { NestedError } from '../src/kit/util.js';
import { repoRoot } from './support/cc.js';
import { GUEST_SESSION, type GuestSession } from './support/lane.js';

/** VIREO_FS_THREAD=0: the shares served inline on the I/O thread (run with --no-seccomp), to compare with the worker. */
const INLINE = process.env.VIREO_FS_THREAD === '0';
const SECRET = 'the-secret-outside-the-share';

async function inLane(script: string): Promise<string> {
  for (let attempt = 1; ; attempt++) {
    try {
      const r = await runNested({ command: ['/bin/sh', '-c', script], cwd: repoRoot, timeoutMs: 8 * 60_000, cpus: 1 });
      return r.output;
    } catch (e) {
      if (!(e instanceof NestedError) || attempt === 3) throw e;
      process.stderr.write(`nested lane failed (${e.message.slice(0, 300)}); attempt ${attempt + 1} of 3\n`);
    }
  }
}

const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

test('virtio-fs under Linux: shares both ways, a read-only share, escapes from inside', {
  timeout: 30 * 60_000,
}, async () => {
  const kit = await prepareKit();
  // Each marker is computed by the guest's shell ($((…))), so the echoed command line never matches it.
  const steps = [
    { expect: 'vireo guest ready', timeoutMs: 240_000 },
    { expect: '# ', timeoutMs: 60_000 },
    {
      send: 'mkdir -p /mnt/s /mnt/r && mount -t virtiofs hostshare /mnt/s && mount -t virtiofs roshare /mnt/r; echo "mounted=$((3+4)) $(grep -c virtiofs /proc/mounts)"\n',
    },
    { expect: 'mounted=7', timeoutMs: 60_000 },
    { send: 'echo "fromhost=$(cat /mnt/s/from-host.txt) k=$((1+1))"\n' },
    { expect: 'k=2', timeoutMs: 60_000 },
    {
      send: 'echo guest wrote this > /mnt/s/from-guest.txt && mkdir /mnt/s/gdir && mv /mnt/s/from-guest.txt /mnt/s/gdir/g.txt && ln -s g.txt /mnt/s/gdir/link && ln /mnt/s/gdir/g.txt /mnt/s/gdir/hard && chmod 640 /mnt/s/gdir/hard && echo "readlink=$(readlink /mnt/s/gdir/link) nlink=$(stat -c %h /mnt/s/gdir/g.txt) via-link=$(cat /mnt/s/gdir/link) mode=$(stat -c %a /mnt/s/gdir/g.txt) w=$((5*5))"\n',
    },
    { expect: 'w=25', timeoutMs: 60_000 },
    {
      send: 'dd if=/dev/urandom of=/mnt/s/big bs=1M count=8 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; echo "gmd5=$(md5sum /mnt/s/big | cut -c1-32) size=$(stat -c %s /mnt/s/big) b=$((6*7))"\n',
    },
    { expect: 'b=42', timeoutMs: 120_000 },
    {
      send: 'mkdir -p /mnt/s/t/a/b && i=0; while [ $i -lt 200 ]; do echo "file $i" > /mnt/s/t/a/b/f$i; i=$((i+1)); done; tar -C /mnt/s -cf /mnt/s/t.tar t && mkdir /mnt/s/u && tar -C /mnt/s/u -xf /mnt/s/t.tar && echo "files=$(ls /mnt/s/u/t/a/b | wc -l) same=$(cat /mnt/s/t/a/b/* | md5sum | cut -c1-8)-$(cat /mnt/s/u/t/a/b/* | md5sum | cut -c1-8) c=$((7*8))"\n',
    },
    { expect: 'c=56', timeoutMs: 180_000 },
    { send: 'rm -rf /mnt/s/u /mnt/s/t.tar && echo "left=$(ls /mnt/s | grep -c "^u$") x=$((3*3))"\n' },
    { expect: 'x=9', timeoutMs: 120_000 },
    // A real workload on the share: git (the host's own binary and libraries, run from the share through
    // its loader) makes a repository with commits, a move, a removal, a branch, a merge, a tag and packed
    // refs (lock files renamed into place, objects linked from temporary names, fsyncs), then checks it.
    {
      send: 'g() { /mnt/s/.tools/ld.so --library-path /mnt/s/.tools/lib /mnt/s/.tools/git -c user.name=vireo -c user.email=guest@vireo.test -c maintenance.auto=false -c gc.auto=0 -c core.commitGraph=false -c core.multiPackIndex=false "$@"; }; export HOME=/tmp GIT_EXEC_PATH=/nonexistent; mkdir /mnt/s/repo && cd /mnt/s/repo && g init -q -b main && i=0; while [ $i -lt 50 ]; do echo "int f$i(void) { return $i; }" > f$i.c; i=$((i+1)); done; g add . && g commit -qm first && mkdir sub && g mv f1.c sub/ && g rm -q f2.c && echo "// changed" >> f3.c && g commit -qam second && g checkout -qb topic && echo t > t.txt && g add t.txt && g commit -qm third && g checkout -q main && g merge -q --no-edit topic && g tag v1 && g pack-refs --all && g fsck --strict --no-progress; echo "git-fsck=$? log=$(g log --oneline | wc -l) st=$(g status --porcelain | wc -l) tag=$(g describe --tags) q=$((12*12))"; cd /\n',
    },
    { expect: 'q=144', timeoutMs: 400_000 },
    {
      send: 'echo "ro-read=$(cat /mnt/r/ro.txt)"; echo x > /mnt/r/new; touch /mnt/r/new2; rm /mnt/r/ro.txt; mkdir /mnt/r/d; mv /mnt/r/ro.txt /mnt/r/moved; echo y >> /mnt/r/ro.txt; echo "ro-ls=$(ls /mnt/r | tr "\\n" ,) d=$((8*9))"\n',
    },
    { expect: 'd=72', timeoutMs: 60_000 },
    {
      send: 'cat /mnt/s/abs-link; cat /mnt/s/up-link/secret; ls /mnt/s/up-link/; ln -s / /mnt/s/rootlink; echo "up=$(ls /mnt/s/.. | tr "\\n" ,) root=$(ls /mnt/s/rootlink/ | head -3 | tr "\\n" ,) esc=$((9*9))"\n',
    },
    { expect: 'esc=81', timeoutMs: 60_000 },
    {
      // The host loop swaps share/sub for a symlink to the secret's directory and back, over and over.
      send: 'n=0; i=0; while [ $i -lt 150 ]; do cat /mnt/s/sub/secret 2>/dev/null && n=$((n+1)); cat /mnt/s/sub/inner >/dev/null 2>&1; ls /mnt/s/sub/ >/dev/null 2>&1; i=$((i+1)); done; echo "race-hits=$n r=$((10*10))"\n',
    },
    { expect: 'r=100', timeoutMs: 240_000 },
    { send: 'umount /mnt/s && umount /mnt/r; echo "umounted=$((11*11)) $(grep -c virtiofs /proc/mounts)"\n' },
    { expect: 'umounted=121', timeoutMs: 60_000 },
    { send: 'poweroff -f\n' },
  ];
  const script = [
    'set -e',
    'export VIREO_VERBOSE=1',
    // VIREO_FS_THREAD=0 on the test's side: the shares served inline (to compare with the worker), which
    // needs --no-seccomp (the I/O thread's filter has no file-system calls: src/vmm/kinds/fs.ts).
    ...(INLINE ? ['export VIREO_FS_THREAD=0'] : []),
    'd=$(mktemp -d)',
    'mkdir "$d/share" "$d/ro" "$d/outside" "$d/share/sub"',
    `echo ${SECRET} > "$d/outside/secret"`,
    'echo "host wrote this line" > "$d/share/from-host.txt"',
    'echo "read only content" > "$d/ro/ro.txt"',
    'echo inner > "$d/share/sub/inner"',
    'ln -s "$d/outside/secret" "$d/share/abs-link"',
    'ln -s ../outside "$d/share/up-link"',
    // git and what it loads, in the share (the kit's busybox has no git).
    'mkdir -p "$d/share/.tools/lib" && cp /usr/bin/git "$d/share/.tools/"',
    `ldd /usr/bin/git | grep -o '/[^ ]*' | while read -r l; do cp "$l" "$d/share/.tools/lib/"; done`,
    `cp "$(ldd /usr/bin/git | grep -o '/[^ ]*ld-linux[^ ]*')" "$d/share/.tools/ld.so"`,
    // The swapper: sub ⇄ a symlink to outside/, with short pauses (the lane has one emulated CPU).
    '( while :; do mv "$d/share/sub" "$d/share/sub.x" 2>/dev/null && ln -s "$d/outside" "$d/share/sub" 2>/dev/null; sleep 0.05; rm -f "$d/share/sub"; mv "$d/share/sub.x" "$d/share/sub" 2>/dev/null; sleep 0.05; done ) & swapper=$!',
    `${q(process.execPath)} ${q(GUEST_SESSION)} ${q(JSON.stringify(steps))} -- --native --kernel ${q(kit.kernel)} --initrd ${q(kit.initrd)} --mem 256 --share "$d/share,tag=hostshare" --share "$d/ro,tag=roshare,ro"${INLINE ? ' --no-seccomp' : ''}`,
    // From here on every line prints, whatever state the swapper was stopped in.
    'set +e',
    'kill $swapper; wait $swapper 2>/dev/null',
    'echo "host-from-guest=$(cat "$d/share/gdir/g.txt") host-hard-nlink=$(stat -c %h "$d/share/gdir/hard")"',
    'echo "host-big-md5=$(md5sum "$d/share/big" | cut -c1-32)"',
    'echo "host-tree=$(ls "$d/share/t/a/b" | wc -l)"',
    'echo "host-rootlink=$(readlink "$d/share/rootlink")"',
    'hg() { git -c safe.directory="*" -C "$d/share/repo" "$@"; }',
    'echo "host-git-fsck=$(hg fsck --strict --no-progress >/dev/null 2>&1; echo $?) host-git-log=$(hg log --oneline | wc -l) host-git-status=$(hg status --porcelain | wc -l) host-git-head=$(hg describe --tags)"',
    'echo "host-outside=$(ls -A "$d/outside" | tr "\\n" ,) host-secret-ok=$(grep -c ' +
      SECRET +
      ' "$d/outside/secret")"',
    'echo "host-beside=$(ls -A "$d" | tr "\\n" ,)"',
    'echo "host-ro=$(ls -A "$d/ro" | tr "\\n" ,) host-ro-content=$(cat "$d/ro/ro.txt")"',
  ].join('\n');
  const out = await inLane(script);
  const line = out.split('\n').find((l) => l.startsWith('@@guest-session '));
  assert.ok(line, `no session report:\n${out.slice(-3000)}`);
  const s = JSON.parse(line.slice('@@guest-session '.length)) as GuestSession;
  const g = s.output;
  assert.equal(s.failed, undefined, `${s.failed}\n${g.slice(-4000)}\nstderr: ${s.stderr}`);
  assert.match(g, /mounted=7 2/, 'both shares mounted by tag');
  assert.match(g, /fromhost=host wrote this line/, 'a file the host wrote, read in the guest');
  assert.match(g, /readlink=g\.txt nlink=2 via-link=guest wrote this mode=640/, 'rename, symlink, hard link, chmod');
  const gmd5 = g.match(/gmd5=([0-9a-f]{32}) size=8388608/)?.[1];
  assert.ok(gmd5, 'the guest wrote and read back 8 MiB');
  assert.match(out, new RegExp(`host-big-md5=${gmd5}`), 'the host file is what the guest wrote, byte for byte');
  const same = g.match(/files=200 same=([0-9a-f]{8})-([0-9a-f]{8})/);
  assert.ok(same && same[1] === same[2], 'a tree archived and unpacked on the share comes back the same');
  assert.match(g, /left=0 x=9/, 'rm -rf of a tree on the share');
  assert.match(
    g,
    /git-fsck=0 log=3 st=0 tag=v1 q=144/,
    `git on the share: a repository made and checked:\n${g.slice(g.indexOf('g init') - 200, g.indexOf('q=144') + 10).slice(-3000)}`,
  );
  assert.match(
    out,
    /host-git-fsck=0 host-git-log=3 host-git-status=0 host-git-head=v1/,
    'the host sees a sound repository, as the guest left it',
  );
  // The read-only share: every write refused, the file read, nothing changed on the host.
  assert.match(g, /ro-read=read only content/);
  assert.ok(
    (g.match(/Read-only file system/g) ?? []).length >= 6,
    `each write on the ro share failed EROFS:\n${g.slice(-3000)}`,
  );
  assert.match(g, /ro-ls=ro\.txt, d=72/);
  assert.match(out, /host-ro=ro\.txt, host-ro-content=read only content/);
  // Escapes: nothing of the host outside the share in any guest output.
  assert.ok(!g.includes(SECRET), `the guest never saw the secret beside the share:\n${g.slice(-3000)}`);
  assert.match(g, /race-hits=0 r=100/, 'lookups racing a host directory ⇄ symlink swap never reached outside');
  assert.match(g, /umounted=121 0/);
  assert.match(out, /host-from-guest=guest wrote this host-hard-nlink=2/, 'the guest file reached the host');
  assert.match(out, /host-tree=200/);
  assert.match(out, /host-rootlink=\//, 'a symlink the guest made is only text on the host');
  assert.match(out, /host-outside=secret, host-secret-ok=1/, 'outside the share: unchanged');
  assert.match(out, /host-beside=outside,ro,share,/, 'nothing created beside the share');
  const counters = s.stderr.match(/device counters (\{.*\})/);
  assert.ok(counters, `vireo reports device counters (VIREO_VERBOSE): ${s.stderr}`);
  const c = JSON.parse(counters[1] as string) as Record<string, Record<string, number>>;
  assert.ok((c['virtio-fs:hostshare']?.requests ?? 0) > 500, `requests served: ${counters[1]}`);
  assert.equal(c['virtio-fs:hostshare']?.serverFailures, 0);
  assert.equal(c['virtio-fs:hostshare']?.malformed, 0, 'Linux sent nothing the parser refused');
  assert.equal(s.status, 0, `clean power-off; stderr: ${s.stderr}`);
  process.stderr.write(
    `linux virtio-fs (${INLINE ? 'inline' : 'worker'}): session marks ${JSON.stringify(s.marks)}\ncounters ${counters[1]}\n`,
  );
});
