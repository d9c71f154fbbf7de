/**
 * The control-plane subset E2B's SDK (2.51) calls, with the shapes it reads (e2b-dev/infra
 * spec/openapi.yml; the SDK's bundled client is the truth):
 *
 *   POST   /v2/sandboxes (and v1 POST /sandboxes)  create          → 201 Sandbox
 *   GET    /sandboxes/{id}                          getInfo         → 200 SandboxDetail
 *   GET    /v2/sandboxes (and v1 GET /sandboxes)    list            → 200 ListedSandbox[] + X-Next-Token
 *   DELETE /sandboxes/{id}                          kill            → 204
 *   POST   /sandboxes/{id}/timeout                  setTimeout      → 204
 *   POST   /sandboxes/{id}/pause                    pause           → 204, 409 when already paused
 *   POST   /v2/sandboxes/{id}/connect               connect         → 200 running / 201 resumed: Sandbox
 *   POST   /sandboxes/{id}/resume                   (deprecated)    → 201 Sandbox
 *
 * Every request needs the service's API key in X-API-KEY (401 otherwise); errors are E2B's
 * `{ code, message }`; an unknown sandbox is 404.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { HttpError } from './errors.js';
import { send } from './proxy.js';
import type { Registry, SandboxRecord } from './registry.js';
import type { Launcher, TemplateConfig } from './templates.js';

/**
 * The envd version the SDK is told: the newest whose every feature vireo's agent has. 0.6.2 adds
 * file metadata (X-Metadata-* headers), which the agent does not keep, so the SDK refuses it with a
 * TemplateError instead of it being dropped silently.
 */
export const SERVE_ENVD_VERSION = '0.6.1';
export const SERVE_CLIENT_ID = 'vireo';
/** E2B's longest lifetime (Pro), in seconds. */
export const MAX_TIMEOUT_S = 86_400;
const DEFAULT_TIMEOUT_V2_S = 300;
const DEFAULT_TIMEOUT_V1_S = 15;
const MAX_BODY = 1024 * 1024;
const MAX_METADATA = 64;
const MAX_ENVS = 1024;
const LIST_DEFAULT_LIMIT = 100;
const LIST_MAX_LIMIT = 1000;

export interface ControlContext {
  registry: Registry;
  templates: ReadonlyMap<string, TemplateConfig>;
  launcher: Launcher;
  maxSandboxes: number;
  /** Sandboxes being made now (they count against maxSandboxes). */
  creating: { n: number };
  log: (line: string) => void;
}

type Handler = (
  ctx: ControlContext,
  req: IncomingMessage,
  res: ServerResponse,
  m: RegExpExecArray,
  url: URL,
) => Promise<void>;

const ID = '([A-Za-z0-9_-]{1,64})';
const ROUTES: { method: string; path: RegExp; handler: Handler }[] = [
  { method: 'POST', path: /^\/v2\/sandboxes$/, handler: (c, q, s) => create(c, q, s, DEFAULT_TIMEOUT_V2_S) },
  { method: 'POST', path: /^\/sandboxes$/, handler: (c, q, s) => create(c, q, s, DEFAULT_TIMEOUT_V1_S) },
  { method: 'GET', path: /^\/v2\/sandboxes$/, handler: (c, _q, s, _m, u) => list(c, s, u, true) },
  { method: 'GET', path: /^\/sandboxes$/, handler: (c, _q, s, _m, u) => list(c, s, u, false) },
  { method: 'GET', path: new RegExp(`^/sandboxes/${ID}$`), handler: async (c, _q, s, m) => getInfo(c, s, m[1]!) },
  { method: 'DELETE', path: new RegExp(`^/sandboxes/${ID}$`), handler: (c, _q, s, m) => kill(c, s, m[1]!) },
  {
    method: 'POST',
    path: new RegExp(`^/sandboxes/${ID}/timeout$`),
    handler: (c, q, s, m) => setTimeoutOf(c, q, s, m[1]!),
  },
  { method: 'POST', path: new RegExp(`^/sandboxes/${ID}/pause$`), handler: (c, _q, s, m) => pause(c, s, m[1]!) },
  {
    method: 'POST',
    path: new RegExp(`^/v2/sandboxes/${ID}/connect$`),
    handler: (c, q, s, m) => connect(c, q, s, m[1]!, false),
  },
  {
    method: 'POST',
    path: new RegExp(`^/sandboxes/${ID}/connect$`),
    handler: (c, q, s, m) => connect(c, q, s, m[1]!, false),
  },
  {
    method: 'POST',
    path: new RegExp(`^/sandboxes/${ID}/resume$`),
    handler: (c, q, s, m) => connect(c, q, s, m[1]!, true),
  },
];

/** Answers a control-plane request (the API key was checked by the caller). */
export async function control(ctx: ControlContext, req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
  const routes = ROUTES.filter((r) => r.path.test(url.pathname));
  if (routes.length === 0) throw new HttpError(404, `${url.pathname}: no such endpoint in vireo serve`);
  const route = routes.find((r) => r.method === req.method);
  if (!route)
    throw new HttpError(405, `${req.method} ${url.pathname}: use ${routes.map((r) => r.method).join(' or ')}`);
  await route.handler(ctx, req, res, route.path.exec(url.pathname)!, url);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_BODY) throw new HttpError(413, `the request body is over ${MAX_BODY} bytes`);
    chunks.push(c as Buffer);
  }
  if (n === 0) return {};
  let v: unknown;
  try {
    v = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new HttpError(400, 'the request body is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new HttpError(400, 'the request body is not a JSON object');
  return v as Record<string, unknown>;
}

function stringMap(v: unknown, what: string, max: number): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v)) throw new HttpError(400, `${what} must be an object of strings`);
  const out: Record<string, string> = {};
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > max) throw new HttpError(400, `${what}: at most ${max} entries`);
  for (const [k, x] of entries) {
    if (typeof x !== 'string' || k.length === 0 || k.length > 4096 || x.length > 128 * 1024)
      throw new HttpError(400, `${what}.${k.slice(0, 60)} must be a string`);
    out[k] = x;
  }
  return out;
}

function timeoutS(v: unknown, fallback: number | undefined): number | undefined {
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_TIMEOUT_S)
    throw new HttpError(400, `timeout ${JSON.stringify(v)}: give whole seconds from 0 to ${MAX_TIMEOUT_S}`);
  return v;
}

function need(ctx: ControlContext, id: string): SandboxRecord {
  const rec = ctx.registry.get(id);
  if (!rec) throw new HttpError(404, `sandbox ${id} not found`);
  return rec;
}

/** E2B's Sandbox: what create and connect answer. */
export function sandboxBody(rec: SandboxRecord) {
  return {
    templateID: rec.templateID,
    sandboxID: rec.sandboxId,
    alias: rec.templateID,
    clientID: SERVE_CLIENT_ID,
    envdVersion: SERVE_ENVD_VERSION,
    envdAccessToken: rec.envdAccessToken,
    trafficAccessToken: rec.trafficAccessToken ?? null,
    domain: null,
  };
}

/** E2B's ListedSandbox. */
export function listedBody(rec: SandboxRecord) {
  return {
    templateID: rec.templateID,
    alias: rec.templateID,
    sandboxID: rec.sandboxId,
    clientID: SERVE_CLIENT_ID,
    startedAt: rec.startedAt.toISOString(),
    endAt: rec.endAt.toISOString(),
    cpuCount: rec.launched.cpuCount,
    memoryMB: rec.launched.memoryMB,
    diskSizeMB: rec.launched.diskSizeMB,
    metadata: { ...rec.metadata },
    state: rec.state,
    envdVersion: SERVE_ENVD_VERSION,
    volumeMounts: [],
  };
}

/** E2B's SandboxDetail (getInfo). */
export function detailBody(rec: SandboxRecord) {
  return { ...listedBody(rec), envdAccessToken: rec.envdAccessToken, domain: null };
}

const UNSUPPORTED = ['mcp', 'volumeMounts', 'autoResume'] as const;

async function create(ctx: ControlContext, req: IncomingMessage, res: ServerResponse, defaultTimeout: number) {
  const body = await readJson(req);
  const templateID = body.templateID;
  if (typeof templateID !== 'string' || templateID === '')
    throw new HttpError(400, 'templateID: give the name of a template');
  for (const k of UNSUPPORTED)
    if (body[k] !== undefined && body[k] !== null) throw new HttpError(400, `${k}: vireo serve does not support it`);
  if (body.autoPause === true) throw new HttpError(400, 'autoPause: vireo serve kills sandboxes at their timeout');
  const metadata = stringMap(body.metadata, 'metadata', MAX_METADATA);
  const envs = stringMap(body.envVars, 'envVars', MAX_ENVS);
  const timeout = timeoutS(body.timeout, defaultTimeout) ?? defaultTimeout;
  const network = body.network as { allowPublicTraffic?: unknown } | undefined;
  const template = ctx.templates.get(templateID);
  if (!template)
    throw new HttpError(
      404,
      `template ${JSON.stringify(templateID)} is not configured: start vireo serve with --template ${templateID}=KERNEL,INITRD[,ROOTFS] (it has ${[...ctx.templates.keys()].join(', ') || 'none'})`,
    );
  if (ctx.registry.size + ctx.creating.n >= ctx.maxSandboxes)
    throw new HttpError(
      429,
      `vireo serve already runs ${ctx.maxSandboxes} sandboxes (--max-sandboxes): kill one first`,
    );
  ctx.creating.n++;
  let launched: Awaited<ReturnType<Launcher>>;
  try {
    launched = await ctx.launcher({ template, envs, metadata });
  } catch (e) {
    throw new HttpError(500, `creating a sandbox from template ${templateID} failed: ${(e as Error).message}`, {
      cause: e,
    });
  } finally {
    ctx.creating.n--;
  }
  const token = launched.sandbox.agent.accessToken;
  if (token === undefined) {
    await launched.kill().catch(() => undefined);
    throw new HttpError(500, 'the new sandbox has no envd access token');
  }
  const now = Date.now();
  const rec: SandboxRecord = {
    sandboxId: launched.sandbox.sandboxId,
    templateID,
    startedAt: new Date(now),
    endAt: new Date(now + timeout * 1000),
    state: 'running',
    metadata,
    envs,
    envdAccessToken: token,
    trafficAccessToken: network?.allowPublicTraffic === false ? randomBytes(24).toString('base64url') : undefined,
    launched,
    endpoint: launched.sandbox.agent.endpoint,
    remainingMs: timeout * 1000,
  };
  ctx.registry.add(rec);
  ctx.log(`sandbox ${rec.sandboxId} created from ${templateID} (timeout ${timeout} s)`);
  if (req.socket.destroyed) ctx.log(`sandbox ${rec.sandboxId}: its creator went away; it lives until its timeout`);
  send(res, 201, sandboxBody(rec));
}

function getInfo(ctx: ControlContext, res: ServerResponse, id: string): void {
  send(res, 200, detailBody(need(ctx, id)));
}

/**
 * `metadata=` is the SDK's `k=v&k2=v2` with each key and value encodeURIComponent'd (then the whole
 * query encoded once more by its client); `state` a comma list; `template` an id or alias.
 */
export function parseListQuery(url: URL) {
  const filter: Record<string, string> = {};
  const m = url.searchParams.get('metadata');
  if (m) {
    for (const [k, v] of new URLSearchParams(m)) {
      try {
        filter[decodeURIComponent(k)] = decodeURIComponent(v);
      } catch {
        throw new HttpError(400, 'metadata: each key and value must be URL-encoded');
      }
    }
  }
  const states = url.searchParams
    .getAll('state')
    .flatMap((s) => s.split(','))
    .filter((s) => s !== '');
  for (const s of states)
    if (s !== 'running' && s !== 'paused')
      throw new HttpError(400, `state ${JSON.stringify(s)}: give running or paused`);
  const order = url.searchParams.get('order') ?? 'desc';
  if (order !== 'asc' && order !== 'desc') throw new HttpError(400, `order ${JSON.stringify(order)}: give asc or desc`);
  const limitRaw = url.searchParams.get('limit');
  const limit = limitRaw === null ? LIST_DEFAULT_LIMIT : Number(limitRaw);
  if (!Number.isInteger(limit) || limit < 1 || limit > LIST_MAX_LIMIT)
    throw new HttpError(400, `limit ${JSON.stringify(limitRaw)}: give 1 to ${LIST_MAX_LIMIT}`);
  const after = url.searchParams.get('startedAfter');
  const startedAfter = after ? Date.parse(after) : undefined;
  if (startedAfter !== undefined && Number.isNaN(startedAfter))
    throw new HttpError(400, `startedAfter ${JSON.stringify(after)}: give an RFC 3339 time`);
  const next = url.searchParams.get('nextToken');
  const offset = next ? Number.parseInt(Buffer.from(next, 'base64url').toString('latin1'), 10) : 0;
  if (!Number.isInteger(offset) || offset < 0) throw new HttpError(400, 'nextToken: not one this service gave');
  return {
    filter,
    states,
    order,
    limit,
    startedAfter,
    offset,
    template: url.searchParams.get('template') ?? undefined,
  };
}

function list(ctx: ControlContext, res: ServerResponse, url: URL, v2: boolean): Promise<void> {
  const q = parseListQuery(url);
  const states = q.states.length > 0 ? q.states : v2 ? ['running', 'paused'] : ['running'];
  const all = ctx.registry
    .all()
    .filter(
      (r) =>
        states.includes(r.state) &&
        (q.template === undefined || r.templateID === q.template) &&
        (q.startedAfter === undefined || r.startedAt.getTime() >= q.startedAfter) &&
        Object.entries(q.filter).every(([k, v]) => r.metadata[k] === v),
    )
    .sort((a, b) => (a.startedAt.getTime() - b.startedAt.getTime()) * (q.order === 'asc' ? 1 : -1));
  const page = v2 ? all.slice(q.offset, q.offset + q.limit) : all;
  const headers: Record<string, string> = {
    'X-Total-Running': String(ctx.registry.all().filter((r) => r.state === 'running').length),
  };
  if (v2 && q.offset + q.limit < all.length)
    headers['X-Next-Token'] = Buffer.from(String(q.offset + q.limit)).toString('base64url');
  send(res, 200, page.map(listedBody), headers);
  return Promise.resolve();
}

async function kill(ctx: ControlContext, res: ServerResponse, id: string): Promise<void> {
  need(ctx, id);
  await ctx.registry.kill(id);
  ctx.log(`sandbox ${id} killed`);
  send(res, 204, undefined);
}

async function setTimeoutOf(ctx: ControlContext, req: IncomingMessage, res: ServerResponse, id: string) {
  const body = await readJson(req);
  const rec = need(ctx, id);
  const t = timeoutS(body.timeout, undefined);
  if (t === undefined) throw new HttpError(400, 'timeout: give whole seconds');
  ctx.registry.setTimeout(rec, t * 1000);
  send(res, 204, undefined);
}

async function pause(ctx: ControlContext, res: ServerResponse, id: string): Promise<void> {
  const rec = need(ctx, id);
  if (rec.state === 'paused') throw new HttpError(409, `sandbox ${id} is already paused`);
  await rec.launched.pause();
  rec.state = 'paused';
  ctx.registry.pauseClock(rec);
  ctx.log(`sandbox ${id} paused`);
  send(res, 204, undefined);
}

/** connect: a running sandbox is answered (its end moved later if `timeout` says); a paused one resumed. */
async function connect(
  ctx: ControlContext,
  req: IncomingMessage,
  res: ServerResponse,
  id: string,
  resumeOnly: boolean,
) {
  const body = await readJson(req);
  const rec = need(ctx, id);
  const t = timeoutS(body.timeout, undefined);
  if (rec.state === 'paused') {
    await rec.launched.resume();
    rec.state = 'running';
    ctx.registry.resumeClock(rec, t === undefined ? undefined : t * 1000);
    ctx.log(`sandbox ${id} resumed`);
    send(res, 201, sandboxBody(rec));
    return;
  }
  if (resumeOnly) throw new HttpError(409, `sandbox ${id} is already running`);
  if (t !== undefined && Date.now() + t * 1000 > rec.endAt.getTime()) ctx.registry.setTimeout(rec, t * 1000);
  send(res, 200, sandboxBody(rec));
}
