/**
 * virtio-vsock through its public class behind the mmio transport, as the other device targets
 * (virtio.ts), over an in-memory VsockHost: every connect succeeds at once with a stream that takes
 * what it is sent and hands out bytes when a case says so, and the listener offers a host-initiated
 * connection on request. Packets are a 44-byte header (ops, CIDs, ports, lengths and credit fields
 * real or hostile) with a payload, on the tx queue; rx and event buffers are as hostile as elsewhere.
 * Imported from src/devices/virtio/vsock.ts, where the device lives on this branch.
 */
import fc from 'fast-check';
import {
  encodeHeader,
  VirtioVsock,
  VSOCK_HDR_SIZE,
  VSOCK_OP,
  type VsockHost,
  type VsockStream,
  type VsockTimer,
} from '../../src/devices/virtio/vsock/index.js';
import { FakePoller } from '../support/fake-net.js';
import { MockSplitQueue } from '../support/mock-virtq.js';
import type { TargetSpec } from './harness.js';
import { addrArb, DATA, type DeviceFuzz, deviceTarget, inSlot, layoutOf, lenArb, seg, serve } from './virtio.js';

class FakeStream implements VsockStream {
  inbox: Uint8Array[] = [];
  sent = 0;
  constructor(readonly fd: number) {}
  recv(buf: Uint8Array, peek = false): number {
    const b = this.inbox[0];
    if (b === undefined) return -1;
    const n = Math.min(buf.length, b.length);
    buf.set(b.subarray(0, n));
    if (!peek) {
      if (n === b.length) this.inbox.shift();
      else this.inbox[0] = b.subarray(n);
    }
    return n;
  }
  send(buf: Uint8Array): number {
    this.sent += buf.length;
    return buf.length;
  }
  shutdownWrite(): void {}
  connectResult(): number {
    return 0;
  }
  close(): void {}
}

class FakeHost implements VsockHost {
  private nextFd = 2000;
  readonly streams: FakeStream[] = [];
  pendingAccept: FakeStream | undefined;
  readonly listener = {
    fd: 1999,
    accept: (): VsockStream | undefined => {
      const s = this.pendingAccept;
      this.pendingAccept = undefined;
      return s;
    },
  };
  connect(): { stream: VsockStream; inProgress: boolean } {
    const s = new FakeStream(this.nextFd++);
    this.streams.push(s);
    return { stream: s, inProgress: false };
  }
  createTimer(): VsockTimer {
    return { fd: this.nextFd++, set: () => {}, ack: () => {}, close: () => {} };
  }
  /** A host peer connecting to the guest (through the listener): writes "CONNECT port\n" first. */
  offer(port: number): FakeStream {
    const s = new FakeStream(this.nextFd++);
    s.inbox.push(Buffer.from(`CONNECT ${port}\n`));
    this.streams.push(s);
    this.pendingAccept = s;
    return s;
  }
}

const GUEST_CID = 3n;
const u32 = fc.oneof(fc.constantFrom(0, 1, 1024, 0x7fffffff, 0x80000000, 0xffffffff), fc.nat());

/** A packet header: usually from the guest to the host on a small port, sometimes anything. */
const packet = fc
  .record({
    srcCid: fc.oneof(
      { weight: 5, arbitrary: fc.constant(GUEST_CID) },
      { weight: 1, arbitrary: fc.constantFrom(0n, 2n, 2n ** 64n - 1n) },
    ),
    dstCid: fc.oneof(
      { weight: 5, arbitrary: fc.constant(2n) },
      { weight: 1, arbitrary: fc.constantFrom(0n, 3n, 2n ** 32n) },
    ),
    srcPort: fc.oneof(fc.constantFrom(1000, 1001), u32),
    dstPort: fc.oneof(fc.constantFrom(52, 53), u32),
    len: fc.oneof(fc.constantFrom(0, 1, 16, 64), lenArb(4096, 65536, 65537)),
    type: fc.oneof(fc.constant(1), fc.nat(0xffff)),
    op: fc.oneof(fc.constantFrom(...Object.values(VSOCK_OP)), fc.nat(0xffff)),
    flags: fc.oneof(fc.constantFrom(0, 1, 2, 3), u32),
    bufAlloc: fc.oneof(fc.constantFrom(0, 65536, 262144), u32),
    fwdCnt: fc.oneof(fc.constant(0), u32),
  })
  .map((h) => {
    const b = new Uint8Array(VSOCK_HDR_SIZE + 64);
    encodeHeader(h, b);
    return b;
  });

type VsockEvent = { data: number; bytes: number } | { offer: number };

export const vsockFuzz: DeviceFuzz<VsockEvent> = {
  name: 'virtio-vsock',
  ciCases: 10_000,
  queues: 3,
  chain: (q) =>
    q === 1
      ? fc
          .tuple(
            seg(inSlot(0), lenArb(VSOCK_HDR_SIZE, VSOCK_HDR_SIZE, 43, 45, 108), fc.constant(false)),
            fc.array(seg(addrArb, lenArb(16, 64, 4096), fc.constant(false)), { maxLength: 2 }),
          )
          .map(([h, rest]) => [h, ...rest])
      : fc.array(seg(addrArb, lenArb(4096, VSOCK_HDR_SIZE, 8, 43, 0x10000), fc.constant(true)), {
          minLength: 1,
          maxLength: 2,
        }),
  slots: fc.array(packet, { minLength: 1, maxLength: 4 }),
  host: fc.oneof(
    fc.record({ data: fc.nat(7), bytes: fc.oneof(fc.constantFrom(0, 1, 4096, 70000), fc.nat(300_000)) }),
    fc.record({ offer: fc.oneof(fc.constantFrom(52, 1000), u32) }),
  ),
  rig: () => {
    const host = new FakeHost();
    const poller = new FakePoller();
    const device = new VirtioVsock(host, { cid: Number(GUEST_CID), udsPath: '/nonexistent/vireo-fuzz.sock' });
    device.attach(poller);
    return {
      device,
      host: (e) => {
        if ('offer' in e) {
          host.offer(e.offer >>> 0);
          poller.fire(host.listener.fd);
          return;
        }
        const s = host.streams[e.data % Math.max(1, host.streams.length)];
        if (s === undefined) return;
        s.inbox.push(new Uint8Array(e.bytes).fill(0x61));
        poller.fire(s.fd);
      },
      // A connection request to a host port after the case is answered with a RESPONSE on rx.
      health: (drv) => {
        const rxq = new MockSplitQueue(drv.mem, layoutOf(0));
        rxq.addChain([{ addr: DATA + 0x4000, len: 4096, write: true }]);
        drv.notify(0);
        const h = { srcCid: GUEST_CID, dstCid: 2n, srcPort: 4000, dstPort: 52, len: 0, type: 1 };
        drv.mem.write(DATA, encodeHeader({ ...h, op: VSOCK_OP.REQUEST, flags: 0, bufAlloc: 65536, fwdCnt: 0 }));
        const tx = serve(drv, 1, [{ addr: DATA, len: VSOCK_HDR_SIZE, write: false }]);
        if (typeof tx === 'string') return tx;
        const used = rxq.takeUsed();
        if (used.length !== 1) return `a connection request got ${used.length} rx packets`;
        const op = drv.mem.read16(DATA + 0x4000 + 30);
        return op === VSOCK_OP.RESPONSE ? undefined : `a connection request was answered with op ${op}`;
      },
    };
  },
};

export const vsockTarget: TargetSpec = deviceTarget(vsockFuzz);
