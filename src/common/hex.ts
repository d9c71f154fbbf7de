/** Bytes as lowercase hex and back: how state records carry byte strings (readable, and JSON-safe). */
export const toHex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
/** The caller checked `s` (schema.ts hexBytes): even length, hex digits only. */
export const fromHex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
