/**
 * bin/jailer.js (vireo-jailer) as orchestrators run Firecracker's jailer, all real (root, namespaces,
 * mounts, cgroups, KVM): vireo-firecracker jailed in a new PID namespace as uid/gid 123 with no-file 256,
 * driven over HTTP at <chroot>/run/api.sock from the host and booting a guest whose kernel is inside
 * the jail; from the host, its ids, capabilities, rlimits, namespaces and the mounts that make up its
 * root (Node, its libraries and vireo read-only; nothing else of the host). A second jail keeps the
 * PID (the orchestrator's child is the VMM, its exit status the guest's), joins a network namespace and
 * enters a cgroup. A static probe run as the exec file reports what a jailed process sees from inside
 * (no capabilities, no /etc, no /proc, no inherited descriptors, an empty environment), with
 * --daemonize. Bad input: one line, exit status 1, nothing created.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  chownSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { planCgroups } from '../src/cli/jail/cgroup.js';
import { jailContents } from '../src/cli/jail/contents.js';
import { guestPath } from './guests/build.js';
import { repoRoot } from './support/cc.js';
import { fcRequest, firecrackerBin, waitForPath } from './support/fc-client.js';
import { kvmSkipReason } from './support/vireo.js';

const jailerBin = join(repoRoot, 'bin', 'jailer.js');
const UID = 123;
const GID = 123;
const tmp = mkdtempSync(join(tmpdir(), 'vireo-jailer-'));
const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups.reverse()) {
    try {
      c();
    } catch {
      // best effort: the rest still runs
    }
  }
  rmSync(tmp, { recursive: true, force: true });
});

/** A fresh, empty chroot base for one jail. */
function chrootBase(): string {
  return mkdtempSync(join(tmp, 'base-'));
}

interface Jailed {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** The jailer's own exit (with --new-pid-ns, right after the fork). */
  exit: Promise<number | null>;
  /** Every holder of the jailer's stdout and stderr is gone: the VMM ended too. */
  closed: Promise<number | null>;
}

function jail(args: string[], extraFd = false): Jailed {
  const child = spawn(process.execPath, [jailerBin, ...args], {
    stdio: ['ignore', 'pipe', 'pipe', ...(extraFd ? (['pipe'] as const) : [])],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (b: Buffer) => {
    out += b.toString('latin1');
  });
  child.stderr!.on('data', (b: Buffer) => {
    err += b.toString('latin1');
  });
  const exit = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  const closed = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  cleanups.push(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return { child, stdout: () => out, stderr: () => err, exit, closed };
}

const status = (pid: number): Record<string, string> =>
  Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .trim()
      .split('\n')
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]),
  );

function limit(pid: number, name: string): [string, string] {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(name));
  assert.ok(line, `${name} in /proc/${pid}/limits`);
  const [soft, hard] = line.slice(name.length).trim().split(/\s+/);
  return [soft as string, hard as string];
}

/** The mount points of `pid`'s mount namespace, and whether each is read-only. */
function mounts(pid: number): { point: string; ro: boolean }[] {
  return readFileSync(`/proc/${pid}/mountinfo`, 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const f = l.split(' ');
      return { point: f[4] as string, ro: (f[5] as string).split(',').includes('ro') };
    });
}

const guest = (): string => guestPath('hello64');

/** Copies the guest's kernel into the jail, where the jailed VMM can read it. */
function kernelInJail(chroot: string): string {
  copyFileSync(guest(), join(chroot, 'hello64'));
  chownSync(join(chroot, 'hello64'), UID, GID);
  return '/hello64';
}

describe('vireo-jailer: bad input', () => {
  const base = chrootBase();
  const fakeNs = join(tmp, 'not-a-netns');
  writeFileSync(fakeNs, '');
  const good = ['--id', 'bad-input', '--exec-file', firecrackerBin, '--uid', '123', '--gid', '123'];
  const cases: [string[], RegExp][] = [
    [[...good, '--bogus'], /Found argument '--bogus' which wasn't expected/],
    [['--id', 'bad_id', ...good.slice(2)], /Invalid instance ID: invalid char \(_\) at position 3/],
    [['--id', 'a'.repeat(65), ...good.slice(2)], /Invalid instance ID: invalid len \(65\)/],
    [['--id', '', ...good.slice(2)], /Invalid instance ID: invalid len \(0\)/],
    [good.slice(2), /Argument 'id' required, but not found/],
    [
      [...good.slice(0, 2), '--exec-file', join(tmp, 'no-such-file'), ...good.slice(4)],
      /Failed to canonicalize path .*no-such-file: ENOENT/,
    ],
    [[...good.slice(0, 2), '--exec-file', tmp, ...good.slice(4)], /is not a file/],
    [[...good.slice(0, 4), '--uid', 'nobody', ...good.slice(6)], /Invalid uid: nobody/],
    [[...good.slice(0, 6), '--gid', '-1'], /Invalid gid: -1/],
    [[...good.slice(0, 4), '--uid', '4294967296', ...good.slice(6)], /Invalid uid: 4294967296/],
    [
      [...good.slice(0, 6), '--gid', '4294967295'],
      /Invalid gid: 4294967295 \(the kernel reads \(gid_t\)-1 as "leave unchanged"\)/,
    ],
    [[...good, '--netns', join(tmp, 'no-such-netns')], /Failed to open file .*no-such-netns: ENOENT/],
    [[...good, '--netns', fakeNs], /is not a namespace file/],
    [[...good, '--chroot-base-dir', join(tmp, 'no-such-dir')], /Failed to canonicalize path/],
    [[...good, '--cgroup', 'pids.max'], /Invalid format for cgroups: pids.max/],
    [[...good, '--cgroup', 'pidsmax=3'], /Cgroup invalid file: pidsmax/],
    [[...good, '--cgroup-version', '3'], /3 is an invalid cgroup version specifier/],
    [[...good, '--parent-cgroup', '../up'], /Parent cgroup path is invalid/],
    [[...good, '--resource-limit', 'no-file'], /Invalid format for resources limits: no-file/],
    [[...good, '--resource-limit', 'cpu=1'], /Invalid resource argument: cpu/],
    [[...good, '--resource-limit', 'fsize=big'], /Invalid limit value for resource: big/],
    [[...good, '--daemonize=yes'], /does not take a value/],
    [[...good, '--id', 'again'], /provided more than once/],
    [[...good, '--netns'], /'--netns' requires a value/],
    [
      [...good.slice(0, 2), '--exec-file', join(repoRoot, 'package.json'), ...good.slice(4)],
      /neither an ELF executable nor a Node script/,
    ],
    // cgroup v2 where it cannot serve: one line whether the host has no cgroup2 (these machines'
    // controllers are bound to v1) or lacks the controller.
    [
      [...good, '--cgroup-version', '2', '--cgroup', 'nosuch.max=1'],
      /cgroup v2(: controller nosuch is not available| is not mounted)/,
    ],
    [
      [...good, '--cgroup-version', '1', '--cgroup', 'nosuch.max=1'],
      /cgroup v1: no hierarchy is mounted with the nosuch controller/,
    ],
  ];
  for (const [args, want] of cases) {
    test(want.source, () => {
      const argv = args.includes('--chroot-base-dir') ? args : [...args, '--chroot-base-dir', base];
      const r = spawnSync(process.execPath, [jailerBin, ...argv], { encoding: 'utf8', timeout: 20_000 });
      assert.equal(r.status, 1, r.stderr);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.match(r.stderr, want);
      assert.deepEqual(readdirSync(base), [], 'nothing created');
    });
  }

  test('a cgroup file the kernel does not have: one line, the cgroup and the jail removed again', () => {
    const plan = planCgroups(
      [{ file: 'pids.max', controller: 'pids', value: '1' }],
      undefined,
      'vireo-jailer-test',
      'x',
    );
    assert.ok(plan, 'this host has a pids controller (v1 or v2)');
    const parentDir = join(plan.groups[0]!.base, 'vireo-jailer-test');
    const existed = existsSync(parentDir);
    const r = spawnSync(
      process.execPath,
      [
        jailerBin,
        ...good,
        '--chroot-base-dir',
        base,
        '--parent-cgroup',
        'vireo-jailer-test',
        '--cgroup',
        'pids.nosuch=1',
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /Cgroup invalid file: pids.nosuch \(no such file in .*vireo-jailer-test\/bad-input\)/);
    assert.equal(existsSync(join(parentDir, 'bad-input')), false, 'the cgroup is removed');
    assert.equal(existsSync(parentDir), existed, 'and its parent, when this run made it');
    assert.deepEqual(readdirSync(base), [], 'the chroot folders are removed');
  });

  test('a chroot base on a nodev mount: refused before anything is made (the jail’s /dev/kvm would not open)', () => {
    const nodev = chrootBase();
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'nodev,size=1m', 'tmpfs', nodev]);
    cleanups.push(() => execFileSync('umount', [nodev]));
    const r = spawnSync(process.execPath, [jailerBin, ...good, '--chroot-base-dir', nodev], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /is on a nodev mount: the jail's \/dev\/kvm would not open/);
    assert.deepEqual(readdirSync(nodev), []);
  });

  test('a jail id already used under the base: refused, the old jail untouched', () => {
    const used = chrootBase();
    const root = join(used, 'firecracker.js', 'bad-input', 'root');
    execFileSync('mkdir', ['-p', root]);
    writeFileSync(join(root, 'keep'), 'x');
    const r = spawnSync(process.execPath, [jailerBin, ...good, '--chroot-base-dir', used], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /already exists \(a jail id is used once\)/);
    assert.deepEqual(readdirSync(root), ['keep']);
  });
});

describe('vireo-jailer: jailed vireo-firecracker', { skip: kvmSkipReason(), timeout: 120_000 }, () => {
  test('new PID namespace, uid/gid 123, no-file 256: the API answers at <chroot>/run/api.sock, a guest from inside the jail boots; the VMM has no capabilities and sees only the jail', async () => {
    const base = chrootBase();
    const id = `jail-pidns-${process.pid}`;
    const chroot = join(base, 'firecracker.js', id, 'root');
    const j = jail([
      '--id',
      id,
      '--exec-file',
      firecrackerBin,
      '--uid',
      String(UID),
      '--gid',
      String(GID),
      '--chroot-base-dir',
      base,
      '--new-pid-ns',
      '--resource-limit',
      'no-file=256',
      '--resource-limit',
      'fsize=1073741824',
      '--',
      '--api-sock',
      '/run/api.sock',
    ]);
    assert.equal(await j.exit, 0, `the jailer's parent half ends after the fork: ${j.stderr()}`);
    const pid = Number(readFileSync(join(chroot, 'firecracker.js.pid'), 'utf8'));
    assert.ok(pid > 1 && existsSync(`/proc/${pid}`), `the pid file names the VMM (${pid})`);
    const sock = join(chroot, 'run', 'api.sock');
    await waitForPath(sock);

    const info = await fcRequest(sock, 'GET', '/');
    assert.equal(info.status, 200, info.text);
    assert.deepEqual(info.json, { app_name: 'Firecracker', id, state: 'Not started', vmm_version: '1.17.0-dev' });

    // Who the VMM is, from the host.
    const st = status(pid);
    assert.equal(st.Uid, '123\t123\t123\t123');
    assert.equal(st.Gid, '123\t123\t123\t123');
    assert.equal(st.Groups, '');
    for (const c of ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb']) assert.equal(st[c], '0000000000000000', c);
    assert.equal(st.NoNewPrivs, '1');
    assert.equal(st.NSpid, `${pid}\t1`, 'PID 1 of a PID namespace of its own');
    assert.deepEqual(limit(pid, 'Max open files'), ['256', '256']);
    assert.deepEqual(limit(pid, 'Max file size'), ['1073741824', '1073741824']);

    // What it sees: the jail's root, made of exactly the planned read-only binds.
    const planned = jailContents(firecrackerBin, 'firecracker.js', []);
    const top = new Set([...planned.binds.map((b) => b.dst.split('/')[1]!), 'dev', 'run', 'firecracker.js.pid']);
    assert.deepEqual(readdirSync(`/proc/${pid}/root`).sort(), [...top].sort());
    for (const host of ['etc', 'proc', 'sys', 'tmp', 'home', 'root', 'work'])
      assert.equal(existsSync(`/proc/${pid}/root/${host}`), false, `no /${host} in the jail`);
    assert.deepEqual(readdirSync(`/proc/${pid}/root/dev`).sort(), ['kvm', 'net', 'urandom']);
    const kvm = statSync(`/proc/${pid}/root/dev/kvm`);
    assert.ok(kvm.isCharacterDevice());
    assert.equal(kvm.mode & 0o777, 0o600);
    assert.equal(kvm.uid, UID);
    assert.equal(kvm.rdev, (10 << 8) | 232);
    const m = mounts(pid);
    assert.equal(m[0]?.point, '/');
    assert.deepEqual(
      m
        .slice(1)
        .map((x) => x.point)
        .sort(),
      planned.binds.map((b) => b.dst).sort(),
      'the only mounts are the planned binds',
    );
    assert.ok(
      m.slice(1).every((x) => x.ro),
      'every bind is read-only',
    );
    assert.ok(
      planned.binds.some((b) => b.dst === '/vireo/node_modules/@koromix/koffi-linux-x64'),
      "koffi's native module is bound",
    );

    // Paths the VMM opens are inside the jail: the host's path of the kernel is not there.
    assert.equal((await fcRequest(sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
    const outside = await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: guest() });
    assert.equal(outside.status, 400, 'a host path is not visible to the jailed VMM');
    assert.match(outside.text, /cannot be opened/);
    const inside = await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: kernelInJail(chroot) });
    assert.equal(inside.status, 204, inside.text);
    assert.equal((await fcRequest(sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    await j.closed;
    assert.equal(j.stdout(), 'Hello from a vireo guest\n', j.stderr());
    // The VMM ended (its reaper, the host's init once the jailer is gone, collects it in its own time).
    const ended = (): boolean => {
      try {
        return /^Z/.test(status(pid).State ?? '');
      } catch {
        return true; // reaped
      }
    };
    for (let i = 0; i < 100 && !ended(); i++) await sleep(50);
    assert.ok(ended(), 'the VMM has exited');
    rmSync(join(base, 'firecracker.js'), { recursive: true });
  });

  test('same PID (the VMM is the orchestrator’s child, its exit status the guest’s), a network namespace and a cgroup', async () => {
    const base = chrootBase();
    const id = `jail-netns-${process.pid}`;
    const chroot = join(base, 'firecracker.js', id, 'root');
    const ns = `vireo-jt-${process.pid}`;
    execFileSync('ip', ['netns', 'add', ns]);
    cleanups.push(() => execFileSync('ip', ['netns', 'delete', ns]));
    const plan = planCgroups(
      [{ file: 'pids.max', controller: 'pids', value: '64' }],
      undefined,
      'vireo-jailer-test',
      id,
    );
    assert.ok(plan);
    const cgDir = plan.groups[0]!.dir;
    const parentDir = join(plan.groups[0]!.base, 'vireo-jailer-test');
    const parentExisted = existsSync(parentDir);
    cleanups.push(() => {
      rmdirSync(cgDir);
      if (!parentExisted) rmdirSync(parentDir);
    });
    const j = jail([
      '--id',
      id,
      '--exec-file',
      firecrackerBin,
      '--uid',
      String(UID),
      '--gid',
      String(GID),
      '--chroot-base-dir',
      base,
      '--netns',
      `/var/run/netns/${ns}`,
      '--parent-cgroup',
      'vireo-jailer-test',
      '--cgroup',
      'pids.max=64',
      '--',
      '--api-sock',
      '/run/api.sock',
    ]);
    const sock = join(chroot, 'run', 'api.sock');
    await Promise.race([
      waitForPath(sock),
      j.exit.then((c) => {
        throw new Error(`the jailer ended (${c}): ${j.stderr()}`);
      }),
    ]);
    const pid = j.child.pid!;
    assert.equal(status(pid).Uid, '123\t123\t123\t123', 'the spawned process itself became the VMM');
    assert.equal(statSync(`/proc/${pid}/ns/net`).ino, statSync(`/var/run/netns/${ns}`).ino, 'in the network namespace');
    assert.notEqual(statSync(`/proc/${pid}/ns/net`).ino, statSync('/proc/self/ns/net').ino);
    assert.equal(readFileSync(join(cgDir, 'pids.max'), 'utf8').trim(), '64');
    assert.ok(readFileSync(join(cgDir, 'cgroup.procs'), 'utf8').split('\n').includes(String(pid)), 'in the cgroup');
    assert.deepEqual(limit(pid, 'Max open files'), ['2048', '2048'], "Firecracker's default no-file bound");
    assert.equal((await fcRequest(sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
    const boot = await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: kernelInJail(chroot) });
    assert.equal(boot.status, 204, boot.text);
    assert.equal((await fcRequest(sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.equal(await j.exit, 0x21, j.stderr());
    assert.equal(j.stdout(), 'Hello from a vireo guest\n');
    rmSync(join(base, 'firecracker.js'), { recursive: true });
  });
});

describe('vireo-jailer: what a jailed process sees from inside (a static probe as the exec file)', () => {
  const probe = join(tmp, 'probe-firecracker');
  execFileSync('gcc', ['-static', '-O2', '-Wall', '-o', probe, join(repoRoot, 'test', 'fixtures', 'jail-probe.c')]);

  interface Report {
    argv: string[];
    env: number;
    uid: number;
    euid: number;
    gid: number;
    egid: number;
    groups: number;
    capEff: string;
    capPrm: string;
    capInh: string;
    bset: number;
    nnp: number;
    pid: number;
    sid: number;
    root: string[];
    fds: number[];
    stdio: string[];
    etc: number;
    proc: number;
    sys: number;
    kvm: number;
    tun: number;
    urandom: number;
    nofile: [number, number];
    fsize: [number, number];
  }

  const common = (base: string, id: string): string[] => [
    '--id',
    id,
    '--exec-file',
    probe,
    '--uid',
    String(UID),
    '--gid',
    String(GID),
    '--chroot-base-dir',
    base,
  ];

  function assertJailed(r: Report, id: string): void {
    assert.deepEqual(r.argv.slice(0, 2), ['--id', id]);
    assert.deepEqual(
      [r.argv[2], r.argv[4], r.argv[6]],
      ['--start-time-us', '--start-time-cpu-us', '--parent-cpu-time-us'],
    );
    assert.equal(r.env, 0, 'an empty environment');
    assert.deepEqual([r.uid, r.euid, r.gid, r.egid, r.groups], [UID, UID, GID, GID, 0]);
    assert.deepEqual(
      [r.capEff, r.capPrm, r.capInh, r.bset, r.nnp],
      ['0000000000000000', '0000000000000000', '0000000000000000', 0, 1],
    );
    assert.deepEqual([r.etc, r.proc, r.sys], [0, 0, 0], 'no /etc, /proc or /sys');
    assert.deepEqual([r.kvm, r.tun, r.urandom], [0, 0, 16], 'the device nodes open as uid 123');
  }

  test('--new-pid-ns: PID 1, no capabilities, only the jail, descriptors beyond stdio closed', async () => {
    const base = chrootBase();
    const id = 'probe-pidns';
    const j = jail([...common(base, id), '--new-pid-ns', '--resource-limit', 'fsize=4096', '--', 'extra'], true);
    assert.equal(await j.exit, 0, j.stderr());
    await j.closed;
    const r = JSON.parse(j.stdout()) as Report;
    assertJailed(r, id);
    assert.equal(r.argv.at(-1), 'extra', 'the arguments after -- come last');
    assert.equal(r.pid, 1);
    assert.deepEqual(r.fds, [0, 1, 2], 'the descriptor the orchestrator left open (3) is closed');
    assert.deepEqual(
      r.root.filter((n) => n !== 'probe-firecracker.pid').sort(),
      ['dev', 'probe-firecracker', 'run'],
      'a static exec file needs nothing but itself',
    );
    assert.deepEqual(r.nofile, [2048, 2048]);
    assert.deepEqual(r.fsize, [4096, 4096]);
    const chroot = join(base, 'probe-firecracker', id, 'root');
    assert.ok(
      readFileSync(join(chroot, 'probe-firecracker')).equals(readFileSync(probe)),
      'the exec file is copied in',
    );
    assert.ok(/^\d+$/.test(readFileSync(join(chroot, 'probe-firecracker.pid'), 'utf8')));
    rmSync(join(base, 'probe-firecracker'), { recursive: true });
  });

  test('cgroup v2: the cgroup under the unified hierarchy, the controller enabled down the path, the process inside', async () => {
    const unified = readFileSync('/proc/mounts', 'utf8')
      .split('\n')
      .map((l) => l.split(' '))
      .find((f) => f[2] === 'cgroup2')?.[1];
    assert.ok(unified, 'this host has a cgroup2 file system');
    const offered = readFileSync(join(unified, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
    // Whatever v2 offers here: pids on a unified host, only hugetlb on these hybrid machines.
    const [file, value] = offered.includes('pids') ? ['pids.max', '64'] : ['hugetlb.2MB.max', '0'];
    assert.ok(
      offered.includes(file.split('.')[0]!),
      `cgroup2 offers pids or hugetlb (it offers: ${offered.join(' ')})`,
    );
    const controller = file.split('.')[0]!;
    const id = 'probe-cgroup-v2';
    const parentDir = join(unified, 'vireo-jailer-test');
    const parentExisted = existsSync(parentDir);
    const rootHad = readFileSync(join(unified, 'cgroup.subtree_control'), 'utf8').split(/\s+/).includes(controller);
    cleanups.push(() => {
      rmdirSync(join(parentDir, id));
      if (!parentExisted) rmdirSync(parentDir);
      if (!rootHad) writeFileSync(join(unified, 'cgroup.subtree_control'), `-${controller}`);
    });
    const base = chrootBase();
    const chroot = join(base, 'probe-firecracker', id, 'root');
    const args = [...common(base, id), '--cgroup-version', '2', '--parent-cgroup', 'vireo-jailer-test'];
    const j = jail([...args, '--cgroup', `${file}=${value}`, '--', 'hold=/go']);
    const procs = join(parentDir, id, 'cgroup.procs');
    for (let i = 0; i < 200 && !(existsSync(procs) && readFileSync(procs, 'utf8').trim()); i++) await sleep(20);
    assert.deepEqual(
      readFileSync(procs, 'utf8').trim().split('\n'),
      [String(j.child.pid)],
      'the jailed process is in the cgroup',
    );
    assert.equal(readFileSync(join(parentDir, id, file), 'utf8').trim(), value);
    for (const dir of [unified, parentDir])
      assert.ok(readFileSync(join(dir, 'cgroup.subtree_control'), 'utf8').split(/\s+/).includes(controller), dir);
    writeFileSync(join(chroot, 'go'), '');
    assert.equal(await j.exit, 0, j.stderr());
    assertJailed(JSON.parse(j.stdout()) as Report, id);
    rmSync(join(base, 'probe-firecracker'), { recursive: true });
  });

  test('--daemonize: a session of its own, stdio on /dev/null', async () => {
    const base = chrootBase();
    const id = 'probe-daemon';
    const j = jail([...common(base, id), '--daemonize', '--', 'report=/report.json']);
    assert.equal(await j.exit, 0, j.stderr());
    assert.equal(j.stdout(), '');
    const chroot = join(base, 'probe-firecracker', id, 'root');
    const r = JSON.parse(readFileSync(join(chroot, 'report.json'), 'utf8')) as Report;
    assertJailed(r, id);
    assert.equal(r.sid, r.pid, 'a session leader');
    assert.deepEqual(r.stdio, ['chr 1:3', 'chr 1:3', 'chr 1:3']);
    rmSync(join(base, 'probe-firecracker'), { recursive: true });
  });
});
