/**
 * Firecracker's API description (spec/firecracker-api.yaml, vendored from Firecracker) and request
 * validation against its definitions.
 *
 * Request bodies are read by serde.ts (serde_json's behaviour and messages); this validator checks
 * --config-file documents and, in tests, response bodies.
 *
 * Firecracker deserializes every request body with serde and `deny_unknown_fields`, so an unknown
 * field is an error although the Swagger file never says `additionalProperties: false`. The
 * definitions are therefore compiled stricter than written: every object schema that does not say
 * otherwise rejects unknown fields, and every integer is unsigned (all of Firecracker's are).
 * Errors read like serde's ("missing field `x`", "unknown field `x`, expected one of ...") and name
 * the field.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Ajv, ErrorObject, ValidateFunction } from 'ajv';
import { cacheRoot } from '../common/paths.js';

/**
 * yaml and ajv load on first use, not with this module: together they take ~100 ms to load, and the
 * API socket should serve before that (the YAML is parsed only when the JSON cache misses; the
 * validator is built for the first request with a body).
 */
const requireLazy = createRequire(import.meta.url);
const yamlParse = (text: string): unknown => (requireLazy('yaml') as typeof import('yaml')).parse(text);
const newAjv = (opts: ConstructorParameters<typeof Ajv>[0]): Ajv =>
  new (requireLazy('ajv') as typeof import('ajv')).Ajv(opts);

export type JsonObject = { [key: string]: unknown };

export interface SwaggerParameter {
  name: string;
  in: 'body' | 'path' | 'query';
  required?: boolean;
  type?: string;
  schema?: JsonObject;
}

export interface SwaggerResponse {
  description: string;
  schema?: JsonObject;
}

export interface SwaggerOperation {
  operationId: string;
  summary?: string;
  parameters?: SwaggerParameter[];
  responses: Record<string, SwaggerResponse>;
}

export interface SwaggerSpec {
  swagger: string;
  info: { version: string; title: string };
  paths: Record<string, Record<string, SwaggerOperation>>;
  definitions: Record<string, JsonObject>;
}

export const SPEC_RELATIVE_PATH = join('spec', 'firecracker-api.yaml');

/** Finds spec/firecracker-api.yaml above this module (src/api in a checkout, dist/src/api when built). */
export function findSpecPath(): string {
  const override = process.env.VIREO_API_SPEC;
  if (override) return override;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, SPEC_RELATIVE_PATH);
    if (existsSync(candidate)) return candidate;
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find ${SPEC_RELATIVE_PATH} above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

let cachedSpec: SwaggerSpec | undefined;

/**
 * The parsed API description (read once per process). Parsing the YAML takes a few hundred ms on a slow
 * machine, so the result is kept as JSON in vireo's cache, keyed by the file's content.
 */
export function loadSpec(): SwaggerSpec {
  if (cachedSpec) return cachedSpec;
  const text = readFileSync(findSpecPath(), 'utf8');
  const hash = createHash('sha256').update(text).digest('hex').slice(0, 16);
  let cached: string | undefined;
  try {
    // No home (a jailed VMM: no HOME, no passwd entry) means no cache, not a failure.
    cached = join(cacheRoot(), `firecracker-api-${hash}.json`);
    cachedSpec = JSON.parse(readFileSync(cached, 'utf8')) as SwaggerSpec;
    return cachedSpec;
  } catch {
    // not cached yet (or unreadable): parse it
  }
  cachedSpec = yamlParse(text) as SwaggerSpec;
  if (cached === undefined) return cachedSpec;
  try {
    mkdirSync(dirname(cached), { recursive: true });
    const tmp = `${cached}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(cachedSpec));
    renameSync(tmp, cached);
  } catch {
    // a cache is an optimisation: a read-only home changes nothing
  }
  return cachedSpec;
}

/** The Firecracker API version vireo implements (the spec's info.version). */
export function apiVersion(): string {
  return loadSpec().info.version;
}

const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Upper bounds of integers whose Rust type is narrower than u64 (serde rejects larger values). */
const INTEGER_MAXIMUM: Record<string, number> = {
  'Balloon.amount_mib': 0xffff_ffff,
  'BalloonUpdate.amount_mib': 0xffff_ffff,
  'Balloon.stats_polling_interval_s': 0xffff,
  'BalloonStatsUpdate.stats_polling_interval_s': 0xffff,
  'Vsock.guest_cid': 0xffff_ffff,
};

/**
 * Rewrites a definition the way Firecracker's deserializer behaves: unknown fields rejected, integers
 * unsigned, references absolute (so single definitions compile on their own).
 */
function strictify(node: unknown, where: string): unknown {
  if (Array.isArray(node)) return node.map((n) => strictify(n, where));
  if (!isObject(node)) return node;
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === '$ref' && typeof v === 'string') out[k] = `fc${v}`;
    else if (k === 'properties' && isObject(v))
      out[k] = Object.fromEntries(Object.entries(v).map(([p, s]) => [p, strictify(s, `${where}.${p}`)]));
    else out[k] = strictify(v, where);
  }
  if ((out.type === 'object' || out.properties !== undefined) && out.additionalProperties === undefined)
    out.additionalProperties = false;
  if (out.type === 'integer') {
    out.minimum ??= 0;
    const max = INTEGER_MAXIMUM[where];
    if (max !== undefined) out.maximum ??= max;
  }
  return out;
}

/** JSON value described the way serde does in its messages. */
function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  if (typeof v === 'number') return Number.isInteger(v) ? `integer \`${v}\`` : `floating point \`${v}\``;
  if (typeof v === 'boolean') return `boolean \`${v}\``;
  if (Array.isArray(v)) return 'sequence';
  return 'map';
}

/** `/drives/0/path_on_host` → `drives[0].path_on_host`. */
function fieldName(instancePath: string, extra?: string): string {
  const parts = instancePath.split('/').slice(1);
  if (extra !== undefined) parts.push(extra);
  return parts.reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '');
}

const quoteList = (xs: readonly unknown[]): string => xs.map((x) => `\`${String(x)}\``).join(', ');

/** One ajv error as a serde-like sentence that names the field. */
export function describeError(e: ErrorObject, definition: string): string {
  const at = fieldName(e.instancePath);
  const where = at ? ` for \`${at}\`` : '';
  switch (e.keyword) {
    case 'required': {
      const missing = (e.params as { missingProperty: string }).missingProperty;
      return `missing field \`${fieldName(e.instancePath, missing)}\``;
    }
    case 'additionalProperties': {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      const props = isObject(e.parentSchema) && isObject(e.parentSchema.properties) ? e.parentSchema.properties : {};
      const known = Object.keys(props);
      return `unknown field \`${fieldName(e.instancePath, extra)}\`, ${known.length ? `expected one of ${quoteList(known)}` : 'there are no fields'}`;
    }
    case 'type': {
      const expected = (e.params as { type: string }).type;
      const what = at ? `\`${at}\`` : `the body (${definition})`;
      return `invalid type for ${what}: ${describeValue(e.data)}, expected ${expected === 'object' ? 'an object' : expected === 'integer' ? 'an integer' : `a ${expected}`}`;
    }
    case 'enum': {
      const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
      return `unknown variant \`${String(e.data)}\`${where}, expected one of ${quoteList(allowed)}`;
    }
    case 'minimum':
    case 'maximum': {
      const { comparison, limit } = e.params as { comparison: string; limit: number };
      return `invalid value${where}: ${describeValue(e.data)}, expected an integer ${comparison} ${limit}`;
    }
    default:
      return `invalid value${where}: ${e.message ?? 'does not match the API description'}`;
  }
}

/** Validates JSON values against the spec's definitions (compiled on first use). */
export class SpecValidator {
  private readonly ajv: Ajv;
  private readonly compiled = new Map<string, ValidateFunction>();
  private readonly definitions: Record<string, JsonObject>;

  constructor(spec: SwaggerSpec = loadSpec()) {
    this.definitions = Object.fromEntries(
      Object.entries(spec.definitions).map(([name, def]) => [name, strictify(def, name) as JsonObject]),
    );
    // Swagger 2.0 adds keywords JSON Schema lacks (example, int64 formats): not strict about those.
    this.ajv = newAjv({ strict: false, validateFormats: false, verbose: true, allErrors: false });
    this.ajv.addSchema({ $id: 'fc', definitions: this.definitions });
  }

  /** The definition as compiled (strictified), for tests that build bodies from it. */
  definition(name: string): JsonObject {
    const d = this.definitions[name];
    if (!d) throw new Error(`the API description has no definition ${name}`);
    return d;
  }

  private compile(name: string, partial: boolean): ValidateFunction {
    const key = partial ? `${name}?partial` : name;
    let fn = this.compiled.get(key);
    if (!fn) {
      this.definition(name);
      const schema = partial
        ? { ...this.definitions[name], required: [] as string[] }
        : { $ref: `fc#/definitions/${name}` };
      fn = this.ajv.compile(schema);
      this.compiled.set(key, fn);
    }
    return fn;
  }

  /**
   * Compiles the check of definition `name` ahead of its first use and runs it once (V8 compiles the
   * generated function on its first call), so the first request with such a body does not pay for it.
   */
  prepare(name: string, opts: { partial?: boolean } = {}): void {
    this.compile(name, opts.partial ?? false)({});
  }

  /**
   * Checks `value` against definition `name`; returns a serde-like description of the first problem,
   * or undefined when it conforms. `partial` drops the top-level `required` (PATCH bodies).
   */
  check(name: string, value: unknown, opts: { partial?: boolean } = {}): string | undefined {
    const fn = this.compile(name, opts.partial ?? false);
    if (fn(value)) return undefined;
    const err = fn.errors?.[0];
    return err ? describeError(err, name) : `the body does not match ${name}`;
  }

  /** Checks a value against an arbitrary (response) schema from the spec, with the same strictness. */
  checkSchema(schema: JsonObject, value: unknown): string | undefined {
    const fn = this.ajv.compile(strictify(schema, '') as JsonObject);
    if (fn(value)) return undefined;
    const err = fn.errors?.[0];
    return err ? describeError(err, 'response') : 'the value does not match the schema';
  }
}

let sharedValidator: SpecValidator | undefined;

/** The process-wide validator (its compiled schemas are cached). */
export function specValidator(): SpecValidator {
  sharedValidator ??= new SpecValidator();
  return sharedValidator;
}
