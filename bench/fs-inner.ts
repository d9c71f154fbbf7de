/**
 * The file-system benchmark (bench/run.ts, suite `fs`). Runs inside the nested lane (run.ts starts it
 * there on PVM hosts; on a VT-x/AMD-V host it runs directly): one vireo guest (the kit's stock kernel)
 * with a virtio-fs share (`--share DIR,tag=benchfs`) and a virtio-blk disk holding a fresh ext4
 * (`--drive`), both backed by the lane's /tmp, and in it the same operations on each:
 * - untar of a source tree (a tarball of VIREO_BENCH_FS_TREE, default /usr/include/linux, made on the
 *   host and carried in the initramfs, so the read side is RAM) followed by sync,
 * - find + stat of every entry of the tree, after `echo 3 > /proc/sys/vm/drop_caches`,
 * - sequential write of VIREO_BENCH_FS_MIB MiB (dd bs=1M conv=fsync), then, caches dropped, its read.
 * VIREO_BENCH_FS_RUNS rounds (default 2), the two file systems in alternating order. Times come from
 * the guest's /proc/uptime (10 ms resolution). QEMU's 9p is a peer only when the kit kernel has 9p
 * (CONFIG_NET_9P, CONFIG_9P_FS); Debian's cloud kernel does not, and the row says so.
 *
 * Prints one "@bench {json}" line. VIREO_BENCH_FS_INITRD, VIREO_BENCH_FS_ENTRIES and
 * VIREO_BENCH_FS_TREE_BYTES: an initramfs prepared by prepareFsGuest outside the lane and what its tree
 * holds (else it is built here).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  realpathSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InitramfsBuilder, readCpio } from '../src/kit/initramfs.js';
import { atomicWrite, type GuestMarks, kitInitWith, runGuest, vireoKitArgs, writeVireoLauncher } from './blk-inner.js';
import { benchBuildDir } from './build.js';
import { median } from './util.js';

export const FS_MARKS: GuestMarks = { name: 'fsbench', start: '@fsbench-start', result: '@fsbench ' };
const TIME_MARK = '@fstime ';
export const FS_TAG = 'benchfs';
const MEM = 512;

export const FS_TARGETS = ['virtiofs', 'ext4'] as const;
export type FsTarget = (typeof FS_TARGETS)[number];
export const FS_OPS = ['untar', 'findstat', 'write', 'read'] as const;
export type FsOp = (typeof FS_OPS)[number];

export interface FsParams {
  runs: number;
  mib: number;
  /** The directory whose tarball is unpacked. */
  tree: string;
}

export function fsParams(env: NodeJS.ProcessEnv = process.env): FsParams {
  const num = (k: string, d: number): number => {
    const v = env[k];
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new Error(`${k}=${v}: give a positive whole number`);
    return n;
  };
  return {
    runs: num('VIREO_BENCH_FS_RUNS', 2),
    mib: num('VIREO_BENCH_FS_MIB', 256),
    tree: env.VIREO_BENCH_FS_TREE || '/usr/include/linux',
  };
}

/**
 * The guest's /fsbench (busybox sh). For each round and file system it prints
 * `@fstime TARGET OP ROUND T0 T1 N` (T0, T1: /proc/uptime seconds around the operation; N: entries
 * found after the untar, entries stat'ed, or the file's size in bytes), and last `@fsbench {"done":true}`
 * (or `{"error":…}`).
 */
export const FSBENCH_SCRIPT = `#!/bin/sh
# Written by bench/fs-inner.ts: the same file operations on a virtio-fs share and on ext4 on virtio-blk.
runs=2 mib=256
for a in $(cat /proc/cmdline); do
  case "$a" in
    fsbench.runs=*) runs=\${a#fsbench.runs=} ;;
    fsbench.mib=*) mib=\${a#fsbench.mib=} ;;
  esac
done
fail() { echo "${FS_MARKS.result}{\\"error\\":\\"$(echo "$*" | tr -d '"\\\\' | tr '\\n' ' ')\\"}"; exit 0; }
mkdir -p /mnt/virtiofs /mnt/ext4
mount -t virtiofs ${FS_TAG} /mnt/virtiofs 2>/tmp/m.err || fail "cannot mount the virtio-fs share: $(cat /tmp/m.err)"
mount -t ext4 /dev/vda /mnt/ext4 2>/tmp/m.err || fail "cannot mount /dev/vda as ext4: $(cat /tmp/m.err)"
now() { cut -d' ' -f1 /proc/uptime; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
echo ${FS_MARKS.start}
i=1
while [ $i -le $runs ]; do
  if [ $((i % 2)) = 1 ]; then order="virtiofs ext4"; else order="ext4 virtiofs"; fi
  for t in $order; do
    d=/mnt/$t
    rm -rf $d/tree $d/big; mkdir $d/tree || fail "mkdir on $t"; drop
    a=$(now); tar -C $d/tree -xf /fsbench/tree.tar 2>/tmp/e || fail "untar on $t: $(tail -n 2 /tmp/e)"; sync; b=$(now)
    echo "${TIME_MARK}$t untar $i $a $b $(find $d/tree | wc -l)"
    drop
    a=$(now); n=$(find $d/tree -exec stat -c %s {} + | wc -l); b=$(now)
    echo "${TIME_MARK}$t findstat $i $a $b $n"
    a=$(now); dd if=/dev/zero of=$d/big bs=1M count=$mib conv=fsync 2>/tmp/e || fail "write on $t: $(tail -n 2 /tmp/e)"; b=$(now)
    echo "${TIME_MARK}$t write $i $a $b $(stat -c %s $d/big)"
    drop
    a=$(now); dd if=$d/big of=/dev/null bs=1M 2>/tmp/e || fail "read on $t: $(tail -n 2 /tmp/e)"; b=$(now)
    echo "${TIME_MARK}$t read $i $a $b $(stat -c %s $d/big)"
  done
  i=$((i + 1))
done
rm -rf /mnt/virtiofs/tree /mnt/virtiofs/big /mnt/ext4/tree /mnt/ext4/big
sync
umount /mnt/virtiofs && umount /mnt/ext4 || fail "umount"
echo '${FS_MARKS.result}{"done":true}'
`;

/** A tarball of `dir` (its last component at the top) and how many entries it holds (dirs included). */
export function treeTarball(dir: string): { tar: Buffer; entries: number; bytes: number } {
  const parent = join(dir, '..');
  const name = dir.replace(/\/+$/, '').split('/').pop() as string;
  const tar = execFileSync('tar', ['-C', parent, '--owner=0', '--group=0', '-cf', '-', name], {
    maxBuffer: 1 << 30,
  });
  const list = execFileSync('tar', ['-tf', '-'], { input: tar, encoding: 'utf8', maxBuffer: 1 << 28 });
  return { tar, entries: list.split('\n').filter((l) => l !== '').length, bytes: tar.length };
}

/** The archive appended to the kit's initramfs: the tarball, /fsbench and /fsbench-init. */
export function fsGuestArchive(kitInit: string, tar: Uint8Array): InitramfsBuilder {
  const img = new InitramfsBuilder();
  img.file('fsbench/tree.tar', tar, 0o644);
  img.file('fsbench/run', FSBENCH_SCRIPT, 0o755);
  const added = [
    '# Added by bench/fs-inner.ts: the file-system benchmark, before vireo.exit= ends the guest.',
    '/fsbench/run',
  ];
  img.file('fsbench-init', kitInitWith(kitInit, added, 'fsbench'), 0o755);
  return img;
}

export interface FsGuest {
  initrd: string;
  /** What the tree holds: entries as tar lists them, the tarball's size. */
  tree: { dir: string; entries: number; bytes: number };
}

/** Builds (cached by content) the kit's initramfs with fsGuestArchive appended. */
export function prepareFsGuest(kit: { initrd: string }, treeDir: string): FsGuest {
  const base = readFileSync(kit.initrd);
  const init = readCpio(base).find((e) => e.path === 'init');
  if (init?.type !== 'file') throw new Error(`${kit.initrd} has no /init`);
  const t = treeTarball(treeDir);
  const extra = fsGuestArchive(Buffer.from(init.data).toString('utf8'), t.tar).build();
  const h = createHash('sha256').update(base).update(extra).digest('hex').slice(0, 16);
  const out = join(benchBuildDir, `fs-initrd-${h}.cpio`);
  if (!existsSync(out)) {
    mkdirSync(benchBuildDir, { recursive: true });
    atomicWrite(out, Buffer.concat([base, extra]));
  }
  return { initrd: out, tree: { dir: treeDir, entries: t.entries, bytes: t.bytes } };
}

/** Whether a kernel config has what QEMU's 9p needs in the guest; if not, which options are missing. */
export function kernel9p(config: string): { ok: true } | { ok: false; why: string } {
  const missing = ['CONFIG_NET_9P', 'CONFIG_NET_9P_VIRTIO', 'CONFIG_9P_FS'].filter(
    (k) => !new RegExp(`^${k}=[ym]$`, 'm').test(config),
  );
  return missing.length === 0 ? { ok: true } : { ok: false, why: `not set in its config: ${missing.join(', ')}` };
}

// --- what the guest printed ------------------------------------------------------------------------

export interface FsSample {
  target: FsTarget;
  op: FsOp;
  round: number;
  ms: number;
  /** Entries (untar, findstat) or bytes (write, read). */
  n: number;
}

/** The guest's @fstime lines; a line with that mark that does not parse is an error, naming it. */
export function parseFsOutput(output: string): FsSample[] {
  const out: FsSample[] = [];
  for (const raw of output.split('\n')) {
    const l = raw.replace(/\r$/, '');
    if (!l.startsWith(TIME_MARK)) continue;
    const m = /^(\S+) (\S+) (\d+) (\d+(?:\.\d+)?) (\d+(?:\.\d+)?) (\d+)$/.exec(l.slice(TIME_MARK.length).trim());
    const target = m?.[1] as FsTarget;
    const op = m?.[2] as FsOp;
    if (!m || !FS_TARGETS.includes(target) || !FS_OPS.includes(op)) throw new Error(`malformed @fstime line: ${l}`);
    const t0 = Number(m[4]);
    const t1 = Number(m[5]);
    if (t1 < t0) throw new Error(`@fstime line going back in time: ${l}`);
    out.push({ target, op, round: Number(m[3]), ms: Math.round((t1 - t0) * 1000), n: Number(m[6]) });
  }
  return out;
}

export interface FsOpSummary {
  /** Medians: ms for untar and findstat, MiB/s for write and read; null when no round completed. */
  virtiofs: number | null;
  ext4: number | null;
  /** virtio-fs / ext4. */
  ratio: number | null;
  unit: 'ms' | 'MiB/s';
  byRound: { virtiofs: number[]; ext4: number[] };
}

/**
 * Per operation: medians for each file system and their ratio. Checks what the guest did: every
 * untar found the tree's `entries`, every find+stat stat'ed them all, every file was `mib` MiB.
 */
export function summarizeFs(samples: FsSample[], expect: { entries: number; mib: number }): Record<FsOp, FsOpSummary> {
  for (const s of samples) {
    // The tree's entries, plus the directory it was unpacked into (find lists it).
    if ((s.op === 'untar' || s.op === 'findstat') && s.n !== expect.entries + 1)
      throw new Error(`${s.target} ${s.op} round ${s.round}: ${s.n} entries, expected ${expect.entries + 1}`);
    if ((s.op === 'write' || s.op === 'read') && s.n !== expect.mib * 1024 * 1024)
      throw new Error(`${s.target} ${s.op} round ${s.round}: a ${s.n}-byte file, expected ${expect.mib} MiB`);
    if ((s.op === 'write' || s.op === 'read') && s.ms === 0)
      throw new Error(
        `${s.target} ${s.op} round ${s.round}: under /proc/uptime's 10 ms resolution, no rate (raise VIREO_BENCH_FS_MIB)`,
      );
  }
  const out = {} as Record<FsOp, FsOpSummary>;
  for (const op of FS_OPS) {
    const rate = op === 'write' || op === 'read';
    const vals = (t: FsTarget): number[] =>
      samples.filter((s) => s.op === op && s.target === t).map((s) => (rate ? expect.mib / (s.ms / 1000) : s.ms));
    const v = vals('virtiofs');
    const e = vals('ext4');
    const mv = v.length ? median(v) : null;
    const me = e.length ? median(e) : null;
    out[op] = {
      virtiofs: mv,
      ext4: me,
      ratio: mv !== null && me !== null && me > 0 ? mv / me : null,
      unit: rate ? 'MiB/s' : 'ms',
      byRound: { virtiofs: v, ext4: e },
    };
  }
  return out;
}

// --- the run, in the lane -------------------------------------------------------------------------

async function main(): Promise<void> {
  const { DEFAULT_LINUX_CMDLINE } = await import('../src/cli/main.js');
  const { prepareKit } = await import('../src/kit/kit.js');
  const p = fsParams();
  const kit = await prepareKit({ offline: process.env.VIREO_NESTED === '1' });
  const given = process.env.VIREO_BENCH_FS_INITRD;
  const entries = Number(process.env.VIREO_BENCH_FS_ENTRIES);
  const guest =
    given && existsSync(given) && Number.isInteger(entries)
      ? { initrd: given, tree: { dir: p.tree, entries, bytes: Number(process.env.VIREO_BENCH_FS_TREE_BYTES) } }
      : prepareFsGuest(kit, p.tree);
  const work = mkdtempSync(join(tmpdir(), 'vireo-fs-bench-'));
  const share = join(work, 'share');
  mkdirSync(share);
  const img = join(work, 'disk.img');
  // Room for the tree and the file, and ext4's own; inode tables and journal written now, not by the guest.
  const imageMiB = Math.max(1024, p.mib * 2 + 256);
  const fd = openSync(img, 'w');
  ftruncateSync(fd, imageMiB * 1024 * 1024);
  closeSync(fd);
  execFileSync('mkfs.ext4', ['-F', '-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', img], { stdio: 'pipe' });
  const cmdline = [
    DEFAULT_LINUX_CMDLINE,
    'quiet vireo.exit=poweroff rdinit=/fsbench-init',
    `fsbench.runs=${p.runs} fsbench.mib=${p.mib}`,
  ].join(' ');
  const devices = ['--share', `${share},tag=${FS_TAG}`, '--drive', `path=${img},id=d0`];
  const args = vireoKitArgs({
    launcher: writeVireoLauncher(work),
    preload: undefined,
    kernel: kit.kernel,
    initrd: guest.initrd,
    memMiB: MEM,
    devices,
    cmdline,
  });
  let samples: FsSample[] = [];
  let error: string | undefined;
  let g: Awaited<ReturnType<typeof runGuest>> | undefined;
  try {
    process.stderr.write(`[fs] ${p.runs} rounds, ${p.mib} MiB, tree ${p.tree} (${guest.tree.entries} entries)\n`);
    g = await runGuest(process.execPath, args, { ...process.env, VIREO_VERBOSE: '1' }, false, FS_MARKS, true);
    samples = parseFsOutput(g.output ?? '');
    if (g.error !== undefined) error = g.error;
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  let summary: Record<FsOp, FsOpSummary> | undefined;
  try {
    summary = summarizeFs(samples, { entries: guest.tree.entries, mib: p.mib });
  } catch (e) {
    error ??= e instanceof Error ? e.message : String(e);
  }
  let config = '';
  try {
    config = readFileSync(join(kit.dir, 'config'), 'utf8');
  } catch {
    // no config kept with the kit: said below
  }
  const has9p = config === '' ? { ok: false as const, why: `no kernel config in ${kit.dir}` } : kernel9p(config);
  const bench = {
    ...p,
    memMiB: MEM,
    imageMiB,
    tree: guest.tree,
    kernel: kit.kernelVersion,
    cmdline,
    vireo: `vireo run --native --kernel K --initrd I --mem ${MEM} --cpus 1 --share SHARE,tag=${FS_TAG} --drive path=IMG,id=d0 --cmdline …`,
    backing: process.env.VIREO_NESTED === '1' ? "tmpfs (the lane's overlay /tmp)" : tmpdir(),
    status: g?.status ?? null,
    wallMs: g?.wallMs ?? null,
    counters: g?.counters,
    samples,
    summary,
    ninep: has9p.ok
      ? { ok: false, why: 'the kit kernel has 9p, but this suite does not run QEMU with -virtfs yet' }
      : { ok: false, why: `the kit kernel (${kit.kernelVersion}) has no 9p: ${has9p.why}` },
    ...(error !== undefined ? { error, stderrTail: g?.stderrTail } : {}),
  };
  process.stdout.write(`@bench ${JSON.stringify(bench)}\n`);
}

const invoked = process.argv[1];
if (invoked !== undefined && realpathSync(invoked) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`fs-inner: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
