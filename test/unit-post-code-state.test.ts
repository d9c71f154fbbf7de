/**
 * The POST-code port's state record: save → restore → save gives the same record and the same
 * history, also after the count passed the 64-code ring; a history that does not match the count
 * is refused with the field's path.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { VireoError } from '../src/common/errors.js';
import { createPostCodeState, PostCode } from '../src/devices/legacy/post-code.js';
import { restorePostCodeState, savePostCodeState } from '../src/devices/legacy/post-code-state.js';

test('property: save → restore → save is the same record, and the next codes land the same', () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 200 }),
      fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 80 }),
      (before, next) => {
        const a = createPostCodeState();
        for (const c of before) new PostCode(a).write(0, Uint8Array.of(c));
        const saved = savePostCodeState(a);
        const b = createPostCodeState();
        restorePostCodeState(b, JSON.parse(JSON.stringify(saved)));
        assert.deepEqual(savePostCodeState(b), saved);
        for (const c of next) for (const s of [a, b]) new PostCode(s).write(0, Uint8Array.of(c));
        assert.deepEqual(PostCode.history(b), PostCode.history(a));
        assert.deepEqual(savePostCodeState(b), savePostCodeState(a));
      },
    ),
  );
});

test('a history that does not match the count is refused with its path', () => {
  const s = savePostCodeState(createPostCodeState());
  assert.deepEqual(s, { version: 1, count: 0, last: -1, history: '' });
  assert.throws(
    () => restorePostCodeState(createPostCodeState(), { ...s, count: 3 }),
    (e: unknown) =>
      e instanceof VireoError &&
      e.code === 'VIREO_ERR_SNAPSHOT_CORRUPT' &&
      /at \$\.history: expected 3 codes/.test(e.message),
  );
});
