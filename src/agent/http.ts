/**
 * HTTP/1.1 to the guest agent over a fresh byte stream per request (node:http, its own parser and
 * chunked framing; the stream is the endpoint's: a hybrid vsock connection in a VM). Two faces: a
 * Connect `UniversalClientFn` (what @connectrpc/connect's protocol-connect transport calls, the same
 * seam connect-node's client fills) and plain requests for envd's HTTP endpoints (/health, /files).
 *
 * A request that asks the agent for keepalive pings (envd's `Keepalive-Ping-Interval` header, in
 * seconds) has its silence watched: no byte for the interval plus `keepaliveGraceMs` and the stream
 * is torn down with VIREO_ERR_AGENT_SILENT — a paused, hung or vanished guest is detected.
 */
import { type ClientRequest, request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import { Code, ConnectError } from '@connectrpc/connect';
import type { UniversalClientFn, UniversalClientRequest, UniversalClientResponse } from '@connectrpc/connect/protocol';
import type { AgentEndpoint } from './connector.js';
import { AgentError } from './errors.js';

/** envd's header: the server sends a keepalive message on a stream every this many seconds. */
export const KEEPALIVE_PING_HEADER = 'Keepalive-Ping-Interval';

export interface AgentHttpOptions {
  /** How long opening a stream to the agent (and its vsock handshake) may take. */
  connectTimeoutMs: number;
  /** A watched stream errors after its keepalive interval plus this much silence. */
  keepaliveGraceMs: number;
}

interface Sent {
  res: IncomingMessage;
  /** Ends the exchange (the stream is closed; reading the body then fails with `why`). */
  destroy(why: Error): void;
  /** Why the exchange was torn down, once it was. */
  reason(): Error | undefined;
  /** A byte came: the silence watch starts over. */
  alive(): void;
  /** The body was read to its end or abandoned: the watch and the signal listener go. */
  finish(): void;
}

/** One request on a new stream; resolves with the response head. */
function send(
  endpoint: AgentEndpoint,
  opts: AgentHttpOptions,
  req: { url: string; method: string; header: Headers; body?: AsyncIterable<Uint8Array> | Uint8Array | undefined },
  signal: AbortSignal | undefined,
  silenceMs: number | undefined,
): Promise<Sent> {
  const u = new URL(req.url);
  const headers: OutgoingHttpHeaders = {};
  req.header.forEach((v, k) => {
    headers[k] = v;
  });
  if (req.body instanceof Uint8Array) headers['content-length'] = String(req.body.byteLength);
  return new Promise<Sent>((resolve, reject) => {
    let settled = false;
    let failed: Error | undefined;
    let watch: NodeJS.Timeout | undefined;
    const cr: ClientRequest = httpRequest({
      method: req.method,
      host: u.hostname,
      path: u.pathname + u.search,
      headers,
      createConnection: (_o, oncreate) => {
        endpoint.connect({ timeoutMs: opts.connectTimeoutMs, signal }).then(
          (s: Socket) => {
            oncreate(null, s);
            s.resume();
          },
          (e: Error) => oncreate(e, undefined as unknown as Socket),
        );
        return undefined;
      },
    });
    const fail = (e: Error) => {
      failed ??= e;
      if (watch) clearTimeout(watch);
      signal?.removeEventListener('abort', onAbort);
      cr.destroy(e);
      if (!settled) {
        settled = true;
        reject(e);
      }
    };
    const armSilence = () => {
      if (silenceMs === undefined) return;
      if (watch) clearTimeout(watch);
      watch = setTimeout(
        () =>
          fail(
            new AgentError(
              'VIREO_ERR_AGENT_SILENT',
              `${endpoint.describe} sent nothing for ${silenceMs} ms on ${u.pathname} (keepalive missed): the guest is paused, hung or gone`,
            ),
          ),
        silenceMs,
      );
      watch.unref?.();
    };
    const onAbort = () => fail(abortReason(signal as AbortSignal));
    if (signal?.aborted) {
      onAbort();
      return;
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    armSilence();
    cr.on('error', (e) => {
      if (!settled) fail(e instanceof AgentError ? e : agentIoError(endpoint, e));
    });
    cr.on('response', (res) => {
      settled = true;
      armSilence();
      const finish = () => {
        if (watch) clearTimeout(watch);
        signal?.removeEventListener('abort', onAbort);
      };
      res.on('close', finish);
      resolve({ res, destroy: fail, reason: () => failed, alive: armSilence, finish });
    });
    writeBody(cr, req.body).catch((e: unknown) =>
      fail(e instanceof Error ? e : new AgentError('VIREO_ERR_AGENT', String(e))),
    );
  });
}

async function writeBody(cr: ClientRequest, body: AsyncIterable<Uint8Array> | Uint8Array | undefined): Promise<void> {
  if (body === undefined) {
    cr.end();
    return;
  }
  if (body instanceof Uint8Array) {
    cr.end(body);
    return;
  }
  for await (const chunk of body) {
    if (cr.destroyed) return;
    if (!cr.write(chunk)) await new Promise<void>((r) => cr.once('drain', r).once('close', r));
  }
  cr.end();
}

function agentIoError(endpoint: AgentEndpoint, e: Error): AgentError {
  return new AgentError('VIREO_ERR_AGENT', `${endpoint.describe}: ${e.message}`, { cause: e });
}

function abortReason(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new AgentError('VIREO_ERR_AGENT', 'the request was cancelled');
}

/** The response body as chunks; a torn-down exchange throws its reason. */
async function* bodyOf(sent: Sent): AsyncGenerator<Uint8Array> {
  const it = sent.res[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  try {
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      sent.alive();
      yield r.value;
    }
  } catch (e) {
    const why = sent.reason();
    if (why) throw why;
    throw e instanceof AgentError
      ? e
      : new AgentError(
          'VIREO_ERR_AGENT',
          `the stream from the agent broke: ${e instanceof Error ? e.message : String(e)}`,
          {
            cause: e,
          },
        );
  } finally {
    sent.finish();
    if (!sent.res.complete) sent.destroy(new AgentError('VIREO_ERR_AGENT', 'the response was not read to its end'));
  }
}

/** The silence limit for a request that carries envd's keepalive header, else undefined. */
function silenceFor(header: Headers, graceMs: number): number | undefined {
  const v = header.get(KEEPALIVE_PING_HEADER);
  if (v === null) return undefined;
  const s = Number(v);
  if (!Number.isInteger(s) || s <= 0)
    throw new AgentError('VIREO_ERR_AGENT', `${KEEPALIVE_PING_HEADER} ${JSON.stringify(v)}: give whole seconds > 0`);
  return s * 1000 + graceMs;
}

/** Maps what failed below Connect to a ConnectError that keeps the AgentError as its cause. */
function toConnectError(e: unknown): ConnectError {
  if (e instanceof ConnectError) return e;
  if (e instanceof AgentError) {
    const code =
      e.code === 'VIREO_ERR_AGENT_TIMEOUT' || e.code === 'VIREO_ERR_AGENT_SILENT'
        ? Code.DeadlineExceeded
        : Code.Unavailable;
    return new ConnectError(e.message, code, undefined, undefined, e);
  }
  return ConnectError.from(e, Code.Unavailable);
}

/** The Connect seam: every call a new stream to the agent. */
export function agentUniversalClient(endpoint: AgentEndpoint, opts: AgentHttpOptions): UniversalClientFn {
  return async (req: UniversalClientRequest): Promise<UniversalClientResponse> => {
    let body: AsyncIterable<Uint8Array> | Uint8Array | undefined = req.body;
    // A unary request's body is one message: send it with a length, not chunked.
    const ct = req.header.get('content-type') ?? '';
    if (body !== undefined && !ct.startsWith('application/connect+')) {
      const parts: Uint8Array[] = [];
      for await (const c of body) parts.push(c);
      body = Buffer.concat(parts);
    }
    let sent: Sent;
    try {
      sent = await send(endpoint, opts, { ...req, body }, req.signal, silenceFor(req.header, opts.keepaliveGraceMs));
    } catch (e) {
      throw toConnectError(e);
    }
    const header = new Headers();
    for (const [k, v] of Object.entries(sent.res.headers)) {
      if (v === undefined) continue;
      for (const one of Array.isArray(v) ? v : [v]) header.append(k, one);
    }
    const trailer = new Headers();
    async function* chunks(): AsyncGenerator<Uint8Array> {
      try {
        yield* bodyOf(sent);
      } catch (e) {
        throw toConnectError(e);
      }
      for (const [k, v] of Object.entries(sent.res.trailers)) if (v !== undefined) trailer.append(k, v);
    }
    return { status: sent.res.statusCode ?? 0, header, body: chunks(), trailer };
  };
}

export interface AgentHttpResponse {
  status: number;
  headers: Headers;
  body: Uint8Array;
}

/**
 * A plain HTTP request to the agent, read whole (at most `maxBytes`) within `timeoutMs` — head and
 * body together.
 */
export async function agentHttp(
  endpoint: AgentEndpoint,
  opts: AgentHttpOptions,
  req: {
    method: string;
    path: string;
    headers?: Record<string, string> | undefined;
    body?: Uint8Array | AsyncIterable<Uint8Array> | undefined;
    timeoutMs: number;
    maxBytes: number;
    signal?: AbortSignal | undefined;
  },
): Promise<AgentHttpResponse> {
  if (!(req.timeoutMs > 0))
    throw new AgentError('VIREO_ERR_AGENT', `request timeout ${req.timeoutMs} ms: give a positive number`);
  const timeout = AbortSignal.timeout(Math.ceil(req.timeoutMs));
  const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
  const what = `${req.method} ${req.path.split('?')[0]}`;
  const timedOut = () =>
    new AgentError('VIREO_ERR_AGENT_TIMEOUT', `${endpoint.describe} did not answer ${what} within ${req.timeoutMs} ms`);
  try {
    const sent = await send(
      endpoint,
      opts,
      { url: `http://agent${req.path}`, method: req.method, header: new Headers(req.headers), body: req.body },
      signal,
      undefined,
    );
    const parts: Buffer[] = [];
    let n = 0;
    for await (const c of bodyOf(sent)) {
      n += c.byteLength;
      if (n > req.maxBytes) {
        sent.destroy(new AgentError('VIREO_ERR_AGENT', 'response too large'));
        throw new AgentError(
          'VIREO_ERR_AGENT',
          `${endpoint.describe} answered ${what} with over ${req.maxBytes} bytes`,
        );
      }
      parts.push(c as Buffer);
    }
    const headers = new Headers();
    for (const [k, v] of Object.entries(sent.res.headers)) if (typeof v === 'string') headers.set(k, v);
    return { status: sent.res.statusCode ?? 0, headers, body: Buffer.concat(parts) };
  } catch (e) {
    if (timeout.aborted) throw timedOut();
    throw e;
  }
}
