/**
 * The snapshot state decoder: src/snapshot/format.ts (magic, version, length, SHA-256, JSON) and the
 * whole-body validation of src/snapshot/body-schema.ts that a restore runs before it reads any field.
 * The base is a body the validator accepts, one vireo wrote (baseBody); a case edits it at any place
 * (json-mutate.ts), re-signs it with the format's own encoder (the checksum is no signature: anyone can), sometimes bends the
 * file's header or body bytes too, and decodes and validates it from a file. A SnapshotError (any
 * VireoError) is a refusal; anything else is a crash.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { validateBody } from '../../src/snapshot/body-schema.js';
import { encodeStateFile } from '../../src/snapshot/format.js';
import { readSnapshotBody } from '../../src/snapshot/state.js';
import { repoRoot } from '../support/cc.js';
import { guarded, target, type Verdict } from './harness.js';
import { applyEdits, editArb, type Json } from './json-mutate.js';

/**
 * A body as vireo writes it: the format-2 fixture (test/fixtures/snapshot-v2: a counter guest with 2
 * MiB, virtio-rng and a balloon) read and converted to format 3's device records by the restore
 * path's own reader, so every field is one vireo writes and the validator accepts.
 */
export function baseBody(): Json {
  return readSnapshotBody(join(repoRoot, 'test', 'fixtures', 'snapshot-v2', 'counter.state')) as unknown as Json;
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
  edits: Parameters<typeof applyEdits>[1];
  /** After signing: header or body bytes replaced (the checksum then fails, or the header lies). */
  bytes: { at: number; value: number }[];
}

export const snapshotTarget = target('snapshot-state', 10_000, () => {
  const dir = mkdtempSync(join(tmpdir(), 'vireo-fuzz-snap-'));
  const path = join(dir, 'case.state');
  const base = baseBody();
  // The base must be accepted, or every case would stop at the first field and test nothing.
  validateBody(structuredClone(base), 'base');
  return {
    arbitrary: fc.record({
      edits: fc.array(editArb(values), { maxLength: 4 }),
      bytes: fc.oneof(
        { weight: 6, arbitrary: fc.constant<{ at: number; value: number }[]>([]) },
        { weight: 1, arbitrary: fc.array(fc.record({ at: fc.nat(40), value: fc.nat(255) }), { maxLength: 3 }) },
      ),
    }),
    close: () => rmSync(dir, { recursive: true, force: true }),
    run(c: SnapCase): Verdict {
      const file = Buffer.concat(encodeStateFile(applyEdits(base, c.edits)));
      for (const b of c.bytes) file[b.at % file.length] = b.value;
      writeFileSync(path, file);
      return guarded(() => {
        readSnapshotBody(path); // decode (magic, version, length, SHA-256), then the whole-body check
        return undefined;
      });
    },
  };
});
