/**
 * The Firecracker-compatible API server: HTTP/1.1 on a Unix socket, one request at a time against the
 * controller (as Firecracker's single API thread does), bodies checked against the spec before any
 * handler sees them. Payloads above the limit (51200 bytes, Firecracker's default) are refused before
 * they are read: by Content-Length, or by counting a body sent without one; the connection is then
 * closed, as Firecracker's server drops it.
 */
import { existsSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { ConfigError } from '../common/errors.js';
import type { VmController } from './controller.js';
import { ApiError, badRequest, checkId, deserializeError, invalidPathMethod, payloadTooLarge } from './errors.js';
import type { ApiMethod } from './metrics.js';
import { allRoutes } from './resources/index.js';
import type { HttpMethod, Route, RouteResult } from './routes.js';
import { specValidator } from './spec.js';

/** sun_path holds 108 bytes including the terminating NUL (as os/socket.ts, not imported: the API loads no FFI). */
export const UNIX_PATH_MAX = 107;

/** Firecracker's HTTP_MAX_PAYLOAD_SIZE. */
export const HTTP_MAX_PAYLOAD_SIZE = 51200;

export interface ApiServerOptions {
  /** Where to listen (Firecracker's --api-sock). */
  socketPath?: string;
  /** Largest request body accepted, in bytes (Firecracker's --http-api-max-payload-size). */
  payloadLimit?: number;
}

/** A response before it is written: status, headers, and the body as text. */
export interface ApiResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

interface CompiledRoute {
  route: Route;
  segments: string[];
}

const segmentsOf = (path: string): string[] => path.replace(/^\//, '').split('/');

/** Percent-decoding that leaves a malformed escape as it is (the id check then refuses it). */
function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** Matches `/drives/x` against `/drives/{drive_id}`; a missing or empty last id matches as '' (then refused). */
function match(r: CompiledRoute, segs: string[]): Record<string, string> | undefined {
  const t = r.segments;
  if (segs.length !== t.length && !(segs.length === t.length - 1 && /^\{.*\}$/.test(t[t.length - 1] ?? ''))) return;
  const params: Record<string, string> = {};
  for (let i = 0; i < t.length; i++) {
    const want = t[i] as string;
    const got = segs[i] ?? '';
    if (/^\{.*\}$/.test(want)) params[want.slice(1, -1)] = safeDecode(got);
    else if (want !== got) return;
  }
  return params;
}

function jsonResponse(status: number, value: unknown, headers: Record<string, string> = {}): ApiResponse {
  return { status, headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(value) };
}

export const faultResponse = (e: ApiError): ApiResponse =>
  jsonResponse(e.status, { fault_message: e.message }, e.headers);

export class ApiServer {
  private server: Server | undefined;
  private readonly routes: CompiledRoute[];
  private chain: Promise<unknown> = Promise.resolve();
  readonly payloadLimit: number;
  private answered: (() => void) | undefined;
  /** Resolves once the first response over the socket has been written. */
  readonly firstAnswer = new Promise<void>((resolve) => {
    this.answered = resolve;
  });

  constructor(
    readonly ctl: VmController,
    readonly options: ApiServerOptions = {},
  ) {
    this.routes = allRoutes().map((route) => ({ route, segments: segmentsOf(route.path) }));
    this.payloadLimit = options.payloadLimit ?? HTTP_MAX_PAYLOAD_SIZE;
  }

  /** Binds the socket. Like Firecracker, refuses a path that already exists. */
  async listen(): Promise<void> {
    const path = this.options.socketPath;
    if (!path) throw new ConfigError('the API server needs a socket path');
    // Node's bind would cut a longer path to what sun_path holds and listen somewhere else.
    const len = Buffer.byteLength(path);
    if (len > UNIX_PATH_MAX || path.includes('\0'))
      throw new ConfigError(
        `cannot bind the API socket at ${path}: a Unix socket path holds at most ${UNIX_PATH_MAX} bytes without NUL (this one: ${len}); choose a shorter one`,
      );
    if (existsSync(path))
      throw new ConfigError(`cannot bind the API socket at ${path}: the path exists; remove it or choose another`);
    const server = createServer((req, res) => this.onRequest(req, res));
    // `Expect: 100-continue` (curl sends it for bodies over 1 KiB): refuse an oversized body before the
    // client sends it, else invite it.
    server.on('checkContinue', (req, res) => {
      if (Number(req.headers['content-length'] ?? 0) <= this.payloadLimit) res.writeContinue();
      this.onRequest(req, res);
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(new ConfigError(`cannot bind the API socket at ${path}: ${e.code ?? e.message}`)),
      );
      server.listen(path, () => resolve());
    });
    this.ctl.logger.info('api_server', `API server listening on ${path}`);
  }

  /** Stops listening (the socket file is removed) and drops open connections. */
  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const limit = this.payloadLimit;
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      this.refuseOversized(req, res, Number(declared));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (chunk: Buffer) => {
      if (refused) return;
      size += chunk.length;
      if (size > limit) {
        refused = true;
        this.refuseOversized(req, res, undefined);
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (refused) return;
      const body = Buffer.concat(chunks);
      void this.dispatch(req.method ?? 'GET', req.url ?? '/', body).then((r) => this.send(res, r));
    });
  }

  /** 400 with Firecracker's message, then the connection is closed without reading the body. */
  private refuseOversized(req: IncomingMessage, res: ServerResponse, size: number | undefined): void {
    req.pause();
    this.ctl.metrics.countPayloadTooLarge();
    this.ctl.logger.warn('api_server', 'request payload too large', { size, limit: this.payloadLimit });
    res.once('finish', () => req.socket.destroy());
    this.send(res, faultResponse(payloadTooLarge(size, this.payloadLimit)));
  }

  private send(res: ServerResponse, r: ApiResponse): void {
    if (res.headersSent) return;
    const headers: Record<string, string | number> = { Server: 'vireo (Firecracker API)', ...r.headers };
    if (r.status !== 204) headers['Content-Length'] = Buffer.byteLength(r.body);
    res.writeHead(r.status, headers);
    res.end(r.status === 204 ? undefined : r.body, this.answered);
    this.answered = undefined;
  }

  /**
   * Compiles the body check of every route ahead of its first request: the first compile loads ajv
   * (tens of ms), each one after takes a few. One per turn of the event loop, so that a request
   * arriving meanwhile is served between them.
   */
  async prewarm(): Promise<void> {
    const seen = new Set<string>();
    for (const { route } of this.routes) {
      if (route.body === undefined) continue;
      const key = `${route.body}${route.partial ? '?partial' : ''}`;
      if (seen.has(key)) continue;
      seen.add(key);
      await new Promise<void>((r) => setImmediate(r));
      specValidator().prepare(route.body, { partial: route.partial ?? false });
    }
  }

  /**
   * Serves one request (also without HTTP: tests and --config-file use this). Requests run one after
   * another, never interleaved, so each sees the state the previous one left.
   */
  dispatch(method: string, url: string, body: Buffer | string = ''): Promise<ApiResponse> {
    const run = (): Promise<ApiResponse> =>
      this.serve(method, url, typeof body === 'string' ? Buffer.from(body) : body);
    const next = this.chain.then(run, run);
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async serve(method: string, url: string, raw: Buffer): Promise<ApiResponse> {
    const path = url.split('?')[0] ?? '/';
    const segs = segmentsOf(path);
    let route: Route | undefined;
    let params: Record<string, string> = {};
    let pathKnown = false;
    for (const r of this.routes) {
      const p = match(r, segs);
      if (!p) continue;
      pathKnown = true;
      if (r.route.method === method) {
        route = r.route;
        params = p;
        break;
      }
    }
    const m = method.toLowerCase();
    const countAs: ApiMethod = m === 'put' || m === 'patch' ? m : 'get';
    let response: ApiResponse;
    try {
      if (!route) throw invalidPathMethod(method, path);
      const result = await this.run(route, method as HttpMethod, params, raw);
      response =
        result.contentType !== undefined
          ? { status: result.status, headers: { 'Content-Type': result.contentType }, body: String(result.body) }
          : result.status === 204
            ? { status: 204, headers: result.headers ?? {}, body: '' }
            : jsonResponse(result.status, result.body, result.headers);
    } catch (e) {
      const err =
        e instanceof ApiError
          ? e
          : new ApiError(500, 'VIREO_ERR_API_BAD_REQUEST', `Internal error: ${(e as Error).message}`);
      if (!(e instanceof ApiError)) this.ctl.logger.error('api_server', 'request failed', { error: String(e) });
      response = faultResponse(err);
    }
    this.ctl.metrics.countRequest(
      countAs,
      route?.metric ?? (pathKnown ? 'bad_method' : 'bad_path'),
      response.status >= 400,
    );
    const level = response.status >= 400 ? 'warn' : 'info';
    this.ctl.logger.log(level, 'api_server::request', `${method} ${path} -> ${response.status}`, {
      ...(response.status >= 400 ? { fault_message: response.body } : {}),
    });
    return response;
  }

  private async run(
    route: Route,
    method: HttpMethod,
    params: Record<string, string>,
    raw: Buffer,
  ): Promise<RouteResult> {
    if (method === 'GET' && raw.length > 0) throw badRequest('GET request cannot have a body.');
    for (const id of Object.values(params)) checkId(id);
    let body: unknown;
    if (route.body !== undefined) {
      if (raw.length === 0) throw badRequest(`Empty ${method} request.`);
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch (e) {
        throw deserializeError((e as Error).message);
      }
      if (route.normalize) body = route.normalize(body);
      const problem = specValidator().check(route.body, body, { partial: route.partial ?? false });
      if (problem) throw deserializeError(problem);
    }
    return route.handle({ ctl: this.ctl, params, body });
  }
}
