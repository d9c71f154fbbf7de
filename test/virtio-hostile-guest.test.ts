/**
 * A native guest that is a hostile virtio-mmio driver (test/guests/hostile64.S, issue 16 item 1): its
 * selector writes with bit 31 set and its wide, straddling port accesses go through real MMIO and PIO
 * exits to a real virtio-rng and virtio-balloon and to the legacy devices. Before the fix the first
 * QueueReady read after QueueSel=0x80000000 ended the VM ("Invalid atomic access index").
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { guestPath } from './guests/build.js';
import { kvmSkipReason, runVireo } from './support/vireo.js';

describe('hostile driver guest', { skip: kvmSkipReason() }, () => {
  test('hostile selector values and straddling accesses: the VMM survives and reads back what the spec says', () => {
    const r = runVireo(['run', '--kernel', guestPath('hostile64'), '--rng', '--balloon', '0']);
    assert.doesNotMatch(r.stderr, /vCPU \d+:/, 'no vCPU error ended the VM');
    assert.equal(r.stdout, 'hostile ok\n', r.stderr);
    assert.equal(r.status, 0x63, r.stderr);
  });
});
