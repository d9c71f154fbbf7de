/**
 * sys.IoVec: readv/writev straight between a file and native memory made by sys.view (guest RAM), the
 * path virtio-net's TAP backend takes. Proven over a pipe: bytes written from one view arrive in
 * another, split as the iovec says; memory not made by sys.view (a JS buffer) is refused, never sent
 * to the kernel by address; EAGAIN is -1, not a throw.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as sys from '../src/os/sys.js';

const PAGE = 4096;

function nativeBytes(len: number): { bytes: Uint8Array; free: () => void } {
  const addr = sys.mmap(0, len, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1, 0);
  return { bytes: new Uint8Array(sys.view(addr, len)), free: () => sys.munmap(addr, len) };
}

test('IoVec: writev then readv over a pipe, through views of native memory, split as given', () => {
  const m = nativeBytes(PAGE);
  const [r, w] = sys.pipe();
  try {
    const src = m.bytes.subarray(100, 110);
    src.set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const iov = new sys.IoVec(4);
    assert.ok(iov.push(m.bytes.subarray(0, 16)));
    assert.equal(iov.readv(r), -1, 'an empty non-blocking pipe: EAGAIN is -1');
    iov.clear();
    assert.ok(iov.push(src.subarray(0, 4)));
    assert.ok(iov.push(src.subarray(4)));
    assert.equal(iov.count, 2);
    assert.equal(iov.writev(w), 10);
    iov.clear();
    const a = m.bytes.subarray(2000, 2003);
    const b = m.bytes.subarray(3000, 3010);
    assert.ok(iov.push(a));
    assert.ok(iov.push(b));
    assert.equal(iov.readv(r), 10);
    assert.deepEqual([...a], [1, 2, 3]);
    assert.deepEqual([...b.subarray(0, 7)], [4, 5, 6, 7, 8, 9, 10]);
    assert.equal(b[7], 0, 'nothing past what was read');
  } finally {
    sys.close(r);
    sys.close(w);
    m.free();
  }
});

test('IoVec: refuses memory it has no native address for, and more entries than it holds', () => {
  const m = nativeBytes(PAGE);
  try {
    const iov = new sys.IoVec(2);
    assert.equal(iov.push(new Uint8Array(8)), false, 'a JS buffer is refused');
    assert.equal(iov.push(Buffer.alloc(8)), false, 'a Node buffer is refused');
    assert.equal(iov.count, 0);
    assert.ok(iov.push(m.bytes.subarray(0, 1)));
    assert.ok(iov.push(m.bytes.subarray(1, 2)));
    assert.equal(iov.push(m.bytes.subarray(2, 3)), false, 'full');
    assert.equal(iov.count, 2);
  } finally {
    m.free();
  }
});
