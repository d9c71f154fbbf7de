/**
 * Mutations of JSON documents for the fuzz targets that parse them (API bodies, the config file,
 * snapshot state bodies): an edit replaces, drops or adds a value at any place in the document, or
 * wraps the whole; a text edit cuts the serialised text short or changes one character of it.
 */
import fc from 'fast-check';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** One edit of a document: at a path chosen by `pick`, replace, drop or add. */
export interface Edit {
  pick: number;
  op: 'replace' | 'drop' | 'add' | 'wrap';
  value: Json;
  key: string;
}
export const editArb = (values: fc.Arbitrary<Json>): fc.Arbitrary<Edit> =>
  fc.record({
    pick: fc.nat(),
    op: fc.constantFrom<Edit['op']>('replace', 'replace', 'replace', 'drop', 'add', 'wrap'),
    value: values,
    key: fc.oneof(
      fc.constantFrom('vireo_unknown', '__proto__', 'constructor', 'drive_id', ''),
      fc.string({ maxLength: 6 }),
    ),
  });

/** Every container in a document, with its keys: the places an edit can land. */
export function places(doc: Json, out: { parent: Json[] | { [k: string]: Json }; key: string | number }[] = []) {
  if (doc !== null && typeof doc === 'object') {
    const entries: [string | number, Json][] = Array.isArray(doc) ? doc.map((v, i) => [i, v]) : Object.entries(doc);
    for (const [k, v] of entries) {
      out.push({ parent: doc, key: k });
      places(v, out);
    }
  }
  return out;
}

export function applyEdits(base: Json, edits: readonly Edit[]): Json {
  let doc = structuredClone(base) as Json;
  for (const e of edits) {
    const ps = places(doc);
    // A copy: the hostile constants are shared between cases and must not be edited in place.
    const value = structuredClone(e.value);
    if (ps.length === 0 || e.op === 'wrap') {
      // The whole document replaced or wrapped: an array, a scalar, nesting.
      doc = e.op === 'wrap' ? [doc] : value;
      continue;
    }
    const p = ps[e.pick % ps.length] as (typeof ps)[number];
    const parent = p.parent as Record<string | number, Json>;
    if (e.op === 'replace') parent[p.key] = value;
    else if (e.op === 'drop') {
      if (Array.isArray(p.parent)) p.parent.splice(p.key as number, 1);
      else delete parent[p.key];
    } else if (!Array.isArray(p.parent))
      // defineProperty, so that a key of "__proto__" is a field of the document as JSON.parse would make it.
      Object.defineProperty(parent, e.key, { value, enumerable: true, writable: true, configurable: true });
  }
  return doc;
}

/** The JSON text: usually as serialised, sometimes cut short or with one character changed. */
export interface TextEdit {
  cut: number | null;
  at: number | null;
  ch: string;
}
export const textEditArb: fc.Arbitrary<TextEdit> = fc.record({
  cut: fc.oneof({ weight: 8, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat() }),
  at: fc.oneof({ weight: 8, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat() }),
  ch: fc.constantFrom('"', '{', '}', '[', ',', ':', '\\', '\u0000', '9', 'e', '\ud800'),
});
export function bend(text: string, t: TextEdit): string {
  let s = text;
  if (t.at !== null && s.length > 0) {
    const i = t.at % s.length;
    s = s.slice(0, i) + t.ch + s.slice(i + 1);
  }
  if (t.cut !== null) s = s.slice(0, t.cut % (s.length + 1));
  return s;
}
