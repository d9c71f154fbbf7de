/**
 * seccomp: the assembler (src/os/seccomp-bpf.ts) on every thread kind's list (src/kvm/seccomp-policy.ts),
 * run through the interpreter: the architecture check first, every jump inside the program, every listed
 * call allowed (with its argument rules), everything else trapped. Then the real thing in a child
 * process: a worker confined as a vCPU thread keeps working (Atomics, postMessage) and shows `Seccomp: 2`
 * and `NoNewPrivs: 1`, and an off-list call (socket(AF_INET), execve) ends the process with status 159
 * and the line that names the thread kind and the call; an fs thread's argument rules (openat without
 * O_NOFOLLOW below a directory fd, O_CREAT through AT_FDCWD, mknodat of a FIFO) end it the same way.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { POLICY, policyEntries, type ThreadKind } from '../src/kvm/seccomp-policy.js';
import {
  AUDIT_ARCH_X86_64,
  assembleFilter,
  encodeFilter,
  runFilter,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_KILL_PROCESS,
  SECCOMP_RET_TRAP,
  X32_SYSCALL_BIT,
} from '../src/os/seccomp-bpf.js';
import { SYSCALLS } from '../src/os/seccomp-syscalls.js';
import { repoRoot } from './support/cc.js';

const KINDS = Object.keys(POLICY) as ThreadKind[];
const dir = mkdtempSync(join(tmpdir(), 'vireo-seccomp-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('each kind assembles: arch check first, jumps in range, listed calls allowed, the rest trapped', () => {
  for (const kind of KINDS) {
    const entries = policyEntries(kind);
    const prog = assembleFilter(entries, SECCOMP_RET_TRAP);
    assert.ok(prog.length < 4096, `${kind}: ${prog.length} instructions`);
    assert.deepEqual(prog[0], { code: 0x20, jt: 0, jf: 0, k: 4 }, `${kind}: loads arch first`);
    assert.equal(prog[1]?.k, AUDIT_ARCH_X86_64);
    prog.forEach((p, i) => {
      if (p.code === 0x06) return;
      const targets =
        p.code === 0x05 ? [p.k] : p.code === 0x15 || p.code === 0x25 || p.code === 0x35 ? [p.jt, p.jf] : [0];
      for (const t of targets) assert.ok(i + 1 + t < prog.length, `${kind}: jump at ${i} lands outside the program`);
    });
    assert.equal(encodeFilter(prog).length, prog.length * 8);
    const listed = new Set(entries.map((e) => e.nr));
    for (const e of entries) {
      if (!e.rules) {
        assert.equal(runFilter(prog, { nr: e.nr }), SECCOMP_RET_ALLOW, `${kind}: ${e.name}`);
        continue;
      }
      for (const rule of e.rules) {
        const args = [0n, 0n, 0n, 0n, 0n, 0n];
        // The rule's values, with unrelated high bits set where the check is only 32 bits wide.
        for (const c of rule) args[c.arg] = c.value | (c.width === 32 ? 0xdead_0000_0000n : 0n);
        assert.equal(
          runFilter(prog, { nr: e.nr, args }),
          SECCOMP_RET_ALLOW,
          `${kind}: ${e.name} ${rule.map((c) => c.value)}`,
        );
      }
    }
    for (const [name, nr] of Object.entries(SYSCALLS)) {
      if (listed.has(nr)) continue;
      assert.equal(runFilter(prog, { nr, args: [1n, 2n, 3n] }), SECCOMP_RET_TRAP, `${kind}: ${name} must trap`);
    }
    assert.equal(runFilter(prog, { nr: SYSCALLS.read, arch: 0x40000003 }), SECCOMP_RET_KILL_PROCESS, 'i386 ABI');
    assert.equal(runFilter(prog, { nr: X32_SYSCALL_BIT | SYSCALLS.read }), SECCOMP_RET_TRAP, 'x32 ABI');
    // Argument rules: mmap never executable; no ioctl off the list; sockets only AF_UNIX.
    assert.equal(runFilter(prog, { nr: SYSCALLS.mmap, args: [0n, 4096n, 3n] }), SECCOMP_RET_ALLOW);
    assert.equal(runFilter(prog, { nr: SYSCALLS.mmap, args: [0n, 4096n, 5n] }), SECCOMP_RET_TRAP, `${kind}: PROT_EXEC`);
    if (listed.has(SYSCALLS.socket)) {
      assert.equal(runFilter(prog, { nr: SYSCALLS.socket, args: [1n, 1n, 0n] }), SECCOMP_RET_ALLOW);
      assert.equal(runFilter(prog, { nr: SYSCALLS.socket, args: [2n, 1n, 0n] }), SECCOMP_RET_TRAP, `${kind}: AF_INET`);
    }
  }
  const vcpu = assembleFilter(policyEntries('vcpu'), SECCOMP_RET_TRAP);
  const KVM_RUN = 0xae80n;
  const KVM_SET_USER_MEMORY_REGION = 0x4020ae46n;
  assert.equal(runFilter(vcpu, { nr: SYSCALLS.ioctl, args: [9n, KVM_RUN] }), SECCOMP_RET_ALLOW);
  assert.equal(runFilter(vcpu, { nr: SYSCALLS.ioctl, args: [9n, KVM_SET_USER_MEMORY_REGION] }), SECCOMP_RET_TRAP);
  assert.equal(runFilter(vcpu, { nr: SYSCALLS.ioctl, args: [9n, 0x5401n] }), SECCOMP_RET_TRAP, 'TCGETS');
});

test('the assembler refuses duplicates and keeps conditional jumps short on a long list', () => {
  assert.throws(
    () =>
      assembleFilter(
        [
          { nr: 1, name: 'write' },
          { nr: 1, name: 'write' },
        ],
        SECCOMP_RET_TRAP,
      ),
    /twice/,
  );
  // Every call, each with a long rule list: the search tree's long jumps carry the distance.
  const all = Object.entries(SYSCALLS).map(([name, nr]) => ({
    nr,
    name,
    rules:
      nr % 7 === 0
        ? Array.from({ length: 6 }, (_, v) => [{ arg: 1 as const, width: 64 as const, value: BigInt(v) }])
        : undefined,
  }));
  const prog = assembleFilter(all, SECCOMP_RET_TRAP);
  for (const e of all) {
    const want = e.rules ? SECCOMP_RET_TRAP : SECCOMP_RET_ALLOW;
    assert.equal(runFilter(prog, { nr: e.nr, args: [0n, 1n << 40n] }), want, e.name);
    if (e.rules) assert.equal(runFilter(prog, { nr: e.nr, args: [0n, 5n] }), SECCOMP_RET_ALLOW, e.name);
  }
});

/** A child process whose worker confines itself as `kind`, reports, then runs `bad` (JS using koffi). */
function confinedChild(kind: ThreadKind, bad: string): ReturnType<typeof spawnSync> {
  const policyUrl = new URL('../src/kvm/seccomp-policy.js', import.meta.url).href;
  const script = `
    import { readdirSync, readFileSync } from 'node:fs';
    import { Worker } from 'node:worker_threads';
    const src = \`
      const { parentPort } = require('node:worker_threads');
      import(${JSON.stringify(policyUrl)}).then(async ({ confine }) => {
        const koffi = (await import('koffi')).default;
        const libc = koffi.load('libc.so.6');
        const result = confine(${JSON.stringify(kind)}, true);
        // Still a working thread: waits, timers through Atomics, messages.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
        parentPort.postMessage({ result });
        parentPort.once('message', () => { ${bad} });
      });\`;
    const w = new Worker(src, { eval: true });
    w.once('message', (m) => {
      const status = readdirSync('/proc/self/task').map((t) => readFileSync('/proc/self/task/' + t + '/status', 'utf8'));
      const confined = status.filter((s) => /^Seccomp:\\s+2$/m.test(s) && /^NoNewPrivs:\\s+1$/m.test(s)).length;
      const mainStatus = readFileSync('/proc/thread-self/status', 'utf8');
      console.log(JSON.stringify({ ...m, confined, mainSeccomp: /^Seccomp:\\s+(\\d)/m.exec(mainStatus)[1] }));
      w.postMessage('go');
    });`;
  const file = join(dir, `child-${kind}-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, script);
  return spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 30_000, cwd: repoRoot });
}

test('a confined vCPU worker keeps working; socket(AF_INET) ends the process with the line that names it', () => {
  const r = confinedChild(
    'vcpu',
    "libc.func('int socket(int, int, int)')(2, 1, 0); parentPort.postMessage('survived');",
  );
  const report = JSON.parse(String(r.stdout).split('\n')[0] ?? '{}') as {
    result?: string;
    confined?: number;
    mainSeccomp?: string;
  };
  assert.equal(report.result, 'installed', String(r.stderr));
  assert.equal(report.confined, 1, 'exactly the worker shows Seccomp: 2 and NoNewPrivs: 1');
  assert.equal(report.mainSeccomp, '0', 'the main thread is not filtered (no TSYNC)');
  assert.equal(r.status, 159, `status ${r.status} signal ${r.signal}: ${r.stderr}`);
  assert.match(String(r.stderr), /^vireo: seccomp: thread vcpu made syscall socket \(41\) which is not allowed$/m);
});

test('an I/O thread may open a Unix socket but not exec: execve ends the process', () => {
  const r = confinedChild(
    'io',
    "const s = libc.func('int socket(int, int, int)')(1, 1, 0); if (s < 0) process.exit(3); libc.func('int execve(const char *, void *, void *)')('/bin/true', null, null);",
  );
  assert.equal(r.status, 159, `status ${r.status} signal ${r.signal}: ${r.stderr}`);
  assert.match(String(r.stderr), /^vireo: seccomp: thread io made syscall execve \(59\) which is not allowed$/m);
});

test('a disk thread may not map memory executable', () => {
  const r = confinedChild(
    'disk',
    "libc.func('void *mmap(void *, size_t, int, int, int, long)')(null, 4096, 7, 0x22, -1, 0);",
  );
  assert.equal(r.status, 159, `status ${r.status} signal ${r.signal}: ${r.stderr}`);
  assert.match(String(r.stderr), /^vireo: seccomp: thread disk made syscall mmap \(9\) which is not allowed$/m);
});

// In a worker, process.exit ends only the worker: a setup call that fails throws instead (the worker's
// uncaught error ends the child with status 1).
const OPENAT = "const openat = libc.func('int openat(int, const char *, int, int)');";
const AT_FDCWD = -100;
const O_CREAT_WRONLY = 0o101;
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;
const O_PATH = 0o10000000;

test('a share server (fs) opens below a directory fd only with O_NOFOLLOW: without it, the process ends', () => {
  const r = confinedChild(
    'fs',
    `${OPENAT} const d = openat(${AT_FDCWD}, ${JSON.stringify(dir)}, ${O_DIRECTORY}, 0); if (d < 0) throw new Error('allowed call failed 3');
     if (openat(d, '.', ${O_PATH | O_NOFOLLOW}, 0) < 0) throw new Error('allowed call failed 4');
     openat(d, '.', ${O_DIRECTORY}, 0); parentPort.postMessage('survived');`,
  );
  const report = JSON.parse(String(r.stdout).split('\n')[0] ?? '{}') as { result?: string; confined?: number };
  assert.equal(report.result, 'installed', String(r.stderr));
  assert.equal(report.confined, 1);
  assert.equal(r.status, 159, `status ${r.status} signal ${r.signal}: ${r.stderr}`);
  assert.match(String(r.stderr), /^vireo: seccomp: thread fs made syscall openat \(257\) which is not allowed$/m);
});

test('an fs thread re-opens through AT_FDCWD (its /proc/self/fd links) but creates nothing there', () => {
  const target = join(dir, 'created-by-fs-thread');
  const r = confinedChild(
    'fs',
    `${OPENAT} const d = openat(${AT_FDCWD}, ${JSON.stringify(dir)}, ${O_DIRECTORY}, 0); if (d < 0) throw new Error('allowed call failed 3');
     if (openat(${AT_FDCWD}, '/proc/self/fd/' + d, ${O_DIRECTORY}, 0) < 0) throw new Error('allowed call failed 4');
     openat(${AT_FDCWD}, ${JSON.stringify(target)}, ${O_CREAT_WRONLY}, 0o600); parentPort.postMessage('survived');`,
  );
  assert.equal(r.status, 159, `status ${r.status} signal ${r.signal}: ${r.stderr}`);
  assert.match(String(r.stderr), /^vireo: seccomp: thread fs made syscall openat \(257\) which is not allowed$/m);
  assert.equal(existsSync(target), false, 'the refused call made no file');
});

test('an fs thread makes regular files with mknodat, never a FIFO or a device; and no socket of any family', () => {
  const mk = `const mknodat = libc.func('int mknodat(int, const char *, uint32_t, uint64_t)');
    const d = libc.func('int open(const char *, int)')(${JSON.stringify(dir)}, ${O_DIRECTORY});
    if (mknodat(d, 'fs-reg', 0o100600, 0) !== 0) throw new Error('allowed call failed 3');`;
  const fifo = confinedChild('fs', `${mk} mknodat(d, 'fs-fifo', 0o010600, 0); parentPort.postMessage('survived');`);
  assert.equal(fifo.status, 159, `status ${fifo.status} signal ${fifo.signal}: ${fifo.stderr}`);
  assert.match(String(fifo.stderr), /^vireo: seccomp: thread fs made syscall mknodat \(259\) which is not allowed$/m);
  assert.equal(existsSync(join(dir, 'fs-reg')), true);
  assert.equal(existsSync(join(dir, 'fs-fifo')), false);
  const sock = confinedChild(
    'fs',
    "libc.func('int socket(int, int, int)')(1, 1, 0); parentPort.postMessage('survived');",
  );
  assert.equal(sock.status, 159, `status ${sock.status} signal ${sock.signal}: ${sock.stderr}`);
  assert.match(String(sock.stderr), /^vireo: seccomp: thread fs made syscall socket \(41\) which is not allowed$/m);
});

/**
 * A child process with a worker started first (so it exists before the filter, as Node's own threads do),
 * then the process-wide filter installed on the main thread, then `bad` run on the main thread or in the
 * worker ('main' | 'worker'); it reports what every thread shows.
 */
function processChild(where: 'main' | 'worker', bad: string): ReturnType<typeof spawnSync> {
  const policyUrl = new URL('../src/kvm/seccomp-policy.js', import.meta.url).href;
  const koffiUrl = import.meta.resolve('koffi');
  const script = `
    import { readdirSync, readFileSync } from 'node:fs';
    import { Worker } from 'node:worker_threads';
    import koffi from ${JSON.stringify(koffiUrl)};
    const libc = koffi.load('libc.so.6');
    const w = new Worker(\`
      const { parentPort } = require('node:worker_threads');
      import(${JSON.stringify(koffiUrl)}).then(({ default: koffi }) => {
        const libc = koffi.load('libc.so.6');
        parentPort.postMessage('up');
        parentPort.once('message', () => { ${where === 'worker' ? bad : ''} });
      });\`, { eval: true });
    await new Promise((r) => w.once('message', r));
    const { confineVmmProcess, confine } = await import(${JSON.stringify(policyUrl)});
    const result = confineVmmProcess(true);
    // A thread's own allow-list still stacks on it.
    const inner = await new Promise((resolve) => {
      const v = new Worker(\`
        const { parentPort } = require('node:worker_threads');
        import(${JSON.stringify(policyUrl)}).then(({ confine }) => parentPort.postMessage(confine('vcpu', true)));\`, { eval: true });
      v.once('message', (m) => { resolve(m); v.terminate(); });
    });
    const status = readdirSync('/proc/self/task').map((t) => { try { return readFileSync('/proc/self/task/' + t + '/status', 'utf8'); } catch { return ''; } }).filter((s) => s !== '');
    const filtered = status.filter((s) => /^Seccomp:\\s+2$/m.test(s) && /^NoNewPrivs:\\s+1$/m.test(s)).length;
    const uring = libc.func('long syscall(long, ...)')(425, 'unsigned int', 8, 'void *', Buffer.alloc(120));
    const errno = koffi.errno();
    const unix = libc.func('int socket(int, int, int)')(1, 1, 0);
    console.log(JSON.stringify({ result, inner, threads: status.length, filtered, uring, errno, unix }));
    ${where === 'main' ? bad : "w.postMessage('go');"}
    setTimeout(() => process.exit(0), 2000);`;
  const file = join(dir, `process-${where}-${Math.random().toString(36).slice(2)}.mjs`);
  writeFileSync(file, script);
  return spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 30_000, cwd: repoRoot });
}

test('the process-wide filter reaches every thread, older ones too; ptrace and AF_PACKET end the process; io_uring is ENOSYS', () => {
  const r = processChild('worker', "libc.func('long ptrace(long, long, void *, void *)')(0, 0, null, null);");
  const line = String(r.stdout).split('\n')[0] ?? '';
  assert.ok(line.startsWith('{'), `a report: status ${r.status}: ${r.stdout}\n${r.stderr}`);
  const report = JSON.parse(line) as Record<string, number | string>;
  assert.equal(report.result, 'installed', String(r.stderr));
  assert.equal(report.inner, 'installed', "a worker's own list installs on top of it");
  assert.equal(
    report.filtered,
    report.threads,
    `every thread shows Seccomp: 2 and NoNewPrivs: 1: ${JSON.stringify(report)}`,
  );
  assert.equal(report.uring, -1);
  assert.equal(report.errno, 38, 'io_uring_setup answers ENOSYS (libuv falls back)');
  assert.ok(Number(report.unix) >= 0, 'a Unix socket is still allowed');
  assert.equal(r.status, 159, `status ${r.status} signal ${r.signal}: ${r.stderr}`);
  assert.match(String(r.stderr), /^vireo: seccomp: thread node made syscall ptrace \(101\) which is not allowed$/m);
  const m = processChild('main', "libc.func('int socket(int, int, int)')(17, 3, 0);");
  assert.equal(m.status, 159, `status ${m.status} signal ${m.signal}: ${m.stderr}`);
  assert.match(String(m.stderr), /^vireo: seccomp: thread main made syscall socket \(41\) which is not allowed$/m);
  const k = processChild(
    'main',
    "libc.func('long syscall(long, ...)')(321, 'int', 0, 'void *', null, 'unsigned int', 0);",
  );
  assert.equal(k.status, 159, `bpf: status ${k.status}: ${k.stderr}`);
  assert.match(String(k.stderr), /made syscall bpf \(321\)/);
});

test('every call the traced test runs made (scripts/seccomp-observed.json) is on its kind list', () => {
  // Made by scripts/seccomp-gen.mjs trace (see its header and kvm/seccomp-policy.ts); the same check as
  // `node scripts/seccomp-gen.mjs check scripts/seccomp-observed.json`.
  const observed = JSON.parse(readFileSync(join(repoRoot, 'scripts/seccomp-observed.json'), 'utf8')) as Record<
    string,
    {
      syscalls: string[];
      ioctl: number[];
      mmapProt: number[];
      socket: number[];
      openatCwd?: number[];
      openatFd?: number[];
      fcntl?: number[];
      mknodatMode?: number[];
    }
  >;
  assert.deepEqual(Object.keys(observed).sort(), [...KINDS].sort(), 'every kind was traced');
  assert.ok((observed['fs']?.openatFd?.length ?? 0) > 0, 'the fs trace recorded its openat flags');
  for (const kind of KINDS) {
    const o = observed[kind];
    assert.ok(o);
    const prog = assembleFilter(policyEntries(kind), SECCOMP_RET_TRAP);
    for (const name of o.syscalls) {
      const nr = SYSCALLS[name as keyof typeof SYSCALLS];
      assert.ok(nr !== undefined, name);
      assert.ok(
        POLICY[kind].some((e) => e.name === name),
        `${kind}: ${name} was observed but is not allowed`,
      );
    }
    for (const req of o.ioctl)
      assert.equal(
        runFilter(prog, { nr: SYSCALLS.ioctl, args: [3n, BigInt(req)] }),
        SECCOMP_RET_ALLOW,
        `${kind}: ioctl 0x${req.toString(16)}`,
      );
    for (const prot of o.mmapProt)
      assert.equal(
        runFilter(prog, { nr: SYSCALLS.mmap, args: [0n, 4096n, BigInt(prot)] }),
        SECCOMP_RET_ALLOW,
        `${kind}: mmap prot ${prot}`,
      );
    for (const af of o.socket)
      assert.equal(
        runFilter(prog, { nr: SYSCALLS.socket, args: [BigInt(af), 1n, 0n] }),
        SECCOMP_RET_ALLOW,
        `${kind}: socket ${af}`,
      );
    // The argument rules (fs's openat and mknodat, io's fcntl) allow every shape the threads made.
    const argsOf: [keyof typeof SYSCALLS, number[] | undefined, (n: number) => bigint[]][] = [
      ['openat', o.openatCwd, (f) => [BigInt(AT_FDCWD >>> 0), 0n, BigInt(f)]],
      ['openat', o.openatFd, (f) => [3n, 0n, BigInt(f)]],
      ['fcntl', o.fcntl, (c) => [3n, BigInt(c)]],
      ['mknodat', o.mknodatMode, (m) => [3n, 0n, BigInt(m), 0n]],
    ];
    for (const [name, seen, args] of argsOf)
      for (const n of seen ?? [])
        assert.equal(
          runFilter(prog, { nr: SYSCALLS[name], args: args(n) }),
          SECCOMP_RET_ALLOW,
          `${kind}: ${name} ${n}`,
        );
  }
});
