/**
 * The host side of vireo's guest agent: envd's two Connect-RPC services (process.Process,
 * filesystem.Filesystem, from spec/envd/ through protoc-gen-es) and its HTTP endpoints, over a fresh
 * stream to the agent per call (a hybrid vsock connection for a VM). The Connect protocol — envelopes,
 * end-of-stream, errors, timeouts — is @connectrpc/connect's own (protocol-connect's createTransport);
 * HTTP/1.1 is node:http's; this module only joins them to the VM's socket.
 *
 * Every call has a timeout: requestTimeoutMs unless the call passes timeoutMs (0: none — for a
 * stream whose keepalive is its guard). Streams ask the agent for keepalive pings every
 * keepaliveIntervalS and fail with VIREO_ERR_AGENT_SILENT when it misses them.
 */
import { type CallOptions, type Client, createClient, type Interceptor } from '@connectrpc/connect';
import { createTransport } from '@connectrpc/connect/protocol-connect';
import { type AgentEndpoint, hybridVsockEndpoint } from './connector.js';
import { AgentError, AgentHttpError } from './errors.js';
import { Filesystem } from './gen/filesystem_pb.js';
import { Process } from './gen/process_pb.js';
import { type AgentHttpOptions, agentHttp, agentUniversalClient, KEEPALIVE_PING_HEADER } from './http.js';

export interface AgentTimeouts {
  /** Opening a stream to the agent, the vsock handshake included. */
  connectTimeoutMs: number;
  /** A unary call or HTTP request that does not pass its own timeoutMs. */
  requestTimeoutMs: number;
  /** Asked of the agent on every server stream (envd's Keepalive-Ping-Interval, whole seconds). */
  keepaliveIntervalS: number;
  /** A stream silent for its keepalive interval plus this long fails with VIREO_ERR_AGENT_SILENT. */
  keepaliveGraceMs: number;
}

/** The timeouts `vm.agent` and Sandbox use unless told otherwise (every one of them is also a per-call option). */
export const AGENT_DEFAULT_TIMEOUTS: Readonly<AgentTimeouts> = Object.freeze({
  connectTimeoutMs: 5_000,
  requestTimeoutMs: 30_000,
  keepaliveIntervalS: 5,
  keepaliveGraceMs: 5_000,
});

export interface AgentLimits {
  /** The largest Connect message accepted from the agent (the guest is not trusted). */
  readMaxBytes: number;
  /** The largest /files download or other HTTP body accepted. */
  httpMaxBytes: number;
}

export const AGENT_DEFAULT_LIMITS: Readonly<AgentLimits> = Object.freeze({
  readMaxBytes: 64 * 1024 * 1024,
  httpMaxBytes: 1024 * 1024 * 1024,
});

export interface AgentClientOptions {
  endpoint: AgentEndpoint;
  timeouts?: Partial<AgentTimeouts> | undefined;
  limits?: Partial<AgentLimits> | undefined;
  /** Sent as X-Access-Token on every call once the agent has one (/init sets it). */
  accessToken?: string | undefined;
  /** Connect's JSON codec (what E2B's SDK sends; the default) or binary protobuf. */
  format?: 'json' | 'binary' | undefined;
}

/** Per call: a timeout (0: none) and the guest user it runs as. */
export interface AgentCallOptions {
  timeoutMs?: number | undefined;
  user?: string | undefined;
  signal?: AbortSignal | undefined;
}

export interface AgentInit {
  envVars?: Record<string, string> | undefined;
  accessToken?: string | undefined;
  defaultUser?: string | undefined;
  defaultWorkdir?: string | undefined;
  /** The host's clock (RFC 3339); the agent sets the guest's from it. Default: now. */
  timestamp?: string | undefined;
  /**
   * vireo's own field: host random bytes (base64, at most 512) that vireo's agent credits to the
   * guest kernel's pool and reseeds its CRNG from at once (a clone must not share its template's).
   */
  vireoEntropy?: string | undefined;
}

/** What /files answers for an upload, checked (the guest is not trusted). */
export interface AgentWriteInfo {
  name: string;
  path: string;
  type?: string | undefined;
}

export class AgentClient {
  readonly process: Client<typeof Process>;
  readonly filesystem: Client<typeof Filesystem>;
  readonly endpoint: AgentEndpoint;
  readonly timeouts: Readonly<AgentTimeouts>;
  readonly limits: Readonly<AgentLimits>;
  private token: string | undefined;
  private readonly http: AgentHttpOptions;

  constructor(opts: AgentClientOptions) {
    this.endpoint = opts.endpoint;
    this.timeouts = Object.freeze({ ...AGENT_DEFAULT_TIMEOUTS, ...definedOnly(opts.timeouts ?? {}) });
    this.limits = Object.freeze({ ...AGENT_DEFAULT_LIMITS, ...definedOnly(opts.limits ?? {}) });
    for (const [k, v] of Object.entries({ ...this.timeouts, ...this.limits }))
      if (!Number.isFinite(v) || v < 0 || (k !== 'keepaliveGraceMs' && v === 0))
        throw new AgentError('VIREO_ERR_AGENT', `agent option ${k} is ${v}: give a positive number`);
    if (!Number.isInteger(this.timeouts.keepaliveIntervalS))
      throw new AgentError(
        'VIREO_ERR_AGENT',
        `keepaliveIntervalS ${this.timeouts.keepaliveIntervalS}: give whole seconds`,
      );
    this.token = opts.accessToken;
    this.http = { connectTimeoutMs: this.timeouts.connectTimeoutMs, keepaliveGraceMs: this.timeouts.keepaliveGraceMs };
    const stamp: Interceptor = (next) => async (req) => {
      if (this.token !== undefined) req.header.set('X-Access-Token', this.token);
      if (req.stream && req.method.methodKind === 'server_streaming' && !req.header.has(KEEPALIVE_PING_HEADER))
        req.header.set(KEEPALIVE_PING_HEADER, String(this.timeouts.keepaliveIntervalS));
      return next(req);
    };
    const transport = createTransport({
      httpClient: agentUniversalClient(this.endpoint, this.http),
      baseUrl: 'http://agent',
      useBinaryFormat: opts.format === 'binary',
      interceptors: [stamp],
      acceptCompression: [],
      sendCompression: null,
      compressMinBytes: Number.MAX_SAFE_INTEGER,
      readMaxBytes: this.limits.readMaxBytes,
      writeMaxBytes: 0xffffffff,
      defaultTimeoutMs: this.timeouts.requestTimeoutMs,
      jsonOptions: { ignoreUnknownFields: true },
    });
    this.process = createClient(Process, transport);
    this.filesystem = createClient(Filesystem, transport);
  }

  /** A client for the agent behind a VM's hybrid vsock socket. */
  static forVsock(udsPath: string, opts: Omit<AgentClientOptions, 'endpoint'> = {}): AgentClient {
    return new AgentClient({ ...opts, endpoint: hybridVsockEndpoint(udsPath) });
  }

  /** The access token sent on every call (set by the constructor, init or here). */
  get accessToken(): string | undefined {
    return this.token;
  }

  set accessToken(token: string | undefined) {
    this.token = token;
  }

  /**
   * Connect call options for one call: the user (envd's Basic authorization), the timeout (the
   * client's requestTimeoutMs when not given; 0 for none) and a signal.
   */
  callOptions(o: AgentCallOptions = {}): CallOptions {
    const headers: Record<string, string> = {};
    if (o.user !== undefined) headers['Authorization'] = basicUser(o.user);
    return { headers, timeoutMs: o.timeoutMs ?? this.timeouts.requestTimeoutMs, signal: o.signal };
  }

  /** GET /health: resolves when the agent answers 204. */
  async health(o: AgentCallOptions = {}): Promise<void> {
    const r = await this.request('GET', '/health', o);
    if (r.status !== 204 && r.status !== 200) throw httpError(r.status, r.body, 'GET /health');
  }

  /**
   * Polls /health until the agent answers, for at most `timeoutMs` (a booting guest refuses the
   * vsock connection until the agent listens).
   */
  async waitReady(o: {
    timeoutMs: number;
    intervalMs?: number | undefined;
    signal?: AbortSignal | undefined;
  }): Promise<void> {
    const until = performance.now() + o.timeoutMs;
    let last: unknown;
    for (;;) {
      o.signal?.throwIfAborted();
      const left = until - performance.now();
      if (left <= 0) break;
      const budget = Math.ceil(Math.min(left, this.timeouts.requestTimeoutMs));
      try {
        await this.health({ timeoutMs: budget, signal: o.signal });
        return;
      } catch (e) {
        // An attempt cut short by the deadline says less than the one before it (a refusal, say).
        const cut =
          budget < this.timeouts.requestTimeoutMs && e instanceof AgentError && e.code === 'VIREO_ERR_AGENT_TIMEOUT';
        if (!(cut && last !== undefined)) last = e;
      }
      await new Promise((r) => setTimeout(r, Math.min(o.intervalMs ?? 50, Math.max(0, until - performance.now()))));
    }
    throw new AgentError(
      'VIREO_ERR_AGENT_TIMEOUT',
      `${this.endpoint.describe} was not ready within ${o.timeoutMs} ms${last instanceof Error ? ` (last: ${last.message})` : ''}`,
      { cause: last },
    );
  }

  /** POST /init: env vars, the access token, default user and workdir, the host's clock. */
  async init(body: AgentInit, o: AgentCallOptions = {}): Promise<void> {
    const json = { ...body, timestamp: body.timestamp ?? new Date().toISOString() };
    const r = await this.request('POST', '/init', o, {
      headers: { 'content-type': 'application/json' },
      body: Buffer.from(JSON.stringify(json)),
    });
    if (r.status !== 204 && r.status !== 200) throw httpError(r.status, r.body, 'POST /init');
    if (body.accessToken !== undefined) this.token = body.accessToken;
  }

  /** GET /envs: the agent's environment for new processes. */
  async envs(o: AgentCallOptions = {}): Promise<Record<string, string>> {
    const r = await this.request('GET', '/envs', o);
    if (r.status !== 200) throw httpError(r.status, r.body, 'GET /envs');
    const v = parseJson(r.body, 'GET /envs');
    if (
      typeof v !== 'object' ||
      v === null ||
      Array.isArray(v) ||
      !Object.values(v).every((x) => typeof x === 'string')
    )
      throw new AgentError('VIREO_ERR_AGENT', 'the agent answered GET /envs with something other than a string map');
    return v as Record<string, string>;
  }

  /** GET /files: a file's bytes (at most httpMaxBytes, or `maxBytes`). */
  async readFile(path: string, o: AgentCallOptions & { maxBytes?: number | undefined } = {}): Promise<Uint8Array> {
    const r = await this.request('GET', `/files?${fileQuery(path, o.user)}`, o, {}, o.maxBytes);
    if (r.status !== 200) throw httpError(r.status, r.body, `GET /files ${path}`);
    return r.body;
  }

  /** POST /files (application/octet-stream): writes a file, making its parent directories. */
  async writeFile(path: string, data: Uint8Array, o: AgentCallOptions = {}): Promise<AgentWriteInfo> {
    const r = await this.request('POST', `/files?${fileQuery(path, o.user)}`, o, {
      headers: { 'content-type': 'application/octet-stream' },
      body: data,
    });
    if (r.status !== 200 && r.status !== 201 && r.status !== 204)
      throw httpError(r.status, r.body, `POST /files ${path}`);
    if (r.status === 204 || r.body.length === 0) return { name: path.split('/').pop() ?? path, path };
    const v = parseJson(r.body, 'POST /files');
    const first: unknown = Array.isArray(v) ? v[0] : v;
    if (typeof first !== 'object' || first === null)
      throw new AgentError('VIREO_ERR_AGENT', 'the agent answered POST /files without the entry it wrote');
    const e = first as Record<string, unknown>;
    if (typeof e['path'] !== 'string' || typeof e['name'] !== 'string')
      throw new AgentError('VIREO_ERR_AGENT', 'the agent answered POST /files with an entry lacking path or name');
    return { name: e['name'], path: e['path'], type: typeof e['type'] === 'string' ? e['type'] : undefined };
  }

  /** GET /metrics, as the agent sends it (numbers only are kept). */
  async metrics(o: AgentCallOptions = {}): Promise<Record<string, number>> {
    const r = await this.request('GET', '/metrics', o);
    if (r.status !== 200) throw httpError(r.status, r.body, 'GET /metrics');
    const v = parseJson(r.body, 'GET /metrics');
    const out: Record<string, number> = {};
    if (typeof v === 'object' && v !== null)
      for (const [k, x] of Object.entries(v)) if (typeof x === 'number') out[k] = x;
    return out;
  }

  private request(
    method: string,
    path: string,
    o: AgentCallOptions,
    extra: { headers?: Record<string, string>; body?: Uint8Array } = {},
    maxBytes?: number,
  ) {
    const headers: Record<string, string> = { ...extra.headers };
    if (this.token !== undefined) headers['X-Access-Token'] = this.token;
    return agentHttp(this.endpoint, this.http, {
      method,
      path,
      headers,
      body: extra.body,
      timeoutMs: o.timeoutMs ?? this.timeouts.requestTimeoutMs,
      maxBytes: maxBytes ?? this.limits.httpMaxBytes,
      signal: o.signal,
    });
  }
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** envd's user selection: `Authorization: Basic base64(user:)`. */
export function basicUser(user: string): string {
  return `Basic ${Buffer.from(`${user}:`).toString('base64')}`;
}

function fileQuery(path: string, user: string | undefined): string {
  const q = new URLSearchParams({ path });
  if (user !== undefined) q.set('username', user);
  return q.toString();
}

function parseJson(body: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw new AgentError('VIREO_ERR_AGENT', `the agent answered ${what} with a body that is not JSON`);
  }
}

/** The agent's `{ message, code }` error, or its status alone; the message is cut to one short line. */
function httpError(status: number, body: Uint8Array, what: string): AgentHttpError {
  let msg = '';
  try {
    const v: unknown = JSON.parse(Buffer.from(body).toString('utf8'));
    if (typeof v === 'object' && v !== null && typeof (v as { message?: unknown }).message === 'string')
      msg = (v as { message: string }).message;
  } catch {
    msg = Buffer.from(body.subarray(0, 200)).toString('utf8');
  }
  msg = msg.replace(/[\r\n]+/g, ' ').slice(0, 200);
  return new AgentHttpError(status, `the agent refused ${what}: HTTP ${status}${msg ? `: ${msg}` : ''}`);
}
