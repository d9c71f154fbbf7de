/** The vireo CLI end to end on this machine's /dev/kvm: every test guest, exit statuses, errors. */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { guestPath } from './guests/build.js';
import { kvmSkipReason, runVireo } from './support/vireo.js';

const skip = kvmSkipReason();
const tmp = mkdtempSync(join(tmpdir(), 'vireo-cli-'));

describe('vireo run', { skip }, () => {
  test('64-bit guest: serial output on stdout, status from isa-debug-exit', () => {
    const r = runVireo(['run', '--kernel', guestPath('hello64')]);
    assert.equal(r.stdout, 'Hello from a vireo guest\n');
    assert.equal(r.status, 0x21);
  });

  test('Multiboot guest sees its command line, module (--initrd), memory sizes and memory map', () => {
    const mod = join(tmp, 'module.txt');
    writeFileSync(mod, 'the module payload');
    const r = runVireo([
      'run',
      '--kernel',
      guestPath('multiboot'),
      '--initrd',
      mod,
      '--cmdline',
      'hello=world x y',
      '--mem',
      '64',
    ]);
    assert.equal(r.status, 0x55, r.stderr);
    const lines = r.stdout.split('\n');
    assert.ok(lines.includes('multiboot ok'));
    assert.ok(lines.includes('loader: vireo'));
    assert.ok(lines.includes('cmdline: hello=world x y'));
    assert.ok(lines.includes('mem_lower=639 mem_upper=64512'), r.stdout);
    assert.ok(lines.includes(`mmap entries=4 ram_kib=${639 + 64 * 1024 - 1024}`), r.stdout);
    assert.ok(lines.includes('modules=1'));
    assert.ok(lines.includes(`module 0 aligned=1 bytes=18 string=${mod} data: the module payload`), r.stdout);
  });

  test('RAM above the 32-bit MMIO hole: 4 GiB guest sees 3.25 GiB low and 768 MiB above 4 GiB', () => {
    const r = runVireo(['run', '--kernel', guestPath('multiboot'), '--mem', '4096']);
    assert.equal(r.status, 0x55, r.stderr);
    // e820: 639 KiB conventional, 1 MiB..3.25 GiB, 4 GiB..4.75 GiB
    assert.ok(r.stdout.includes('mem_lower=639 mem_upper=3406848\n'), r.stdout);
    assert.ok(r.stdout.includes(`mmap entries=5 ram_kib=${639 + 3406848 + 786432}\n`), r.stdout);
  });

  test('PVH entry: an ELF with only the Xen PHYS32_ENTRY note gets hvm_start_info in EBX', () => {
    const initrd = join(tmp, 'pvh-initrd');
    writeFileSync(initrd, 'x');
    const r = runVireo(['run', '--kernel', guestPath('pvh'), '--cmdline', 'hello pvh', '--initrd', initrd]);
    assert.equal(r.stdout, 'pvh ok cmdline=hello pvh modules=1 memmap=4\n', r.stderr);
    assert.equal(r.status, 0x59);
  });

  test('Multiboot a.out-kludge flat binary', () => {
    const r = runVireo(['run', '--kernel', guestPath('aout-kludge')]);
    assert.equal(r.stdout, 'aout kludge ok\n');
    assert.equal(r.status, 0x57);
  });

  test('guest drops to CPL 3 and computes natively', () => {
    const n = 200_000_000n;
    const sum = ((n * (n + 1n)) / 2n).toString(16).padStart(16, '0');
    const r = runVireo(['run', '--kernel', guestPath('user64')]);
    assert.equal(r.stdout, `cpl=3 sum=${sum}\n`);
    assert.equal(r.status, 1);
  });

  test('exit storm: 40000 PIO and 40000 MMIO exits to unclaimed addresses are harmless', () => {
    const r = runVireo(['run', '--kernel', guestPath('storm64')]);
    assert.equal(r.stdout, 'storm ok\n', r.stderr);
    assert.equal(r.status, 0x23);
  });

  test('triple fault ends the VM with a register dump and a non-zero status', () => {
    const r = runVireo(['run', '--kernel', guestPath('modes64'), '--cmdline', 't']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /vCPU 0: triple fault \(KVM_EXIT_SHUTDOWN\)/);
    assert.match(r.stderr, /rip\s+0x[0-9a-f]{16}/);
    assert.match(r.stderr, /cr3\s+0x9000/);
  });

  test('HLT without the in-kernel irqchip ends the VM with a report', () => {
    const r = runVireo(['run', '--kernel', guestPath('modes64'), '--cmdline', 'h', '--no-irqchip']);
    assert.equal(r.status, 0);
    assert.match(r.stderr, /vCPU 0 halted \(HLT exit\)/);
    assert.match(r.stderr, /rflags\s+0x/);
  });

  test('serial to a file, and to nowhere', () => {
    const out = join(tmp, 'serial.log');
    const r = runVireo(['run', '--kernel', guestPath('hello64'), '--serial', `file:${out}`]);
    assert.equal(r.status, 0x21);
    assert.equal(r.stdout, '');
    assert.equal(readFileSync(out, 'utf8'), 'Hello from a vireo guest\n');
    const n = runVireo(['run', '--kernel', guestPath('hello64'), '--serial', 'none']);
    assert.equal(n.status, 0x21);
    assert.equal(n.stdout, '');
  });

  test('serial input from a pipe reaches the guest', () => {
    const r = runVireo(['run', '--kernel', guestPath('modes64'), '--cmdline', 'e'], { input: 'hello vireo\nq' });
    assert.equal(r.stdout, 'echo ready\nHELLO VIREO\n');
    assert.equal(r.status, 0x25);
  });

  test('two vCPUs: the boot vCPU runs, the other waits for SIPI, the VM still ends cleanly', () => {
    const r = runVireo(['run', '--kernel', guestPath('hello64'), '--cpus', '2']);
    assert.equal(r.stdout, 'Hello from a vireo guest\n');
    assert.equal(r.status, 0x21);
  });
});

describe('vireo run: bad input gets one clear line and a non-zero status', () => {
  const cases: [string, string[], RegExp][] = [
    [
      'missing kernel file',
      ['run', '--kernel', '/nonexistent/kernel'],
      /^vireo: kernel \/nonexistent\/kernel does not exist\n$/,
    ],
    [
      'not a kernel',
      ['run', '--kernel', '/etc/hostname'],
      /^vireo: \/etc\/hostname is not a kernel vireo can boot: expected a Linux bzImage, a Multiboot image or a 64-bit ELF\n$/,
    ],
    [
      'a device as kernel',
      ['run', '--kernel', '/dev/null'],
      /^vireo: kernel \/dev\/null is a character device, not a regular file: give the path of a file\n$/,
    ],
    ['--kernel without a file', ['run', '--kernel'], /option '--kernel <file>' argument missing/],
    ['bad --mem', ['run', '--kernel', 'k', '--mem', 'lots'], /--mem must be an integer from 1 to 1048576/],
    ['bad --cpus', ['run', '--kernel', 'k', '--cpus', '0'], /--cpus must be an integer from 1 to 254/],
    ['bad --serial', ['run', '--kernel', 'k', '--serial', 'tcp:1'], /use stdio, none or file:PATH/],
    ['unknown command', ['fly'], /unknown command 'fly'/],
    [
      '--nested with --native',
      ['run', '--kernel', 'k', '--nested', '--native'],
      /^vireo: --nested and --native contradict each other: give one/,
    ],
  ];
  for (const [name, args, re] of cases) {
    test(name, { skip: skip && args.includes('/dev/null') }, () => {
      const r = runVireo(args);
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, re);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    });
  }

  test('a usage error while the prewarmed threads load koffi: the status, never SIGABRT (40 runs)', () => {
    // bin/vireo.js starts four vCPU threads and the I/O thread before parsing; exiting while one was
    // inside koffi's initialisation aborted the process (about 1 run in 40 before the fix).
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 40; i++) {
      const r = runVireo(['run', '--cpus', '4', '--rng', '--bogus']);
      const key = r.signal ?? `status ${r.status}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    }
    assert.deepEqual([...outcomes], [['status 1', 40]]);
  });

  test('memory size out of range', { skip }, () => {
    const r = runVireo(['run', '--kernel', guestPath('multiboot'), '--mem', '1']);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /memory size 1 MiB is out of range/);
  });
});

describe('vireo host', () => {
  test('reports the KVM flavour, API version 12 and the capabilities vireo uses', { skip }, () => {
    const r = runVireo(['host', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const rep = JSON.parse(r.stdout);
    assert.equal(rep.usable, true);
    assert.equal(rep.apiVersion, 12);
    assert.ok(['vmx', 'svm', 'pvm'].includes(rep.flavour));
    const caps = new Map(rep.capabilities.map((c: { name: string; value: number }) => [c.name, c.value]));
    for (const c of ['KVM_CAP_IRQCHIP', 'KVM_CAP_PIT2', 'KVM_CAP_IMMEDIATE_EXIT', 'KVM_CAP_USER_MEMORY'])
      assert.ok((caps.get(c) as number) > 0, c);
    const text = runVireo(['host']);
    assert.match(text.stdout, /^flavour\s+(Intel VT-x|AMD-V|PVM)/m);
  });

  test('no KVM device: says so and how to fix it', () => {
    const r = runVireo(['host'], { env: { VIREO_KVM_DEVICE: '/nonexistent/kvm' } });
    assert.equal(r.status, 1);
    assert.match(r.stdout, /\/nonexistent\/kvm does not exist: this host has no KVM; enable virtualization/);
    const run = runVireo(['run', '--kernel', '/etc/hostname'], { env: { VIREO_KVM_DEVICE: '/nonexistent/kvm' } });
    assert.equal(run.status, 1);
    assert.match(run.stderr, /^vireo: \/nonexistent\/kvm does not exist/);
  });

  test('a file that is not a KVM device', () => {
    const r = runVireo(['host', '--json'], { env: { VIREO_KVM_DEVICE: '/dev/null' } });
    const rep = JSON.parse(r.stdout);
    assert.equal(rep.error.code, 'VIREO_ERR_NO_KVM');
    assert.match(rep.error.message, /\/dev\/null is not a KVM device/);
  });

  test('no permission: says to join the kvm group or run as root', {
    skip: skip || process.getuid?.() !== 0 ? (skip ?? 'needs root to switch to an unprivileged user') : false,
  }, () => {
    const r = runVireo(['host', '--json'], { uid: 65534, gid: 65534 });
    const rep = JSON.parse(r.stdout);
    assert.equal(rep.error.code, 'VIREO_ERR_KVM_PERMISSION');
    assert.match(rep.error.message, /add your user to the kvm group .* or run as root/);
  });
});

describe('the terminal', { skip }, () => {
  test('raw-mode input reaches the guest and Ctrl-A x quits with status 0', async () => {
    const { spawnSync } = await import('node:child_process');
    const { repoRoot } = await import('./support/cc.js');
    const script = JSON.stringify([{ expect: 'echo ready' }, { send: 'abc' }, { expect: 'ABC' }, { send: '\u0001x' }]);
    const r = spawnSync(
      'python3',
      [
        join(repoRoot, 'test', 'support', 'terminal.py'),
        script,
        '--',
        process.execPath,
        join(repoRoot, 'bin', 'vireo.js'),
        'run',
        '--kernel',
        guestPath('modes64'),
        '--cmdline',
        'e',
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    const res = JSON.parse(r.stdout);
    assert.equal(res.timedOut, false, res.output);
    assert.equal(res.status, 0);
    assert.match(res.output, /ABC/);
    assert.match(res.output, /terminated by Ctrl-A x/);
  });
});
