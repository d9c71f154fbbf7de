/**
 * The snapshot state decoder: src/snapshot/format.ts (magic, version, length, SHA-256, JSON), format 2's
 * conversion to records (src/snapshot/v2.ts) and the whole-body validation of src/snapshot/body-schema.ts
 * that a restore runs before it reads any field, all through readSnapshotBody as a restore calls it.
 * The base is a body vireo wrote: format 3 (baseBody) or, in a case of two, the format-2 fixture's own
 * body (its devices as raw buffer layouts, base64, whose int32 words a case also bends: FIFO heads and
 * counts, selectors, flags). A case edits it at any place (json-mutate.ts), re-signs it with the format's
 * own encoder and the base's version (the checksum is no signature: anyone can), sometimes bends the
 * file's header or body bytes too, and decodes and validates it from a file. A SnapshotError (any
 * VireoError) is a refusal; anything else is a crash.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { encodeStateFile } from '../../src/snapshot/format.js';
import { upgradeV2Body } from '../../src/snapshot/v2.js';
import { readSnapshotBody, validateBody } from '../../src/vmm/snapshot-body.js';
import { repoRoot } from '../support/cc.js';
import { guarded, target, type Verdict } from './harness.js';
import { applyEdits, editArb, type Json } from './json-mutate.js';

/**
 * A body as vireo writes it: the format-2 fixture (test/fixtures/snapshot-v2: a counter guest with 2
 * MiB, virtio-rng and a balloon) read and converted to format 3's device records by the restore
 * path's own reader, so every field is one vireo writes and the validator accepts.
 */
const FIXTURE = join(repoRoot, 'test', 'fixtures', 'snapshot-v2', 'counter.state');
export function baseBody(): Json {
  return readSnapshotBody(FIXTURE) as unknown as Json;
}

/** The fixture's body as format 2 holds it, unconverted (as test/snapshot-v2.test.ts's rawBody). */
export function rawV2Body(): Json {
  const b = readFileSync(FIXTURE);
  return JSON.parse(b.subarray(16, 16 + b.readUInt32LE(12)).toString('utf8')) as Json;
}

/** A state file of `body` with `version` in its header, signed (as test/snapshot-v2.test.ts's writeAs). */
function encodeAs(version: number, body: Json): Buffer {
  const [head, json] = encodeStateFile(body) as [Buffer, Buffer, Buffer];
  head.writeUInt32LE(version, 8);
  return Buffer.concat([head, json, createHash('sha256').update(head).update(json).digest()]);
}

/** Format 2's raw device buffers in a body: where a word edit lands. */
const V2_BUFFERS = ['serial', 'postCode', 'i8042', 'cmos', 'balloon', 'mmio0', 'mmio1'] as const;
interface WordEdit {
  buffer: number;
  /** The int32 word; fields are words 1 to 18 (the lock is word 0), FIFO and RAM bytes after 64. */
  index: number;
  value: number;
}
const wordEdit: fc.Arbitrary<WordEdit> = fc.record({
  buffer: fc.nat(V2_BUFFERS.length - 1),
  index: fc.oneof({ weight: 3, arbitrary: fc.nat(24) }, { weight: 1, arbitrary: fc.nat() }),
  value: fc.oneof(
    fc.constantFrom(0, 1, -1, 2, 3, 15, 16, 17, 64, 0xff, 0x100, 4095, 4096, 4097, 0x7fffffff, -0x80000000),
    fc.integer(),
  ),
});
function bendWords(body: Json, words: readonly WordEdit[]): void {
  const devices = (body as { devices: { [k: string]: Json } }).devices;
  const virtio = devices.virtio as { mmio: string }[];
  for (const w of words) {
    const name = V2_BUFFERS[w.buffer] as (typeof V2_BUFFERS)[number];
    const get = (): Json | undefined => (name.startsWith('mmio') ? virtio[Number(name[4])]?.mmio : devices[name]);
    const v = get();
    if (typeof v !== 'string') continue;
    const b = Buffer.from(v, 'base64');
    if (b.length < 4) continue;
    b.writeInt32LE(w.value, 4 * (w.index % (b.length >> 2)));
    if (name.startsWith('mmio')) (virtio[Number(name[4])] as { mmio: string }).mmio = b.toString('base64');
    else devices[name] = b.toString('base64');
  }
}

/** Values a body may carry where vireo wrote something else. */
const values: fc.Arbitrary<Json> = fc.oneof(
  fc.constantFrom<Json>(
    null,
    true,
    0,
    -1,
    1.5,
    2 ** 31,
    2 ** 32,
    2 ** 53,
    1e308,
    '',
    'zz',
    '====',
    'AAAA',
    '18446744073709551616',
    '-1',
    'Full',
    'Diff',
    [],
    {},
    [[[[[[[[]]]]]]]],
  ),
  fc.integer(),
  fc.string({ maxLength: 8 }),
  fc.base64String({ maxLength: 24 }),
);

interface SnapCase {
  /** Format 2: the fixture's raw body, read through upgradeV2Body. */
  v2: boolean;
  /** Format 2 only: words of its raw device buffers replaced before the edits. */
  words: WordEdit[];
  edits: Parameters<typeof applyEdits>[1];
  /** After signing: header or body bytes replaced (the checksum then fails, or the header lies). */
  bytes: { at: number; value: number }[];
}

export const snapshotTarget = target('snapshot-state', 10_000, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vireo-fuzz-snap-'));
  const path = join(dir, 'case.state');
  const base = baseBody();
  const base2 = rawV2Body();
  // Each base must be accepted, or every case would stop at the first field and test nothing.
  validateBody(structuredClone(base), 'base');
  const converted = structuredClone(base2);
  upgradeV2Body(converted);
  validateBody(converted, 'format-2 base');
  return {
    arbitrary: fc.record({
      v2: fc.boolean(),
      words: fc.oneof(
        { weight: 1, arbitrary: fc.constant<WordEdit[]>([]) },
        { weight: 2, arbitrary: fc.array(wordEdit, { minLength: 1, maxLength: 4 }) },
      ),
      edits: fc.array(editArb(values), { maxLength: 4 }),
      bytes: fc.oneof(
        { weight: 6, arbitrary: fc.constant<{ at: number; value: number }[]>([]) },
        { weight: 1, arbitrary: fc.array(fc.record({ at: fc.nat(40), value: fc.nat(255) }), { maxLength: 3 }) },
      ),
    }),
    close: () => rmSync(dir, { recursive: true, force: true }),
    run(c: SnapCase): Verdict {
      let file: Buffer;
      if (c.v2) {
        const body = structuredClone(base2);
        bendWords(body, c.words);
        // A whole-body wrap ends a format-2 case at upgradeV2Body's first check: one such case in many.
        const edits =
          c.edits.length > 1 ? c.edits.map((e) => (e.op === 'wrap' ? { ...e, op: 'replace' as const } : e)) : c.edits;
        file = encodeAs(2, applyEdits(body, edits));
      } else file = Buffer.concat(encodeStateFile(applyEdits(base, c.edits)));
      for (const b of c.bytes) file[b.at % file.length] = b.value;
      writeFileSync(path, file);
      return guarded(() => {
        readSnapshotBody(path); // decode (magic, version, length, SHA-256), then the whole-body check
        return undefined;
      });
    },
  };
});
