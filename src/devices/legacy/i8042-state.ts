/**
 * The i8042's persisted state: its registers by name, the controller command waiting for its data
 * byte, and the output buffer's bytes oldest first — not the shared buffer's slots and ring head.
 */
import { fromHex, toHex } from '../../common/hex.js';
import { type Check, checkRecord, hexBytes, object, oneOf, u8, u32, version } from '../../common/schema.js';
import type { SharedState } from '../../common/shared-state.js';
import { BUF_OFFSET, CMD_WRITE_CTR, CMD_WRITE_OUTP, I8042_BUFFER_SIZE, type I8042Field } from './i8042.js';

export const I8042_STATE_VERSION = 1;

/** Which register the next data-port write goes to: none (a keyboard command), the command byte, the output port. */
export type I8042PendingWrite = 'none' | 'commandByte' | 'outputPort';

export interface I8042State {
  version: 1;
  status: number;
  /** The controller command byte (CTR). */
  commandByte: number;
  outputPort: number;
  pendingWrite: I8042PendingWrite;
  /** Bytes the guest has not read yet, oldest first (hex). */
  output: string;
  irqs: number;
  dropped: number;
}

export const checkI8042State: Check = object({
  version: version(I8042_STATE_VERSION),
  status: u8,
  commandByte: u8,
  outputPort: u8,
  pendingWrite: oneOf('none', 'commandByte', 'outputPort'),
  output: hexBytes(I8042_BUFFER_SIZE),
  irqs: u32,
  dropped: u32,
});

const PENDING: Record<I8042PendingWrite, number> = { none: 0, commandByte: CMD_WRITE_CTR, outputPort: CMD_WRITE_OUTP };

export function saveI8042State(s: SharedState<I8042Field>): I8042State {
  const head = s.u32('head') % I8042_BUFFER_SIZE;
  const out = new Uint8Array(Math.min(s.u32('count'), I8042_BUFFER_SIZE));
  for (let i = 0; i < out.length; i++) out[i] = s.u8[BUF_OFFSET + ((head + i) % I8042_BUFFER_SIZE)] as number;
  const p = s.get('pendingWrite');
  return {
    version: 1,
    status: s.get('status') & 0xff,
    commandByte: s.get('ctr') & 0xff,
    outputPort: s.get('outputPort') & 0xff,
    pendingWrite: p === CMD_WRITE_CTR ? 'commandByte' : p === CMD_WRITE_OUTP ? 'outputPort' : 'none',
    output: toHex(out),
    irqs: s.u32('irqs'),
    dropped: s.u32('dropped'),
  };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path) and puts it in place. */
export function restoreI8042State(s: SharedState<I8042Field>, state: unknown): void {
  checkRecord<I8042State>(checkI8042State, state, 'i8042');
  s.set('status', state.status);
  s.set('ctr', state.commandByte);
  s.set('outputPort', state.outputPort);
  s.set('pendingWrite', PENDING[state.pendingWrite]);
  const out = fromHex(state.output);
  s.u8.fill(0, BUF_OFFSET, BUF_OFFSET + I8042_BUFFER_SIZE);
  s.u8.set(out, BUF_OFFSET);
  s.set('head', 0);
  s.set('count', out.length);
  s.set('irqs', state.irqs | 0);
  s.set('dropped', state.dropped | 0);
}
