/** common/lifecycle: DisposableStore's order, idempotence, error collection and add-after-dispose. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DisposableStore, toDisposable } from '../src/common/lifecycle.js';

test('a store disposes in the reverse order of adding', () => {
  const order: number[] = [];
  const s = new DisposableStore();
  for (const i of [1, 2, 3]) s.add(toDisposable(() => order.push(i)));
  s.dispose();
  assert.deepEqual(order, [3, 2, 1]);
});

test('add returns what it was given; a nested store is disposed at its place', () => {
  const order: string[] = [];
  const s = new DisposableStore();
  s.add(toDisposable(() => order.push('first')));
  const inner = s.add(new DisposableStore());
  s.add(toDisposable(() => order.push('last')));
  inner.add(toDisposable(() => order.push('inner')));
  s.dispose();
  assert.deepEqual(order, ['last', 'inner', 'first']);
  assert.equal(inner.isDisposed, true);
});

test('dispose is idempotent, for the store and for toDisposable', () => {
  let n = 0;
  const d = toDisposable(() => n++);
  const s = new DisposableStore();
  s.add(d);
  s.dispose();
  s.dispose();
  d.dispose();
  assert.equal(n, 1);
  assert.equal(s.isDisposed, true);
});

test('one error does not skip the others and is rethrown after all ran', () => {
  const order: number[] = [];
  const s = new DisposableStore();
  s.add(toDisposable(() => order.push(1)));
  s.add(
    toDisposable(() => {
      throw new Error('boom');
    }),
  );
  s.add(toDisposable(() => order.push(3)));
  assert.throws(() => s.dispose(), /^Error: boom$/);
  assert.deepEqual(order, [3, 1]);
  s.dispose(); // already disposed: nothing runs again, nothing thrown
  assert.deepEqual(order, [3, 1]);
});

test('several errors come back as one AggregateError, in the order they happened', () => {
  const ran: number[] = [];
  const s = new DisposableStore();
  s.add(
    toDisposable(() => {
      throw new Error('a');
    }),
  );
  s.add(toDisposable(() => ran.push(2)));
  s.add(
    toDisposable(() => {
      throw new Error('c');
    }),
  );
  let caught: unknown;
  try {
    s.dispose();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof AggregateError);
  assert.deepEqual(
    caught.errors.map((e: Error) => e.message),
    ['c', 'a'],
  );
  assert.deepEqual(ran, [2]);
});

test('adding to a disposed store disposes the item at once', () => {
  const s = new DisposableStore();
  s.dispose();
  let n = 0;
  const d = s.add(toDisposable(() => n++));
  assert.equal(n, 1);
  s.dispose();
  d.dispose();
  assert.equal(n, 1);
});

test('a store cannot own itself', () => {
  const s = new DisposableStore();
  assert.throws(() => s.add(s), /cannot own itself/);
});
