/**
 * The Firecracker-compatible API server: HTTP/1.1 on a Unix socket, one request at a time against the
 * controller (as Firecracker's single API thread does), routed as Firecracker's parser routes
 * (resolveFirecracker), bodies read into their Rust types as serde_json reads them (serde.ts) before
 * any handler sees them, answers written with micro_http's status line and headers. Payloads above the limit (51200 bytes, Firecracker's default) are refused before
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
import { fromSlice, rustType, SerdeError } from './serde.js';

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

/** Firecracker's Server header (micro_http's default). */
export const SERVER_HEADER = 'Firecracker API';

/** What micro_http answers a request line it cannot parse (a method other than GET, PUT, PATCH). */
export const UNSUPPORTED_METHOD_BODY =
  '{ "error": "Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped." }';

/** Where Firecracker's router sends a request: a route template and its path parameters, or an error. */
export type Resolved = { template: string; params: Record<string, string> } | { error: ApiError };

const unrecognized = (method: string, token: string): ApiError =>
  badRequest(`Unrecognized ${method} request path \`${token}\`.`);

/**
 * Firecracker's routing (api_server/parsed_request.rs), step by step: leading slashes trimmed, the rest
 * split on '/' with one trailing empty piece dropped (so `/machine-config/` is `/machine-config`), the
 * first piece names the resource and further pieces are read only where the resource has them (extra
 * ones are ignored, as Firecracker ignores them). A body on a GET, or none on a PUT or PATCH, is refused
 * whatever the path; an unknown resource is named without its leading slash, as Firecracker names it.
 * The path is not percent-decoded (Firecracker does not decode it either).
 */
export function resolveFirecracker(method: string, path: string, hasBody: boolean): Resolved {
  const tokens = path.replace(/^\/+/, '').split('/');
  if (tokens[tokens.length - 1] === '') tokens.pop();
  const resource = tokens[0] ?? '';
  const second = tokens[1];
  const to = (template: string, params: Record<string, string> = {}): Resolved => ({ template, params });
  const fail = (error: ApiError): Resolved => ({ error });
  if (method === 'GET' && !hasBody) {
    switch (resource) {
      case '':
        return to('/');
      case 'balloon':
        if (second === undefined) return to('/balloon');
        if (second === 'statistics') return to('/balloon/statistics');
        if (second === 'hinting' && tokens[2] === 'status') return to('/balloon/hinting/status');
        return fail(unrecognized('GET', second));
      case 'version':
        return to('/version');
      case 'vm':
        if (second === 'config') return to('/vm/config');
        break;
      case 'machine-config':
        return to('/machine-config');
      case 'mmds':
        return to('/mmds');
      case 'hotplug':
        if (second === 'memory') return to('/hotplug/memory');
        break;
      case 'metrics':
        // vireo's Prometheus text (no such GET in Firecracker, where this path is refused).
        if (second === 'prometheus' && tokens.length === 2) return to('/metrics/prometheus');
        break;
    }
  }
  if (method === 'GET' && hasBody) return fail(badRequest('GET request cannot have a body.'));
  if (method === 'PUT' && hasBody) {
    switch (resource) {
      case 'actions':
      case 'balloon':
      case 'boot-source':
      case 'cpu-config':
      case 'logger':
      case 'serial':
      case 'machine-config':
      case 'metrics':
      case 'vsock':
      case 'entropy':
        return to(`/${resource}`);
      case 'drives':
        return to('/drives/{drive_id}', { drive_id: second ?? '' });
      case 'pmem':
        return to('/pmem/{id}', { id: second ?? '' });
      case 'network-interfaces':
        return to('/network-interfaces/{iface_id}', { iface_id: second ?? '' });
      case 'mmds':
        if (second === undefined) return to('/mmds');
        if (second === 'config') return to('/mmds/config');
        return fail(unrecognized('PUT', second));
      case 'snapshot':
        if (second === undefined) return fail(badRequest('Missing snapshot operation type.'));
        if (second === 'create' || second === 'load') return to(`/snapshot/${second}`);
        return fail(invalidPathMethod('PUT', `/snapshot/${second}`));
      case 'hotplug':
        if (second === 'memory') return to('/hotplug/memory');
        break;
    }
  }
  if (method === 'PUT' && !hasBody) return fail(badRequest('Empty PUT request.'));
  if (method === 'PATCH' && resource === 'balloon') {
    if (second === 'hinting') {
      if (tokens[2] === 'start' || tokens[2] === 'stop') return to(`/balloon/hinting/${tokens[2]}`);
      return fail(invalidPathMethod('PATCH', '/balloon/hinting'));
    }
    if (!hasBody) return fail(badRequest('Empty PATCH request.'));
    if (second === undefined) return to('/balloon');
    if (second === 'statistics') return to('/balloon/statistics');
    return fail(unrecognized('PATCH', second));
  }
  if (method === 'PATCH' && hasBody) {
    switch (resource) {
      case 'drives':
        return to('/drives/{drive_id}', { drive_id: second ?? '' });
      case 'machine-config':
      case 'mmds':
      case 'vm':
        return to(`/${resource}`);
      case 'network-interfaces':
        return to('/network-interfaces/{iface_id}', { iface_id: second ?? '' });
      case 'pmem':
        return to('/pmem/{id}', { id: second ?? '' });
      case 'hotplug':
        if (second === 'memory') return to('/hotplug/memory');
        break;
    }
  }
  if (method === 'PATCH' && !hasBody) return fail(badRequest('Empty PATCH request.'));
  return fail(invalidPathMethod(method, resource));
}

function jsonResponse(status: number, value: unknown, headers: Record<string, string> = {}): ApiResponse {
  return { status, headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(value) };
}

export const faultResponse = (e: ApiError): ApiResponse =>
  jsonResponse(e.status, { fault_message: e.message }, e.headers);

export class ApiServer {
  private server: Server | undefined;
  private readonly routes: Map<string, Route>;
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
    this.routes = new Map(allRoutes().map((route) => [`${route.method} ${route.path}`, route]));
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
    // micro_http needs no Host header (curl --unix-socket sends one, other clients do not).
    const server = createServer({ requireHostHeader: false }, (req, res) => this.onRequest(req, res));
    // Firecracker keeps an idle connection open for as long as the client does.
    server.keepAliveTimeout = 0;
    // `Expect: 100-continue` (curl sends it for bodies over 1 KiB): refuse an oversized body before the
    // client sends it, else invite it.
    server.on('checkContinue', (req, res) => {
      // micro_http's interim answer: a status line without a reason phrase, its Server and Connection.
      if (Number(req.headers['content-length'] ?? 0) <= this.payloadLimit)
        req.socket.write(`HTTP/1.1 100 \r\nServer: ${SERVER_HEADER}\r\nConnection: keep-alive\r\n\r\n`);
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
    // Firecracker's api_server.process_startup_time_us and _cpu_us: process start to a bound socket.
    const cpu = process.cpuUsage();
    this.ctl.metrics.store('api_server', 'process_startup_time_us', performance.now() * 1000);
    this.ctl.metrics.store('api_server', 'process_startup_time_cpu_us', cpu.user + cpu.system);
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
    res.sendDate = false;
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'PUT' && method !== 'PATCH') {
      // micro_http refuses the request line itself: its own body, not a fault_message.
      req.resume();
      this.send(res, { status: 400, headers: { 'Content-Type': 'application/json' }, body: UNSUPPORTED_METHOD_BODY });
      return;
    }
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
    // As micro_http writes them: a status line without a reason phrase, then Server, Connection,
    // Deprecation, Content-Type and Content-Length, in that order (none of the last two on a 204).
    const { 'Content-Type': type, Connection: connection, ...rest } = r.headers;
    const headers: Record<string, string | number> = {
      Server: SERVER_HEADER,
      Connection: connection ?? 'keep-alive',
      ...rest,
    };
    if (r.status !== 204) {
      headers['Content-Type'] = type ?? 'application/json';
      headers['Content-Length'] = Buffer.byteLength(r.body);
    }
    res.writeHead(r.status, '', headers);
    res.end(r.status === 204 ? undefined : r.body, this.answered);
    this.answered = undefined;
  }

  /**
   * Compiles the body check of every route ahead of its first request: the first compile loads ajv
   * (tens of ms), each one after takes a few. One per turn of the event loop, so that a request
   * arriving meanwhile is served between them.
   */
  async prewarm(): Promise<void> {
    for (const route of this.routes.values()) {
      if (route.body === undefined) continue;
      await new Promise<void>((r) => setImmediate(r));
      rustType(route.body, route.partial ?? false);
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
    const resolved = resolveFirecracker(method, path, raw.length > 0);
    const route = 'template' in resolved ? this.routes.get(`${method} ${resolved.template}`) : undefined;
    const params = 'template' in resolved ? resolved.params : {};
    const pathKnown = route !== undefined || 'template' in resolved;
    const m = method.toLowerCase();
    const countAs: ApiMethod = m === 'put' || m === 'patch' ? m : 'get';
    let response: ApiResponse;
    try {
      if ('error' in resolved) throw resolved.error;
      if (!route) throw invalidPathMethod(method, path.replace(/^\/+/, '').split('/')[0] ?? '');
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
    if (response.headers.Deprecation !== undefined) this.ctl.metrics.countDeprecated();
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
        body = fromSlice(rustType(route.body, route.partial ?? false), raw);
      } catch (e) {
        if (e instanceof SerdeError) throw deserializeError(e.toString());
        throw e;
      }
    }
    return route.handle({ ctl: this.ctl, params, body });
  }
}
