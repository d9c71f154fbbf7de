/**
 * The POST-code port's persisted state: how many codes were written, the last one, and the history
 * (the last 64 at most, oldest first) — not where in its ring the buffer keeps them.
 */
import { fromHex, toHex } from '../../common/hex.js';
import { type Check, checkRecord, hexBytes, int, object, SchemaError, u32, version } from '../../common/schema.js';
import type { SharedState } from '../../common/shared-state.js';
import { HISTORY, HISTORY_OFFSET, PostCode, type PostCodeField } from './post-code.js';

export const POST_CODE_STATE_VERSION = 1;

export interface PostCodeState {
  version: 1;
  count: number;
  /** The last code written; -1 before any. */
  last: number;
  /** The recorded codes, oldest first (the last min(count, 64)), hex. */
  history: string;
}

const record = object({
  version: version(POST_CODE_STATE_VERSION),
  count: u32,
  last: int(-1, 0xff),
  history: hexBytes(HISTORY),
});
export const checkPostCodeState: Check = (v, at) => {
  record(v, at);
  const { count, history } = v as PostCodeState;
  if (history.length / 2 !== Math.min(count, HISTORY))
    throw new SchemaError(`${at}.history`, `expected ${Math.min(count, HISTORY)} codes (the count's last ${HISTORY})`);
};

export function savePostCodeState(s: SharedState<PostCodeField>): PostCodeState {
  return {
    version: 1,
    count: s.u32('count'),
    last: s.get('last'),
    history: toHex(Uint8Array.from(PostCode.history(s))),
  };
}

/** Checks `state` (SnapshotError VIREO_ERR_SNAPSHOT_CORRUPT with the field's path) and puts it in place. */
export function restorePostCodeState(s: SharedState<PostCodeField>, state: unknown): void {
  checkRecord<PostCodeState>(checkPostCodeState, state, 'post-code');
  s.set('count', state.count | 0);
  s.set('last', state.last);
  s.u8.fill(0, HISTORY_OFFSET, HISTORY_OFFSET + HISTORY);
  // Code number i (0-based) sits at i % 64, where PostCode.write put it.
  const h = fromHex(state.history);
  h.forEach((code, j) => {
    s.u8[HISTORY_OFFSET + ((state.count - h.length + j) % HISTORY)] = code;
  });
}
