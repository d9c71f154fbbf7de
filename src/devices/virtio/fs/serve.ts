/**
 * One virtio-fs request, from its chain's guest buffers to its reply in them: copy the readable part
 * out (bounded), parse it (request.ts), hand it to the server, write the out-header and body into
 * the writable part. Written once for the two places a request is served: the device's own thread
 * (device.ts, a server given inline) and the share's worker thread (backends/fs/worker-entry.ts).
 */
import type { GuestMemory } from '../../../memory/guest-memory.js';
import { readFromChain, type Segment, writeToChain } from '../queue.js';
import { E, SIZE } from './abi.js';
import type { FuseReply, FuseServer } from './device.js';
import { parseRequest } from './request.js';

/** The most bytes of a request copied out of guest memory: a WRITE of max_write, or xattr/symlink names. */
export const FS_MAX_REQUEST = 1024 * 1024 + 4096;

/** How a request ended, for the device's counters. */
export type ServeOutcome = 'ok' | 'error' | 'malformed' | 'serverFailure' | 'forget';
export const OUTCOMES: readonly ServeOutcome[] = ['ok', 'error', 'malformed', 'serverFailure', 'forget'];

export interface ChainBuffers {
  readable: readonly Segment[];
  writable: readonly Segment[];
  readLen: number;
  writeLen: number;
}

export interface Served {
  /** Bytes written into the writable buffers (the used length). */
  used: number;
  outcome: ServeOutcome;
}

/** Writes fuse_out_header (len, error, unique) and the body; 0 when there is no room for the header. */
function reply(mem: GuestMemory, c: ChainBuffers, unique: bigint, errno: number, body?: Uint8Array): number {
  if (c.writeLen < SIZE.OUT_HEADER) return 0;
  const len = SIZE.OUT_HEADER + (body?.length ?? 0);
  const hdr = new Uint8Array(SIZE.OUT_HEADER);
  const v = new DataView(hdr.buffer);
  v.setUint32(0, len, true);
  v.setInt32(4, -errno, true);
  v.setBigUint64(8, unique, true);
  writeToChain(mem, c.writable, hdr);
  if (body !== undefined && body.length > 0) writeToChain(mem, c.writable, body, SIZE.OUT_HEADER);
  return len;
}

/** Serves one request; never throws for anything the guest wrote (a server throw is -EIO). */
export function serveChain(server: FuseServer, mem: GuestMemory, c: ChainBuffers): Served {
  const limit = Math.min(c.readLen, FS_MAX_REQUEST, SIZE.IN_HEADER + SIZE.WRITE_IN + server.maxWrite + 4096);
  const parsed = parseRequest(readFromChain(mem, c.readable, limit));
  if (!parsed.ok) return { used: reply(mem, c, parsed.header?.unique ?? 0n, parsed.error), outcome: 'malformed' };
  const req = parsed.req;
  // Without room for an out-header no reply can go back: only the requests that have none are served.
  if (c.writeLen < SIZE.OUT_HEADER && req.op !== 'forget' && req.op !== 'batchForget')
    return { used: 0, outcome: 'malformed' };
  const maxOut = Math.max(0, c.writeLen - SIZE.OUT_HEADER);
  let r: FuseReply;
  try {
    r = server.handle(req, maxOut);
  } catch {
    // A server bug (a host call it did not expect to fail): the request fails, the device goes on.
    return { used: reply(mem, c, req.unique, E.IO), outcome: 'serverFailure' };
  }
  if ('none' in r) return { used: 0, outcome: 'forget' };
  if ('error' in r) return { used: reply(mem, c, req.unique, r.error), outcome: 'error' };
  // The guest's reply buffers are shorter than the reply to what it asked (a GETATTR with room for
  // a header only): the request fails, nothing is written past its buffers.
  if (r.body.length > maxOut) return { used: reply(mem, c, req.unique, E.IO), outcome: 'malformed' };
  return { used: reply(mem, c, req.unique, 0, r.body), outcome: 'ok' };
}
