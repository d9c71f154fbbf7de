/**
 * virtio-fs (virtio 1.2 §5.11): FUSE requests over virtqueues, served by a FuseServer the VMM passes
 * in (backends/fs/ serves a host directory). Queue 0 is the high-priority queue (FORGET, BATCH_FORGET),
 * queue 1 the one request queue. Each chain is one request: the in-header and its arguments in the
 * device-readable buffers, the out-header and the reply in the device-writable ones.
 *
 * The guest is the attacker: the request is copied out of guest memory (bounded), parsed with every
 * length checked (request.ts), and anything malformed gets an error reply (-EINVAL, or -EIO for a
 * server failure); nothing a guest sends makes process() throw.
 */
import {
  bit,
  type DeviceStateRecord,
  VIRTIO_F_RING_EVENT_IDX,
  VIRTIO_F_RING_INDIRECT_DESC,
  VIRTIO_ID,
  type VirtioContext,
  type VirtioDevice,
} from '../device.js';
import { drainQueue } from '../drain.js';
import { type DescriptorChain, readFromChain, writeToChain } from '../queue.js';
import { E, SIZE } from './abi.js';
import { type FuseRequest, parseRequest } from './request.js';
import { type FsServerState, restoreFsState, saveFsState } from './state.js';

export const VIRTIO_ID_FS = VIRTIO_ID.fs;
/** The tag's bytes in the configuration space (UTF-8, NUL-padded; not NUL-terminated when 36 long). */
export const FS_TAG_BYTES = 36;
const QUEUE_SIZE = 256;
/** The most bytes of a request copied out of guest memory: a WRITE of max_write, or xattr/symlink names. */
export const FS_MAX_REQUEST = 1024 * 1024 + 4096;

/** A reply: an errno (positive; 0 is success without a body), a body, or none (FORGET). */
export type FuseReply = { error: number } | { body: Uint8Array } | { none: true };

/** The file-system side: answers one parsed request; `maxOut` is the room after the out-header. */
export interface FuseServer {
  handle(req: FuseRequest, maxOut: number): FuseReply;
  /** The largest WRITE payload it negotiates (INIT's max_write); the device copies that much at most. */
  readonly maxWrite: number;
  /** Its tables for a snapshot (plain JSON), and back (a restored VM's guest still holds the node ids). */
  saveState(): FsServerState;
  restoreState(state: FsServerState): void;
  close(): void;
}

export interface FsDeviceConfig {
  tag: string;
}

export class VirtioFs implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_FS;
  readonly queueMaxSizes = [QUEUE_SIZE, QUEUE_SIZE];
  readonly features = bit(VIRTIO_F_RING_EVENT_IDX) | bit(VIRTIO_F_RING_INDIRECT_DESC);
  readonly configSpace: Uint8Array;
  readonly counters = { requests: 0, errors: 0, malformed: 0, serverFailures: 0, forgets: 0 };
  private ctx: VirtioContext | undefined;

  constructor(
    private readonly server: FuseServer,
    config: FsDeviceConfig,
  ) {
    const tag = Buffer.from(config.tag, 'utf8');
    if (tag.length === 0 || tag.length > FS_TAG_BYTES) throw new RangeError(`virtio-fs tag must be 1-36 bytes`);
    // struct virtio_fs_config: u8 tag[36]; le32 num_request_queues.
    const cfg = new Uint8Array(FS_TAG_BYTES + 4);
    cfg.set(tag);
    new DataView(cfg.buffer).setUint32(FS_TAG_BYTES, 1, true);
    this.configSpace = cfg;
  }

  activate(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.process(0);
    this.process(1);
  }

  reset(): void {
    this.ctx = undefined;
  }

  saveState(): DeviceStateRecord {
    return saveFsState(this.server.saveState());
  }

  restoreState(state: unknown): void {
    this.server.restoreState(restoreFsState(state).server);
  }

  close(): void {
    this.server.close();
  }

  process(q: number): void {
    const ctx = this.ctx;
    if (ctx === undefined || q > 1) return;
    drainQueue(ctx, q, (chain) => this.serve(ctx, chain));
  }

  /** One request: returns the bytes written into the chain's writable buffers. */
  private serve(ctx: VirtioContext, chain: DescriptorChain): number {
    if (chain.error !== undefined) {
      this.counters.malformed++;
      return 0;
    }
    this.counters.requests++;
    const mem = ctx.mem;
    const limit = Math.min(chain.readLen, FS_MAX_REQUEST, SIZE.IN_HEADER + SIZE.WRITE_IN + this.server.maxWrite + 4096);
    const parsed = parseRequest(readFromChain(mem, chain.readable, limit));
    if (!parsed.ok) {
      this.counters.malformed++;
      return this.reply(ctx, chain, parsed.header?.unique ?? 0n, parsed.error);
    }
    const req = parsed.req;
    // Without room for an out-header no reply can go back: only the requests that have none are served.
    if (chain.writeLen < SIZE.OUT_HEADER && req.op !== 'forget' && req.op !== 'batchForget') {
      this.counters.malformed++;
      return 0;
    }
    const maxOut = Math.max(0, chain.writeLen - SIZE.OUT_HEADER);
    let r: FuseReply;
    try {
      r = this.server.handle(req, maxOut);
    } catch {
      // A server bug (a host call it did not expect to fail): the request fails, the device goes on.
      this.counters.serverFailures++;
      r = { error: E.IO };
    }
    if ('none' in r) {
      this.counters.forgets++;
      return 0;
    }
    if ('error' in r) return this.reply(ctx, chain, req.unique, r.error);
    if (r.body.length > maxOut) {
      // The guest's reply buffers are shorter than the reply to what it asked (a GETATTR with room for
      // a header only): the request fails, nothing is written past its buffers.
      this.counters.malformed++;
      return this.reply(ctx, chain, req.unique, E.IO);
    }
    return this.reply(ctx, chain, req.unique, 0, r.body);
  }

  /** Writes fuse_out_header (len, error, unique) and the body; 0 when there is no room for the header. */
  private reply(ctx: VirtioContext, chain: DescriptorChain, unique: bigint, errno: number, body?: Uint8Array): number {
    if (chain.writeLen < SIZE.OUT_HEADER) return 0;
    if (errno !== 0) this.counters.errors++;
    const len = SIZE.OUT_HEADER + (body?.length ?? 0);
    const hdr = new Uint8Array(SIZE.OUT_HEADER);
    const v = new DataView(hdr.buffer);
    v.setUint32(0, len, true);
    v.setInt32(4, -errno, true);
    v.setBigUint64(8, unique, true);
    writeToChain(ctx.mem, chain.writable, hdr);
    if (body !== undefined && body.length > 0) writeToChain(ctx.mem, chain.writable, body, SIZE.OUT_HEADER);
    return len;
  }
}
