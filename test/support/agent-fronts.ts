/**
 * Test-only stand-ins around an agent on this host:
 * - `hybridVsockFront`: what vireo's vsock device does on its Unix socket (reads `CONNECT <port>\n`,
 *   answers `OK 1073741824\n`, then pipes to the agent), with a switch that stops forwarding (a guest
 *   that goes silent without closing) and a count of the streams it carried. The real vsock path is
 *   proven in the nested lane.
 * - `connectServer`: a Connect server made of @connectrpc/connect's own router and universal
 *   handlers on node:http (connect-node's server adapter, in a few lines), to test the client's
 *   transport before and besides the real agent.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, createServer, type Server as NetServer, type Socket } from 'node:net';
import { type ConnectRouter, createConnectRouter } from '@connectrpc/connect';
import type { UniversalServerRequest } from '@connectrpc/connect/protocol';

export interface HybridVsockFront {
  path: string;
  /** The vsock ports asked for, in order. */
  ports: number[];
  /** Stop (true) or resume (false) carrying bytes either way; held bytes are not lost. */
  hold(on: boolean): void;
  /** Refuse (close without OK) the next `n` connections, as a guest with no listener does. */
  refuseNext(n: number): void;
  /** Refusals still to make. */
  refusing(): number;
  close(): Promise<void>;
}

export function hybridVsockFront(path: string, target: () => Socket): Promise<HybridVsockFront> {
  const ports: number[] = [];
  const live = new Set<Socket>();
  const pipes: { a: Socket; b: Socket }[] = [];
  let holding = false;
  let refuse = 0;
  const server: NetServer = createServer({ allowHalfOpen: true }, (host) => {
    live.add(host);
    host.on('close', () => live.delete(host));
    let line = '';
    const onData = (c: Buffer) => {
      line += c.toString('latin1');
      const nl = line.indexOf('\n');
      if (nl < 0) return;
      host.off('data', onData);
      const m = /^CONNECT ([0-9]+)$/.exec(line.slice(0, nl));
      if (!m || refuse > 0) {
        if (refuse > 0) refuse--;
        host.destroy();
        return;
      }
      ports.push(Number(m[1]));
      const guest = target();
      live.add(guest);
      guest.on('close', () => live.delete(guest));
      guest.on('connect', () => {
        host.write('OK 1073741824\n');
        const rest = Buffer.from(line.slice(nl + 1), 'latin1');
        if (rest.length > 0) guest.write(rest);
        pipes.push({ a: host, b: guest });
        const carry = (from: Socket, to: Socket) => {
          from.on('data', (d) => {
            if (!to.write(d)) from.pause();
          });
          to.on('drain', () => {
            if (!holding) from.resume();
          });
          from.on('end', () => to.end());
        };
        carry(host, guest);
        carry(guest, host);
        if (holding) {
          host.pause();
          guest.pause();
        }
      });
      guest.on('error', () => host.destroy());
      host.on('error', () => guest.destroy());
      host.on('close', () => guest.destroy());
      guest.on('close', () => host.destroy());
    };
    host.on('data', onData);
  });
  return new Promise((resolve) =>
    server.listen(path, () =>
      resolve({
        path,
        ports,
        hold(on) {
          holding = on;
          for (const p of pipes)
            for (const s of [p.a, p.b]) {
              if (on) s.pause();
              else s.resume();
            }
        },
        refuseNext(n) {
          refuse = n;
        },
        refusing: () => refuse,
        close: () =>
          new Promise<void>((r) => {
            for (const s of live) s.destroy();
            server.close(() => r());
          }),
      }),
    ),
  );
}

/** A socket to a Unix path, for `hybridVsockFront`'s target. */
export const unixTarget = (path: string) => () => connect({ path, allowHalfOpen: true });

/** A Connect (HTTP/1.1) server on a Unix socket serving what `routes` registers; `extra` serves other paths. */
export function connectServer(
  path: string,
  routes: (r: ConnectRouter) => void,
  extra?: (req: IncomingMessage, res: ServerResponse) => boolean,
): Promise<Server> {
  const router = createConnectRouter();
  routes(router);
  const byPath = new Map(router.handlers.map((h) => [h.requestPath, h]));
  const server = createHttpServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://agent');
    const h = byPath.get(url.pathname);
    if (!h) {
      if (extra?.(req, res)) return;
      res.writeHead(404).end();
      return;
    }
    const ac = new AbortController();
    res.on('close', () => ac.abort());
    const header = new Headers();
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') header.set(k, v);
    const ureq: UniversalServerRequest = {
      httpVersion: req.httpVersion,
      url: url.toString(),
      method: req.method ?? 'POST',
      header,
      body: req as AsyncIterable<Uint8Array>,
      signal: ac.signal,
    };
    void (async () => {
      try {
        const ures = await h(ureq);
        const head: Record<string, string> = {};
        ures.header?.forEach((v, k) => {
          head[k] = v;
        });
        res.writeHead(ures.status, head);
        res.flushHeaders();
        if (ures.body) for await (const chunk of ures.body) res.write(chunk);
        res.end();
      } catch {
        res.destroy();
      }
    })();
  });
  return new Promise((resolve) => server.listen(path, () => resolve(server)));
}
