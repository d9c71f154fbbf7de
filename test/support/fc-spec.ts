/**
 * Reading Firecracker's API description for tests: minimal valid bodies built from a definition,
 * invalid variants of them (missing field, wrong type, unknown field, bad enum), and the check of a
 * response against what the spec says the operation answers.
 */
import assert from 'node:assert/strict';
import { type JsonObject, loadSpec, type SpecValidator } from '../../src/api/spec.js';
import type { FcResponse } from './fc-client.js';

const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

function resolve(v: SpecValidator, schema: JsonObject): JsonObject {
  const ref = schema.$ref;
  return typeof ref === 'string' ? v.definition(ref.replace('fc#/definitions/', '')) : schema;
}

/** The smallest body the definition accepts: required fields only, first enum values, minimum numbers. */
export function minimalBody(v: SpecValidator, schema: JsonObject): unknown {
  const s = resolve(v, schema);
  if (Array.isArray(s.enum)) return s.enum[0];
  switch (s.type) {
    case 'integer':
    case 'number':
      return Math.max(typeof s.minimum === 'number' ? s.minimum : 0, 1);
    case 'boolean':
      return false;
    case 'string':
      return 'x';
    case 'array':
      return [];
    default: {
      const props = isObject(s.properties) ? s.properties : {};
      const required = Array.isArray(s.required) ? (s.required as string[]) : [];
      return Object.fromEntries(required.map((p) => [p, minimalBody(v, props[p] as JsonObject)]));
    }
  }
}

export interface InvalidVariant {
  what: string;
  body: unknown;
  /** Text the fault_message must contain (the field it names). */
  mentions: string;
}

/** Bodies that break the definition in each way the brief lists, each naming the field at fault. */
export function invalidVariants(v: SpecValidator, definition: string, valid: JsonObject): InvalidVariant[] {
  const def = v.definition(definition);
  const props = isObject(def.properties) ? def.properties : {};
  const required = Array.isArray(def.required) ? (def.required as string[]) : [];
  const out: InvalidVariant[] = [
    {
      what: 'unknown field',
      body: { ...valid, vireo_unknown_field: 1 },
      mentions: 'unknown field `vireo_unknown_field`',
    },
  ];
  const req = required[0];
  if (req !== undefined) {
    const body = { ...valid };
    delete body[req];
    out.push({ what: `missing required field ${req}`, body, mentions: `missing field \`${req}\`` });
  }
  const typed = Object.entries(props).find(([, s]) => {
    const r = resolve(v, s as JsonObject);
    return typeof r.type === 'string';
  });
  if (typed) {
    const [name, s] = typed;
    const r = resolve(v, s as JsonObject);
    const t = r.type;
    const wrong = t === 'string' ? 12345 : t === 'object' ? 'not-an-object' : 'not-a-number';
    // serde names the value, not the field: "invalid type: integer `12345`, expected a string"; an
    // enum's deserializer takes nothing but a string or a map ("expected value").
    const said =
      typeof wrong === 'number'
        ? Array.isArray(r.enum)
          ? 'expected value at line 1'
          : `invalid type: integer \`${wrong}\``
        : `invalid type: string "${wrong}"`;
    out.push({ what: `wrong type for ${name}`, body: { ...valid, [name]: wrong }, mentions: said });
  }
  const enumProp = Object.entries(props).find(([, s]) => Array.isArray(resolve(v, s as JsonObject).enum));
  if (enumProp) {
    const [name] = enumProp;
    out.push({
      what: `bad enum for ${name}`,
      body: { ...valid, [name]: 'NoSuchVariant' },
      mentions: 'unknown variant `NoSuchVariant`',
    });
  }
  return out;
}

/** The operations of the spec: [path, method]. */
export function specOperations(): [string, string][] {
  return Object.entries(loadSpec().paths).flatMap(([path, ops]) =>
    Object.keys(ops).map((m) => [path, m] as [string, string]),
  );
}

/** The definition an operation's body must match, if it takes one. */
export function bodyDefinition(path: string, method: string): string | undefined {
  const op = loadSpec().paths[path]?.[method];
  const ref = op?.parameters?.find((p) => p.in === 'body')?.schema?.$ref;
  return typeof ref === 'string' ? ref.replace('#/definitions/', '') : undefined;
}

/**
 * Checks a response against the operation's documented responses: the status is one the spec lists
 * (or `default`), a 200 body matches its schema, a 204 is empty, and an error body is exactly
 * `{"fault_message": "..."}`.
 */
export function checkAgainstSpec(v: SpecValidator, path: string, method: string, r: FcResponse): void {
  const op = loadSpec().paths[path]?.[method];
  assert.ok(op, `the spec has ${method.toUpperCase()} ${path}`);
  const documented = op.responses[String(r.status)] ?? (r.status >= 400 ? op.responses.default : undefined);
  assert.ok(
    documented,
    `${method.toUpperCase()} ${path} answered ${r.status}, which the spec does not list: ${r.text}`,
  );
  if (r.status === 204) assert.equal(r.text, '', `${method.toUpperCase()} ${path}: a 204 has no body`);
  if (documented.schema) {
    // Firecracker writes absent values as null (GET /vm/config: "balloon": null), which its own
    // description does not allow for: the shape is checked without them.
    const problem = v.checkSchema(documented.schema, withoutNulls(r.json));
    assert.equal(problem, undefined, `${method.toUpperCase()} ${path} ${r.status} body ${r.text}: ${problem}`);
  }
  if (r.status >= 400) {
    const fault = (r.json as { fault_message?: unknown } | undefined)?.fault_message;
    assert.equal(typeof fault, 'string', `error bodies carry a fault_message: ${r.text}`);
    assert.ok((fault as string).length > 0);
  }
}

/** A JSON value with every null member and element left out. */
function withoutNulls(v: unknown): unknown {
  if (Array.isArray(v)) return v.filter((x) => x !== null).map(withoutNulls);
  if (isObject(v))
    return Object.fromEntries(
      Object.entries(v)
        .filter(([, x]) => x !== null)
        .map(([k, x]) => [k, withoutNulls(x)]),
    );
  return v;
}
