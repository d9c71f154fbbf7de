/**
 * `sb.getHost(port)`: a TCP listener on the host's loopback whose every connection is carried to a TCP
 * port inside the guest — through a new stream to the agent (a hybrid vsock connection), on which the
 * host asks the agent `CONNECT 127.0.0.1:PORT HTTP/1.1` (HTTP's own tunnel method, RFC 9110 §9.3.6) and,
 * once it answers 200, the stream is the guest connection. No guest NIC is needed.
 */
import { request as httpRequest } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import type { AgentEndpoint } from '../agent/connector.js';
import { AgentError } from '../agent/errors.js';

export interface PortForward {
  /** `127.0.0.1:PORT` on the host. */
  readonly address: string;
  readonly hostPort: number;
  readonly guestPort: number;
  close(): Promise<void>;
}

export interface ForwardOptions {
  /** Opening the stream to the agent and its answer to CONNECT, per connection. */
  connectTimeoutMs: number;
  accessToken?: string | undefined;
  /** Called when one forwarded connection could not be made (it is closed). */
  onError?: ((e: AgentError) => void) | undefined;
}

/** Opens one tunnel to guestPort through the agent; resolves with the stream once the agent answered 200. */
export function tunnel(endpoint: AgentEndpoint, guestPort: number, opts: ForwardOptions): Promise<Socket> {
  const target = `127.0.0.1:${guestPort}`;
  return new Promise<Socket>((resolve, reject) => {
    const headers: Record<string, string> = { host: target };
    if (opts.accessToken !== undefined) headers['X-Access-Token'] = opts.accessToken;
    const req = httpRequest({
      method: 'CONNECT',
      path: target,
      headers,
      createConnection: (_o, oncreate) => {
        endpoint.connect({ timeoutMs: opts.connectTimeoutMs }).then(
          (s) => {
            oncreate(null, s);
            s.resume();
          },
          (e: Error) => oncreate(e, undefined as unknown as Socket),
        );
        return undefined;
      },
    });
    const timer = setTimeout(
      () =>
        req.destroy(
          new AgentError(
            'VIREO_ERR_AGENT_TIMEOUT',
            `${endpoint.describe} did not open guest port ${guestPort} within ${opts.connectTimeoutMs} ms`,
          ),
        ),
      opts.connectTimeoutMs,
    );
    req.on('connect', (res, socket, head) => {
      clearTimeout(timer);
      if (res.statusCode !== 200) {
        socket.destroy();
        reject(
          new AgentError(
            'VIREO_ERR_AGENT_REMOTE',
            `${endpoint.describe} refused to open guest port ${guestPort}: HTTP ${res.statusCode}`,
          ),
        );
        return;
      }
      if (head.length > 0) socket.unshift(head);
      socket.allowHalfOpen = true; // a tunnel carries each direction's end on its own
      resolve(socket);
    });
    req.on('response', (res) => {
      clearTimeout(timer);
      res.resume();
      reject(
        new AgentError('VIREO_ERR_AGENT_REMOTE', `${endpoint.describe} answered CONNECT with HTTP ${res.statusCode}`),
      );
    });
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(
        e instanceof AgentError
          ? e
          : new AgentError('VIREO_ERR_AGENT', `opening guest port ${guestPort}: ${e.message}`, { cause: e }),
      );
    });
    req.end();
  });
}

/** Listens on 127.0.0.1 (an ephemeral port) and carries each connection to guestPort. */
export async function forwardPort(
  endpoint: AgentEndpoint,
  guestPort: number,
  opts: ForwardOptions,
): Promise<PortForward> {
  if (!Number.isInteger(guestPort) || guestPort < 1 || guestPort > 65535)
    throw new AgentError('VIREO_ERR_AGENT', `guest port ${guestPort} is out of range: give 1 to 65535`);
  const live = new Set<Socket>();
  const server: Server = createServer({ allowHalfOpen: true }, (client) => {
    live.add(client);
    client.on('close', () => live.delete(client));
    client.on('error', () => client.destroy());
    client.pause();
    tunnel(endpoint, guestPort, opts).then(
      (guest) => {
        if (client.destroyed) {
          guest.destroy();
          return;
        }
        live.add(guest);
        guest.on('close', () => {
          live.delete(guest);
          client.destroy();
        });
        guest.on('error', () => guest.destroy());
        client.on('close', () => guest.destroy());
        client.pipe(guest);
        guest.pipe(client);
        client.resume();
      },
      (e: AgentError) => {
        client.destroy();
        opts.onError?.(e);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  const hostPort = typeof addr === 'object' && addr !== null ? addr.port : 0;
  return {
    address: `127.0.0.1:${hostPort}`,
    hostPort,
    guestPort,
    close: () =>
      new Promise<void>((r) => {
        for (const s of live) s.destroy();
        server.close(() => r());
      }),
  };
}
