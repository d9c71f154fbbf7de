/**
 * State files whose checksum is right but whose body is not what vireo wrote. The SHA-256 is a
 * checksum, not a signature: anyone can re-sign a body (as these tests do, with the format's own
 * encoder). Named cases from hostile testing (`msrs: "zz"`, an irqchip that is not a list, null CPUID
 * entries, strings for numbers, missing fields, an extra huge array, a directory as the memory file)
 * each give a SnapshotError naming the JSON path of the bad field; a property test mutates a real
 * body at random and requires every restore to succeed or fail with a VireoError — never a
 * TypeError, SyntaxError or raw errno.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import { VireoError } from '../src/common/errors.js';
import { encodeStateFile } from '../src/snapshot/format.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const dir = mkdtempSync(join(tmpdir(), 'vireo-snap-body-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const statePath = join(dir, 'good.state');
const memPath = join(dir, 'good.mem');
type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
let body: Json;

before(async () => {
  if (skip) return;
  // A VM with a virtio device, so that device state (registers and queue positions) is in the body.
  const vm = await Vm.create({
    kernel: guestPath('modes64'),
    cmdline: 'c',
    memMiB: 16,
    rng: true,
    serial: { kind: 'none' },
  });
  vm.start();
  await vm.pause();
  await vm.snapshot({ statePath, memPath });
  await vm.stop();
  const b = readFileSync(statePath);
  body = JSON.parse(b.subarray(16, 16 + b.readUInt32LE(12)).toString('utf8')) as Json;
});

let n = 0;
/** Writes `b` as a state file with a valid checksum; returns its path. */
function resigned(b: unknown): string {
  const p = join(dir, `m${n++ % 8}.state`);
  writeFileSync(p, Buffer.concat(encodeStateFile(b)));
  return p;
}

/** Restores; a VM that comes up is stopped. Resolves to the error, or undefined on success. */
async function tryRestore(state: string, mem = memPath): Promise<unknown> {
  try {
    const vm = await Vm.restore({ statePath: state, memPath: mem, serial: { kind: 'none' } });
    await vm.stop();
    return undefined;
  } catch (e) {
    return e;
  }
}

const clone = (): Json => structuredClone(body);
type Obj = { [k: string]: Json };
const at = (b: Json, ...keys: (string | number)[]): Json =>
  keys.reduce<Json>((o, k) => (o as Obj)[k as string] as Json, b);

test('named malformed bodies: each a SnapshotError with the JSON path of the bad field', { skip }, async () => {
  const cases: [string, (b: Obj) => void, RegExp][] = [
    ['msrs not a list', (b) => ((at(b, 'vcpus', 0) as Obj).msrs = 'zz'), /at \$\.vcpus\[0\]\.msrs: expected a list/],
    [
      'an MSR value not a number',
      (b) => ((at(b, 'vcpus', 0, 'msrs', 0) as Json[])[1] = 'zz'),
      /at \$\.vcpus\[0\]\.msrs\[0\]\[1\]: expected a 64-bit unsigned integer/,
    ],
    ['irqchip not iterable', (b) => ((b.vm as Obj).irqchip = 5), /at \$\.vm\.irqchip: expected a list of 3/],
    ['a null CPUID entry', (b) => ((at(b, 'vcpus', 0, 'cpuid') as Json[])[0] = null), /at \$\.vcpus\[0\]\.cpuid\[0\]/],
    ['memMiB a string', (b) => ((b.config as Obj).memMiB = '16'), /at \$\.config\.memMiB: expected an integer/],
    ['devices missing', (b) => delete b.devices, /at \$\.devices: missing/],
    ['an extra huge array', (b) => (b.extra = new Array(200_000).fill(0)), /at \$\.extra: unknown field/],
    [
      'regs of the wrong size',
      (b) => ((at(b, 'vcpus', 0) as Obj).regs = 'AAAA'),
      /at \$\.vcpus\[0\]\.regs: expected base64 of 144 bytes/,
    ],
    [
      'a region off the file',
      (b) => ((at(b, 'memory', 'regions', 0) as Obj).offset = 4096),
      /at \$\.memory\.regions\[0\]/,
    ],
    [
      'one vCPU state too many',
      (b) => (b.vcpus as Json[]).push(at(b, 'vcpus', 0)),
      /at \$\.vcpus: expected a list of 1/,
    ],
    [
      'a queue position out of range',
      (b) => {
        const side = at(b, 'devices', 'virtio', 0, 'side') as Obj;
        side.positions = [{ nextAvail: 70000, nextUsed: 0, signalledUsed: 0, inFlight: 0 }];
      },
      /at \$\.devices\.virtio\[0\]\.side\.positions\[0\]\.nextAvail/,
    ],
    [
      'an empty body',
      (b) => {
        for (const k of Object.keys(b)) delete b[k];
      },
      /at \$\.vireo: missing/,
    ],
  ];
  for (const [name, mutate, re] of cases) {
    const b = clone() as Obj;
    mutate(b);
    const e = await tryRestore(resigned(b));
    assert.ok(e instanceof VireoError, `${name}: ${String(e)}`);
    assert.equal((e as VireoError).code, 'VIREO_ERR_SNAPSHOT_CORRUPT', `${name}: ${(e as Error).message}`);
    assert.match((e as Error).message, re, name);
    assert.doesNotMatch((e as Error).message, /\n/);
  }
  const inDir = join(dir, 'a-directory');
  mkdirSync(inDir);
  const e = await tryRestore(statePath, inDir);
  assert.ok(e instanceof VireoError, String(e));
  assert.match((e as Error).message, /memory file \S+a-directory is a directory, not a regular file/);
  assert.equal(await tryRestore(resigned(clone())), undefined, 'the unmutated body, re-signed, restores');
});

/** Every path into the body (objects' keys, lists' indexes), the root excluded. */
function paths(v: Json, prefix: (string | number)[] = []): (string | number)[][] {
  if (v === null || typeof v !== 'object') return [];
  const keys: (string | number)[] = Array.isArray(v) ? v.map((_, i) => i) : Object.keys(v);
  return keys.flatMap((k) => [[...prefix, k], ...paths((v as Obj)[k as string] as Json, [...prefix, k])]);
}

const hostileValue: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(null, true, false, 'zz', '', '16', -1, 0, 1, 1.5, 2 ** 31, 2 ** 32, 2 ** 53, 1e308, [], {}),
  fc.constantFrom<Json>([null], [[]], { __proto__: 1 } as Json, 'AAAA', 'not base64!', '18446744073709551616'),
  fc.integer({ min: -(2 ** 33), max: 2 ** 33 }),
  fc.string({ maxLength: 8 }),
  fc.constant(new Array(10_000).fill(0) as Json),
);

type Mutation =
  | { op: 'set'; pick: number; value: Json }
  | { op: 'delete'; pick: number }
  | { op: 'add-key'; pick: number; value: Json }
  | { op: 'flip'; pick: number; char: number }
  | { op: 'nudge'; pick: number; by: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('set' as const), pick: fc.nat(), value: hostileValue }),
  fc.record({ op: fc.constant('delete' as const), pick: fc.nat() }),
  fc.record({ op: fc.constant('add-key' as const), pick: fc.nat(), value: hostileValue }),
  // Content changes that keep the form: a base64 character, an integer moved a little.
  fc.record({ op: fc.constant('flip' as const), pick: fc.nat(), char: fc.nat() }),
  fc.record({ op: fc.constant('nudge' as const), pick: fc.nat(), by: fc.integer({ min: -4096, max: 4096 }) }),
);

/** Applies `m` at one of the paths into `b` as it is now (an earlier mutation may have moved them). */
function apply(b: Json, m: Mutation): void {
  const all = paths(b);
  if (all.length === 0) return;
  const path = all[m.pick % all.length] as (string | number)[];
  const parent = at(b, ...path.slice(0, -1)) as Obj | Json[];
  const key = path[path.length - 1] as string | number;
  const cur = (parent as Obj)[key as string] as Json;
  // A copy: the arbitrary's constants are shared between runs, and one inserted twice would make a cycle.
  const value = 'value' in m ? structuredClone(m.value) : null;
  switch (m.op) {
    case 'set':
      (parent as Obj)[key as string] = value;
      break;
    case 'delete':
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete parent[key as string];
      break;
    case 'add-key':
      if (cur !== null && typeof cur === 'object' && !Array.isArray(cur)) cur[`x${m.pick % 7}`] = value;
      else if (Array.isArray(cur)) cur.push(value);
      else (parent as Obj)[key as string] = value;
      break;
    case 'flip':
      if (typeof cur === 'string' && cur.length > 0) {
        const i = m.char % cur.length;
        const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
        const c = alphabet[(alphabet.indexOf(cur[i] as string) + 1 + (m.char % 63)) % 64] as string;
        (parent as Obj)[key as string] = cur.slice(0, i) + c + cur.slice(i + 1);
      }
      break;
    case 'nudge':
      if (typeof cur === 'number') (parent as Obj)[key as string] = cur + m.by;
      break;
  }
}

test('property: a re-signed, mutated body restores or fails with a VireoError, nothing else', { skip }, async () => {
  const seen = { restored: 0, refused: 0 };
  await fc.assert(
    fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 3 }), async (ms) => {
      const b = clone();
      for (const m of ms) apply(b, m);
      const e = await tryRestore(resigned(b));
      if (e === undefined) seen.restored++;
      else {
        seen.refused++;
        if (process.env.VIREO_DEBUG && (!(e instanceof VireoError) || e.message.includes('\n')))
          process.stderr.write(`${JSON.stringify(ms)}\n${(e as Error)?.stack}\n`);
        assert.ok(e instanceof VireoError, `not a VireoError: ${(e as Error)?.stack ?? String(e)}`);
        assert.doesNotMatch(e.message, /\n/, 'one line');
      }
    }),
    { numRuns: 1500, includeErrorInReport: true },
  );
  process.stderr.write(`mutated bodies: ${seen.restored} restored, ${seen.refused} refused\n`);
  assert.ok(seen.restored > 0 && seen.refused > 0, `both outcomes reached: ${JSON.stringify(seen)}`);
});

test('device-side counters as save() writes them (int32: negative past 2^31 config writes) restore', {
  skip,
}, async () => {
  // The I/O thread keeps activeGen, resetGen and configWrites as it reads them from the transport's
  // int32 slots (SharedState.get): a guest that wrote its config space 2^31 times (the balloon's
  // `actual`, one MMIO exit each) has a negative configWrites, and a snapshot records just that.
  const b = clone() as Obj;
  const side = at(b, 'devices', 'virtio', 0, 'side') as Obj;
  side.configWrites = -0x8000_0000;
  side.activeGen = -3;
  side.resetGen = -2;
  const e = await tryRestore(resigned(b));
  assert.equal(e, undefined, `a body vireo writes must restore: ${String((e as Error | undefined)?.message)}`);
});
