/**
 * vireo-jailer's pure parts, without root: the command line parser, the cgroup plan (which hierarchy,
 * which version, the one line when neither serves) over synthetic /proc/mounts text and controller
 * lists, the Node-style dependency walk over a synthetic package tree, and the ldd reading.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { parseJailerArgv, validateId } from '../src/cli/jail/args.js';
import { cgroupMounts, planCgroups } from '../src/cli/jail/cgroup.js';
import { dependencyFolders, programKind, sharedLibraries } from '../src/cli/jail/contents.js';
import { JAIL_EXEC, mountOptionsOf } from '../src/cli/jailer.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-unit-jailer-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

test('the parser: --name value and --name=value, repeatable --cgroup, everything after -- for the VMM', () => {
  const { flags, extra } = parseJailerArgv([
    '--id=a-1',
    '--cgroup',
    'pids.max=1',
    '--cgroup=cpu.weight=5',
    '--new-pid-ns',
    '--',
    '--api-sock',
    '/run/x.sock',
    '--id',
  ]);
  assert.deepEqual(flags.get('id'), ['a-1']);
  assert.deepEqual(flags.get('cgroup'), ['pids.max=1', 'cpu.weight=5']);
  assert.equal(flags.get('new-pid-ns'), true);
  assert.deepEqual(extra, ['--api-sock', '/run/x.sock', '--id']);
  assert.throws(() => parseJailerArgv(['--uid', '1', '--uid', '2']), /provided more than once/);
  assert.throws(() => parseJailerArgv(['positional']), /Found argument 'positional'/);
});

test('ids: 1 to 64 letters, digits and hyphens', () => {
  validateId('551e7604-e35c-42b3-b825-416853441234');
  validateId('a'.repeat(64));
  assert.throws(() => validateId('a'.repeat(65)), /invalid len \(65\)/);
  assert.throws(() => validateId('a/b'), /invalid char \(\/\) at position 1/);
  assert.throws(() => validateId('é'), /invalid char/);
});

const MOUNTS = (v2dir: string): string =>
  [
    'tmpfs /sys/fs/cgroup tmpfs rw 0 0',
    'cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0',
    'cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0',
    `cgroup2 ${v2dir} cgroup2 rw,relatime 0 0`,
  ].join('\n');

function unified(controllers: string): string {
  const dir = mkdtempSync(join(tmp, 'unified-'));
  writeFileSync(join(dir, 'cgroup.controllers'), `${controllers}\n`);
  return dir;
}

test('cgroups: v2 where it offers every controller, v1 otherwise; one line when the asked version cannot serve', () => {
  const pids = { file: 'pids.max', controller: 'pids', value: '9' };
  const cpu = { file: 'cpu.shares', controller: 'cpu', value: '10' };
  const acct = { file: 'cpuacct.x', controller: 'cpuacct', value: '1' };
  const full = unified('cpu pids memory');
  const v2 = planCgroups([pids, cpu], undefined, 'fc', 'vm', cgroupMounts(MOUNTS(full)));
  assert.deepEqual(v2, {
    version: 2,
    groups: [{ base: full, dir: join(full, 'fc', 'vm'), settings: [pids, cpu], controllers: ['pids', 'cpu'] }],
  });
  const hybrid = unified('hugetlb');
  const v1 = planCgroups([pids, cpu, acct], undefined, 'a/b', 'vm', cgroupMounts(MOUNTS(hybrid)));
  assert.equal(v1?.version, 1);
  assert.deepEqual(
    v1?.groups.map((g) => [g.dir, g.controllers]),
    [
      ['/sys/fs/cgroup/pids/a/b/vm', ['pids']],
      ['/sys/fs/cgroup/cpu,cpuacct/a/b/vm', ['cpu', 'cpuacct']],
    ],
    'one cgroup per hierarchy; co-mounted controllers share it',
  );
  assert.throws(
    () => planCgroups([pids], 2, 'fc', 'vm', cgroupMounts(MOUNTS(hybrid))),
    /^JailerError: cgroup v2: controller pids is not available in the cgroup2 hierarchy at .* \(it offers: hugetlb; a controller bound to cgroup v1 is not: use --cgroup-version 1\)$/,
  );
  const noV2 = cgroupMounts(MOUNTS(hybrid).split('\n').slice(0, 3).join('\n'));
  assert.throws(
    () => planCgroups([pids], 2, 'fc', 'vm', noV2),
    /cgroup v2 is not mounted on this host .*use --cgroup-version 1/,
  );
  assert.throws(
    () => planCgroups([{ file: 'memory.max', controller: 'memory', value: '1' }], 1, 'fc', 'vm', noV2),
    /cgroup v1: no hierarchy is mounted with the memory controller$/,
  );
  assert.equal(planCgroups([], undefined, 'fc', 'vm', noV2), undefined, 'no --cgroup: no cgroup');
});

function pkg(dir: string, json: object): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify(json));
}

test('dependencies as Node resolves them: hoisted, nested, optional ones that are absent left out', () => {
  const root = mkdtempSync(join(tmp, 'pkg-'));
  pkg(root, {
    name: 'app',
    dependencies: { a: '1', b: '1' },
    optionalDependencies: { 'not-here': '1', '@s/opt': '1' },
  });
  pkg(join(root, 'node_modules', 'a'), { name: 'a', dependencies: { c: '1' } });
  pkg(join(root, 'node_modules', 'a', 'node_modules', 'c'), { name: 'c', dependencies: { b: '1' } });
  pkg(join(root, 'node_modules', 'b'), { name: 'b' });
  pkg(join(root, 'node_modules', '@s', 'opt'), { name: '@s/opt' });
  pkg(join(root, 'node_modules', 'unused'), { name: 'unused' });
  assert.deepEqual(dependencyFolders(root), ['node_modules/@s/opt', 'node_modules/a', 'node_modules/b']);
  pkg(join(root, 'node_modules', 'b'), { name: 'b', dependencies: { gone: '1' } });
  assert.throws(() => dependencyFolders(root), /gone \(needed by b\) is not installed: run npm install/);
});

test('programs: ELF or a Node script; ldd read for the libraries, none for a static helper', () => {
  assert.equal(programKind(realpathSync(process.execPath)), 'elf');
  const libs = sharedLibraries(realpathSync(process.execPath));
  assert.ok(
    libs.some((l) => /\/ld-linux[^/]*\.so/.test(l)),
    `the dynamic loader is among ${libs.join(' ')}`,
  );
  assert.ok(libs.some((l) => /\/libc\.so\.6$/.test(l)));
  assert.deepEqual(sharedLibraries(JAIL_EXEC), [], 'jail-exec is static');
  const script = join(tmp, 'tool');
  writeFileSync(script, '#!/usr/bin/env node\nconsole.log(1)\n');
  assert.equal(programKind(script), 'node');
  writeFileSync(script, '#!/bin/sh\necho 1\n');
  assert.throws(() => programKind(script), /neither an ELF executable nor a Node script/);
});

test('the mount that holds a path: the longest mount point above it', () => {
  const info = [
    '1 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw',
    '2 1 0:5 / /srv rw,nodev shared:2 - tmpfs tmpfs rw',
    '3 2 0:6 / /srv/jail rw,noexec shared:3 - tmpfs tmpfs rw',
    '4 1 0:7 / /srvx rw shared:4 - tmpfs tmpfs rw',
  ].join('\n');
  assert.deepEqual(mountOptionsOf('/srv/jailer', info), ['rw', 'nodev']);
  assert.deepEqual(mountOptionsOf('/srv/jail/x', info), ['rw', 'noexec']);
  assert.deepEqual(mountOptionsOf('/srvx/a', info), ['rw']);
  assert.deepEqual(mountOptionsOf('/home', info), ['rw', 'relatime']);
});
