/**
 * Port 0x80, the POST-code port: firmware and kernels write progress markers here.
 * Each write is recorded (count, last value, and a short history) in shared state.
 */
import type { BusDevice } from '../../bus/bus.js';
import { SharedState } from '../../common/shared-state.js';

export const POST_CODE_PORT = 0x80;
export const HISTORY = 64;
const FIELDS = ['count', 'last'] as const;
export type PostCodeField = (typeof FIELDS)[number];
export const HISTORY_OFFSET = SharedState.bytesOffset(FIELDS.length);

export function createPostCodeState(buffer?: SharedArrayBuffer): SharedState<PostCodeField> {
  const s = new SharedState(FIELDS, HISTORY, buffer);
  if (buffer === undefined) s.set('last', -1);
  return s;
}

export class PostCode implements BusDevice {
  constructor(
    readonly state: SharedState<PostCodeField>,
    private readonly onCode?: (code: number) => void,
  ) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }

  write(_offset: number, data: Uint8Array): void {
    const code = data[0] as number;
    // The count is an int32 slot that a guest can run past 2^31 (rep outsb moves a page per exit):
    // taken unsigned, the history slot stays in 0..63 and never lands on the lock or the fields.
    const n = this.state.add('count', 1) >>> 0;
    this.state.set('last', code);
    this.state.u8[HISTORY_OFFSET + (n % HISTORY)] = code;
    this.onCode?.(code);
  }

  /** The recorded codes, oldest first (at most the last 64). */
  static history(state: SharedState<PostCodeField>): number[] {
    const n = state.u32('count');
    const out: number[] = [];
    for (let i = Math.max(0, n - HISTORY); i < n; i++) out.push(state.u8[HISTORY_OFFSET + (i % HISTORY)] as number);
    return out;
  }
}
