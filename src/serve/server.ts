/**
 * `vireo serve`: a local sandbox service on 127.0.0.1 that E2B's SDK drives unchanged. One HTTP
 * port carries both halves: a request with an `E2b-Sandbox-Id` header (all envd traffic once the SDK
 * has E2B_SANDBOX_URL) goes to that sandbox (proxy.ts); a /files URL signed with a sandbox's token
 * goes to that sandbox; everything else is the control plane (control.ts), which needs the API key.
 * `CONNECT <sandboxId>:<port>` (with the API key and the sandbox's access token) opens a raw stream to
 * the agent or a guest port, for vireo's own CLI; a WebSocket upgrade to a guest port is carried too.
 *
 *   E2B_API_URL=http://127.0.0.1:PORT E2B_SANDBOX_URL=http://127.0.0.1:PORT E2B_API_KEY=KEY node app.js
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { type ControlContext, control } from './control.js';
import { HttpError, ServeError } from './errors.js';
import {
  allowed,
  ENVD_PORT,
  forward,
  header,
  notFoundSandbox,
  openStream,
  portOf,
  routeTo,
  send,
  signedFor,
  splice,
} from './proxy.js';
import { Registry, sameSecret } from './registry.js';
import type { Launcher, TemplateConfig } from './templates.js';

export interface ServeOptions {
  /** TCP port on 127.0.0.1 (0: any free one). */
  port: number;
  /** Checked on every control-plane request (X-API-KEY); a random one when not given. */
  apiKey?: string | undefined;
  templates: readonly TemplateConfig[];
  /** How a sandbox is made (bootLauncher: a cold boot). */
  launcher: Launcher;
  maxSandboxes?: number | undefined;
  /** Opening a stream to a sandbox's agent (or a guest port through it). Default 10 s. */
  connectTimeoutMs?: number | undefined;
  log?: ((line: string) => void) | undefined;
  /** Listen here instead of 127.0.0.1 (tests only ever use loopback). */
  host?: string | undefined;
}

export const SERVE_DEFAULT_PORT = 49982;
const API_KEY_MIN = 16;

/** An API key the service accepts: 16 or more printable ASCII characters, no spaces. */
export function checkApiKey(key: string): void {
  if (key.length < API_KEY_MIN || /[^\x21-\x7e]/.test(key))
    throw new ServeError(`the API key must be at least ${API_KEY_MIN} printable characters without spaces`);
}

export class VireoServe {
  readonly apiKey: string;
  readonly registry: Registry;
  private readonly server: Server;
  private readonly ctx: ControlContext;
  private readonly connectTimeoutMs: number;
  private readonly log: (line: string) => void;
  private closing: Promise<void> | undefined;

  private constructor(opts: ServeOptions) {
    const key = opts.apiKey ?? `vireo_${randomBytes(20).toString('hex')}`;
    checkApiKey(key);
    this.apiKey = key;
    this.log = opts.log ?? (() => undefined);
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    this.registry = new Registry((id, e) =>
      this.log(`sandbox ${id} reached its timeout and was killed${e ? ` (${(e as Error).message})` : ''}`),
    );
    const templates = new Map<string, TemplateConfig>();
    for (const t of opts.templates) {
      if (templates.has(t.name)) throw new ServeError(`template ${t.name} is given twice`);
      templates.set(t.name, t);
    }
    this.ctx = {
      registry: this.registry,
      templates,
      launcher: opts.launcher,
      maxSandboxes: opts.maxSandboxes ?? 16,
      creating: { n: 0 },
      log: this.log,
    };
    this.server = createServer({ requestTimeout: 0, headersTimeout: 60_000, keepAliveTimeout: 65_000 });
    this.server.on('request', (req, res) => void this.onRequest(req, res));
    this.server.on('connect', (req, socket, head) => void this.onConnect(req, socket, head));
    this.server.on('upgrade', (req, socket, head) => void this.onUpgrade(req, socket, head));
    this.server.on('clientError', (_e, socket) => socket.destroy());
  }

  /** Starts listening; resolves once the port is open. */
  static async start(opts: ServeOptions): Promise<VireoServe> {
    const s = new VireoServe(opts);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          new ServeError(
            e.code === 'EADDRINUSE'
              ? `port ${opts.port} on ${opts.host ?? '127.0.0.1'} is in use: give another with --port`
              : `cannot listen on port ${opts.port}: ${e.message}`,
            { cause: e },
          ),
        ),
      );
      s.server.listen(opts.port, opts.host ?? '127.0.0.1', () => resolve());
    });
    return s;
  }

  get port(): number {
    const a = this.server.address();
    return typeof a === 'object' && a !== null ? a.port : 0;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Stops listening and kills every sandbox. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const closed = new Promise<void>((r) => this.server.close(() => r()));
      this.server.closeAllConnections();
      await this.registry.killAll();
      await closed;
    })();
    return this.closing;
  }

  private apiKeyOk(req: IncomingMessage): boolean {
    const k = header(req.headers, 'x-api-key');
    return k !== undefined && sameSecret(k, this.apiKey);
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://serve');
    } catch {
      send(res, 400, { code: 400, message: 'a malformed request target' });
      return;
    }
    try {
      const id = header(req.headers, 'e2b-sandbox-id');
      if (id !== undefined) {
        const port = portOf(header(req.headers, 'e2b-sandbox-port'));
        const rec = routeTo(this.registry, id, port, req, res, url);
        if (rec) await forward(rec, port, req, res, { connectTimeoutMs: this.connectTimeoutMs });
        return;
      }
      // A signed /files URL (uploadUrl/downloadUrl) carries no header: its signature names the sandbox.
      if (url.pathname === '/files' && url.searchParams.has('signature')) {
        const rec = this.registry.all().find((r) => signedFor(r, req.method, url));
        if (!rec) {
          send(res, 401, { code: 401, message: 'the signature matches no sandbox here (or it expired)' });
          return;
        }
        if (rec.state === 'paused') {
          notFoundSandbox(res, rec.sandboxId);
          return;
        }
        await forward(rec, ENVD_PORT, req, res, { connectTimeoutMs: this.connectTimeoutMs });
        return;
      }
      if (!this.apiKeyOk(req)) throw new HttpError(401, 'missing or wrong X-API-KEY');
      await control(this.ctx, req, res, url);
    } catch (e) {
      if (e instanceof HttpError) send(res, e.status, { code: e.status, message: e.message });
      else {
        this.log(`internal error on ${req.method} ${url.pathname}: ${(e as Error).stack ?? e}`);
        send(res, 500, { code: 500, message: `internal error: ${(e as Error).message}` });
      }
    }
  }

  /** `CONNECT <sandboxId>:<port>`: a raw stream to the agent or a guest port, for vireo's CLI. */
  private async onConnect(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const refuse = (status: number, msg: string) => {
      const body = JSON.stringify({ code: status, message: msg });
      socket.end(
        `HTTP/1.1 ${status} ${status === 401 ? 'Unauthorized' : status === 502 ? 'Bad Gateway' : 'Bad Request'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    };
    socket.on('error', () => socket.destroy());
    const m = /^([A-Za-z0-9_-]{1,64}):([0-9]{1,5})$/.exec(req.url ?? '');
    if (!m) return refuse(400, 'CONNECT <sandboxId>:<port>');
    if (!this.apiKeyOk(req)) return refuse(401, 'missing or wrong X-API-KEY');
    const rec = this.registry.get(m[1]!);
    if (!rec) return refuse(502, `The sandbox ${m[1]} was not found`);
    const token = header(req.headers, 'x-access-token');
    if (token === undefined || !sameSecret(token, rec.envdAccessToken))
      return refuse(401, `missing or wrong X-Access-Token for sandbox ${rec.sandboxId}`);
    if (rec.state === 'paused') return refuse(502, `The sandbox ${rec.sandboxId} is paused`);
    let port: number;
    try {
      port = portOf(m[2]);
    } catch (e) {
      return refuse(400, (e as Error).message);
    }
    try {
      const s = await openStream(rec, port, { connectTimeoutMs: this.connectTimeoutMs });
      if (socket.destroyed) {
        s.destroy();
        return;
      }
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      splice(socket, s, head);
    } catch (e) {
      refuse(502, `sandbox ${rec.sandboxId} port ${port}: ${(e as Error).message}`);
    }
  }

  /** A WebSocket (or other Upgrade) to a guest port: the request head is replayed to it, then bytes flow. */
  private async onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on('error', () => socket.destroy());
    const refuse = (status: number, msg: string) => {
      const body = JSON.stringify({ code: status, message: msg });
      socket.end(
        `HTTP/1.1 ${status} Refused\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    };
    const id = header(req.headers, 'e2b-sandbox-id');
    if (id === undefined) return refuse(400, 'an upgrade needs E2b-Sandbox-Id and E2b-Sandbox-Port');
    let port: number;
    try {
      port = portOf(header(req.headers, 'e2b-sandbox-port'));
    } catch (e) {
      return refuse(400, (e as Error).message);
    }
    const rec = this.registry.get(id);
    if (!rec) return refuse(502, `The sandbox ${id} was not found`);
    const url = new URL(req.url ?? '/', 'http://serve');
    if (!allowed(rec, req, port, url)) return refuse(401, `missing or wrong token for sandbox ${id}`);
    if (rec.state === 'paused') return refuse(502, `The sandbox ${id} is paused`);
    try {
      const s = await openStream(rec, port, { connectTimeoutMs: this.connectTimeoutMs });
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const k = req.rawHeaders[i]!;
        if (/^(e2b-sandbox-id|e2b-sandbox-port|e2b-traffic-access-token|x-api-key)$/i.test(k)) continue;
        lines.push(`${k}: ${req.rawHeaders[i + 1]}`);
      }
      s.write(`${lines.join('\r\n')}\r\n\r\n`);
      splice(socket, s, head);
    } catch (e) {
      refuse(502, `sandbox ${id} port ${port}: ${(e as Error).message}`);
    }
  }
}
