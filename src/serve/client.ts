/**
 * A client of a running `vireo serve`, for vireo's own CLI (`vireo sandbox …`): the control-plane
 * calls E2B's SDK makes, and a Sandbox (commands, files) over `CONNECT <sandboxId>:49983` streams
 * that the service carries to the sandbox's agent — the same envd protocol, through the same checks
 * (the API key and the sandbox's access token).
 */
import { request as httpRequest } from 'node:http';
import type { Socket } from 'node:net';
import { AgentClient, type AgentTimeouts } from '../agent/client.js';
import type { AgentEndpoint } from '../agent/connector.js';
import { AgentError } from '../agent/errors.js';
import { Sandbox } from '../sandbox/sandbox.js';
import { HttpError, ServeError } from './errors.js';
import { ENVD_PORT } from './proxy.js';

export interface ServeSandboxInfo {
  sandboxID: string;
  templateID: string;
  state: string;
  startedAt: string;
  endAt: string;
  cpuCount: number;
  memoryMB: number;
  metadata: Record<string, string>;
  envdAccessToken?: string;
}

export interface CreatedSandbox {
  sandboxID: string;
  templateID: string;
  envdAccessToken: string;
  envdVersion: string;
}

export class ServeClient {
  readonly url: URL;
  constructor(
    url: string,
    private readonly apiKey: string,
    private readonly requestTimeoutMs = 600_000,
  ) {
    try {
      this.url = new URL(url);
    } catch {
      throw new ServeError(`${url}: not a URL (give http://127.0.0.1:PORT)`);
    }
    if (this.url.protocol !== 'http:') throw new ServeError(`${url}: vireo serve speaks http://`);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<{ data: T; headers: Headers }> {
    let r: Response;
    try {
      r = await fetch(new URL(path, this.url), {
        method,
        headers: { 'X-API-KEY': this.apiKey, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
    } catch (e) {
      throw new ServeError(`cannot reach vireo serve at ${this.url.origin}: ${(e as Error).message}`, { cause: e });
    }
    const text = await r.text();
    if (!r.ok) {
      let msg = text;
      try {
        msg = (JSON.parse(text) as { message?: string }).message ?? text;
      } catch {}
      throw new HttpError(r.status, `vireo serve: ${r.status}: ${msg}`);
    }
    return { data: (text ? JSON.parse(text) : undefined) as T, headers: r.headers };
  }

  async create(opts: {
    template: string;
    timeoutS?: number | undefined;
    envs?: Record<string, string> | undefined;
    metadata?: Record<string, string> | undefined;
  }): Promise<CreatedSandbox> {
    return (
      await this.call<CreatedSandbox>('POST', '/v2/sandboxes', {
        templateID: opts.template,
        timeout: opts.timeoutS,
        envVars: opts.envs,
        metadata: opts.metadata,
      })
    ).data;
  }

  async info(id: string): Promise<ServeSandboxInfo> {
    return (await this.call<ServeSandboxInfo>('GET', `/sandboxes/${encodeURIComponent(id)}`)).data;
  }

  async list(): Promise<ServeSandboxInfo[]> {
    const out: ServeSandboxInfo[] = [];
    let next: string | null = null;
    do {
      const q: string = next ? `?nextToken=${encodeURIComponent(next)}` : '';
      const r: { data: ServeSandboxInfo[]; headers: Headers } = await this.call('GET', `/v2/sandboxes${q}`);
      out.push(...r.data);
      next = r.headers.get('x-next-token');
    } while (next);
    return out;
  }

  async kill(id: string): Promise<void> {
    await this.call('DELETE', `/sandboxes/${encodeURIComponent(id)}`);
  }

  async setTimeout(id: string, timeoutS: number): Promise<void> {
    await this.call('POST', `/sandboxes/${encodeURIComponent(id)}/timeout`, { timeout: timeoutS });
  }

  /** A stream to the sandbox's agent (or a guest port) through the service. */
  endpoint(id: string, token: string, port = ENVD_PORT): AgentEndpoint {
    const describe = `sandbox ${id} port ${port} through vireo serve at ${this.url.host}`;
    return {
      describe,
      connect: (opts) =>
        new Promise<Socket>((resolve, reject) => {
          const target = `${id}:${port}`;
          const req = httpRequest({
            host: this.url.hostname,
            port: this.url.port || 80,
            method: 'CONNECT',
            path: target,
            headers: { host: target, 'X-API-KEY': this.apiKey, 'X-Access-Token': token },
            signal: opts.signal,
          });
          const timer = setTimeout(
            () =>
              req.destroy(new AgentError('VIREO_ERR_AGENT_TIMEOUT', `${describe}: no answer in ${opts.timeoutMs} ms`)),
            opts.timeoutMs,
          );
          req.on('connect', (res, socket, head) => {
            clearTimeout(timer);
            if (res.statusCode !== 200) {
              socket.destroy();
              reject(new AgentError('VIREO_ERR_AGENT', `${describe}: refused with HTTP ${res.statusCode}`));
              return;
            }
            socket.pause();
            if (head.length > 0) socket.unshift(head);
            resolve(socket);
          });
          req.on('response', (res) => {
            clearTimeout(timer);
            res.resume();
            reject(new AgentError('VIREO_ERR_AGENT', `${describe}: refused with HTTP ${res.statusCode}`));
          });
          req.on('error', (e) => {
            clearTimeout(timer);
            reject(
              e instanceof AgentError
                ? e
                : new AgentError('VIREO_ERR_AGENT', `${describe}: ${e.message}`, { cause: e }),
            );
          });
          req.end();
        }),
    };
  }

  /** The sandbox's commands and files, through the service (its token from getInfo). */
  async sandbox(id: string, timeouts?: Partial<AgentTimeouts>): Promise<Sandbox> {
    const info = await this.info(id);
    const token = info.envdAccessToken;
    if (!token) throw new ServeError(`sandbox ${id}: the service gave no access token`);
    const agent = new AgentClient({ endpoint: this.endpoint(id, token), accessToken: token, timeouts });
    return Sandbox.attach({ agent, init: false, timeoutMs: 0 });
  }
}
