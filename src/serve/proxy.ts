/**
 * envd traffic through `vireo serve`: a request that names a sandbox (E2B's `E2b-Sandbox-Id` and
 * `E2b-Sandbox-Port` headers, as the SDK sends everything to E2B_SANDBOX_URL) is carried, bytes
 * unchanged and streamed both ways, to that sandbox's agent (port 49983: a new stream through its
 * hybrid vsock socket per request) or to a TCP port in its guest (through the agent: sandbox/
 * port-forward.ts's HTTP CONNECT tunnel). Nothing reaches a sandbox without its own token: the envd
 * access token (X-Access-Token, or a /files URL signed with it) for the agent; that or the sandbox's
 * traffic token (e2b-traffic-access-token) for a guest port.
 *
 * A sandbox this service does not hold is answered as E2B's proxy answers it: 502 with
 * `{ code: 502, message, sandboxId }`, which the SDK reads as "not running" (isRunning() → false).
 */
import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { AGENT_VSOCK_PORT } from '../agent/connector.js';
import { tunnel } from '../sandbox/port-forward.js';
import { HttpError } from './errors.js';
import { type Registry, type SandboxRecord, sameSecret } from './registry.js';

export const ENVD_PORT = AGENT_VSOCK_PORT;

/** Headers that belong to one connection (RFC 9110 §7.6.1) or to this routing, not to the sandbox. */
const HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'host',
  'e2b-sandbox-id',
  'e2b-sandbox-port',
  'e2b-traffic-access-token',
  'x-api-key',
]);

export interface ProxyOptions {
  /** Opening the stream to the agent (or the guest port through it). */
  connectTimeoutMs: number;
}

export function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** The guest port a request asks for: E2b-Sandbox-Port, 49983 (envd) when absent. */
export function portOf(raw: string | undefined): number {
  if (raw === undefined || raw === '') return ENVD_PORT;
  if (!/^[0-9]{1,5}$/.test(raw) || Number(raw) < 1 || Number(raw) > 65535)
    throw new HttpError(400, `E2b-Sandbox-Port ${JSON.stringify(raw.slice(0, 20))}: give a port from 1 to 65535`);
  return Number(raw);
}

/** A Connect RPC path (`/package.Service/Method`), whose errors are Connect's `{ code, message }`. */
const isRpc = (path: string): boolean => /^\/[A-Za-z0-9_.]+\.[A-Za-z0-9_]+\/[A-Za-z0-9_]+$/.test(path);

/** 401 in the shape the caller reads: Connect's for an RPC, envd's `{ code, message }` otherwise. */
export function unauthorized(res: ServerResponse, path: string, message: string): void {
  send(res, 401, isRpc(path) ? { code: 'unauthenticated', message } : { code: 401, message });
}

export function notFoundSandbox(res: ServerResponse, id: string): void {
  send(res, 502, { code: 502, message: `The sandbox ${id} was not found`, sandboxId: id });
}

export function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const b = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    ...(b ? { 'Content-Type': 'application/json', 'Content-Length': String(Buffer.byteLength(b)) } : {}),
  });
  res.end(b);
}

/** The /files signature E2B's SDK makes (`v1_` + base64 SHA-256 of path:operation:user:token[:expiry]). */
export function fileSignature(path: string, operation: 'read' | 'write', user: string, token: string, exp?: string) {
  const raw =
    exp === undefined ? `${path}:${operation}:${user}:${token}` : `${path}:${operation}:${user}:${token}:${exp}`;
  return `v1_${createHash('sha256').update(raw).digest('base64').replace(/=+$/, '')}`;
}

/** Whether a /files URL is signed with this sandbox's token (and not expired). */
export function signedFor(rec: SandboxRecord, method: string | undefined, url: URL): boolean {
  if (url.pathname !== '/files') return false;
  const sig = url.searchParams.get('signature');
  if (!sig) return false;
  const operation = method === 'GET' || method === 'HEAD' ? 'read' : method === 'POST' ? 'write' : undefined;
  if (!operation) return false;
  const exp = url.searchParams.get('signature_expiration') ?? undefined;
  if (exp !== undefined && (!/^[0-9]{1,12}$/.test(exp) || Number(exp) * 1000 < Date.now())) return false;
  const want = fileSignature(
    url.searchParams.get('path') ?? '',
    operation,
    url.searchParams.get('username') ?? '',
    rec.envdAccessToken,
    exp,
  );
  return sameSecret(sig, want);
}

/** Whether this request may reach `port` of the sandbox (see the file's comment). */
export function allowed(rec: SandboxRecord, req: IncomingMessage, port: number, url: URL): boolean {
  const token = header(req.headers, 'x-access-token');
  if (token !== undefined && sameSecret(token, rec.envdAccessToken)) return true;
  if (port === ENVD_PORT) return token === undefined && signedFor(rec, req.method, url);
  const traffic = header(req.headers, 'e2b-traffic-access-token');
  return traffic !== undefined && rec.trafficAccessToken !== undefined && sameSecret(traffic, rec.trafficAccessToken);
}

/** A new byte stream to the sandbox's agent or to a TCP port in its guest. */
export function openStream(rec: SandboxRecord, port: number, opts: ProxyOptions): Promise<Socket> {
  if (port === ENVD_PORT) return rec.endpoint.connect({ timeoutMs: opts.connectTimeoutMs });
  return tunnel(rec.endpoint, port, { connectTimeoutMs: opts.connectTimeoutMs, accessToken: rec.envdAccessToken });
}

function forwardHeaders(h: IncomingHttpHeaders, port: number): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP.has(k)) out[k] = v;
  out.host = port === ENVD_PORT ? 'localhost:49983' : `localhost:${port}`;
  out.connection = 'close';
  return out;
}

/** Carries one HTTP request to the sandbox and its answer back, streaming, until either side ends. */
export async function forward(
  rec: SandboxRecord,
  port: number,
  req: IncomingMessage,
  res: ServerResponse,
  opts: ProxyOptions,
): Promise<void> {
  let socket: Socket;
  try {
    socket = await openStream(rec, port, opts);
  } catch (e) {
    send(res, 502, {
      code: 502,
      message: `sandbox ${rec.sandboxId} port ${port} is not reachable: ${(e as Error).message}`,
      sandboxId: rec.sandboxId,
    });
    return;
  }
  if (res.destroyed) {
    socket.destroy();
    return;
  }
  await new Promise<void>((resolve) => {
    const up = httpRequest({
      method: req.method,
      path: req.url,
      headers: forwardHeaders(req.headers, port),
      createConnection: () => socket,
    });
    socket.resume();
    const done = () => {
      socket.destroy();
      resolve();
    };
    up.on('response', (r) => {
      const headers: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(r.headers)) if (v !== undefined && !HOP.has(k)) headers[k] = v;
      res.writeHead(r.statusCode ?? 502, headers);
      res.flushHeaders();
      r.pipe(res);
      r.on('error', () => res.destroy());
      r.on('end', done);
    });
    up.on('error', (e) => {
      if (!res.headersSent)
        send(res, 502, {
          code: 502,
          message: `sandbox ${rec.sandboxId} port ${port}: ${e.message}`,
          sandboxId: rec.sandboxId,
        });
      else res.destroy();
      done();
    });
    // The caller went away (a stream given up, a killed command's watcher): so does the sandbox side.
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
      done();
    });
    req.pipe(up);
  });
}

/** Carries raw bytes both ways between a client socket and a sandbox stream (CONNECT, WebSocket). */
export function splice(client: Duplex, sandbox: Socket, head?: Buffer): void {
  if (head && head.length > 0) sandbox.write(head);
  client.on('error', () => sandbox.destroy());
  sandbox.on('error', () => client.destroy());
  client.on('close', () => sandbox.destroy());
  sandbox.on('close', () => client.destroy());
  client.pipe(sandbox);
  sandbox.pipe(client);
  sandbox.resume();
}

/** Looks the request's sandbox up; undefined (answered) when it is not there or the request may not pass. */
export function routeTo(
  registry: Registry,
  id: string,
  port: number,
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
): SandboxRecord | undefined {
  const rec = registry.get(id);
  if (!rec) {
    notFoundSandbox(res, id);
    return undefined;
  }
  if (!allowed(rec, req, port, url)) {
    const what = port === ENVD_PORT ? 'X-Access-Token' : 'X-Access-Token or e2b-traffic-access-token';
    unauthorized(res, url.pathname, `missing or wrong ${what} for sandbox ${id}`);
    return undefined;
  }
  if (rec.state === 'paused') {
    send(res, 502, { code: 502, message: `The sandbox ${id} is paused: resume it (connect) first`, sandboxId: id });
    return undefined;
  }
  return rec;
}
