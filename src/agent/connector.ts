/**
 * Byte streams to the guest agent. vireo's vsock is Firecracker's hybrid form: the host connects to
 * the VM's Unix socket, writes `CONNECT <port>\n` and reads `OK <local port>\n` once the guest
 * accepted; then the stream is the guest connection. The agent also runs on a host (tests, a debug
 * run) on a Unix socket or TCP: the same client speaks to it through the plain connectors.
 */
import { connect, type Socket } from 'node:net';
import { AgentError } from './errors.js';

/** envd's port (E2B's SDK reaches the agent on 49983); vireo's agent listens on this vsock port. */
export const AGENT_VSOCK_PORT = 49983;

/** `OK 4294967295\n` is 14 bytes; vireo's muxer and Firecracker's send no more before the guest's data. */
const OK_LINE_MAX = 32;

export interface ConnectOptions {
  /** How long the connection (and the vsock handshake) may take: no default, the caller says. */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** Opens a new byte stream to the agent, ready for HTTP/1.1. */
export type AgentConnector = (opts: ConnectOptions) => Promise<Socket>;

/** What a connector reaches, for messages. */
export interface AgentEndpoint {
  connect: AgentConnector;
  describe: string;
}

/** The agent behind a VM's hybrid vsock socket (`VsockConfig.udsPath`), on vsock port `port`. */
export function hybridVsockEndpoint(udsPath: string, port: number = AGENT_VSOCK_PORT): AgentEndpoint {
  if (!Number.isInteger(port) || port < 0 || port > 0xffffffff)
    throw new AgentError('VIREO_ERR_AGENT', `vsock port ${port} is out of range: give 0 to 4294967295`);
  const describe = `the guest agent on vsock port ${port} through ${udsPath}`;
  return {
    describe,
    connect: (opts) => open(() => connect({ path: udsPath }), describe, opts, `CONNECT ${port}\n`),
  };
}

/** An agent listening on a Unix socket on this host (`vireo-agent --listen unix:PATH`). */
export function unixEndpoint(path: string): AgentEndpoint {
  const describe = `the agent on unix:${path}`;
  return { describe, connect: (opts) => open(() => connect({ path }), describe, opts) };
}

/** An agent listening on TCP (`vireo-agent --listen tcp:HOST:PORT`). */
export function tcpEndpoint(host: string, port: number): AgentEndpoint {
  const describe = `the agent on tcp:${host}:${port}`;
  return { describe, connect: (opts) => open(() => connect({ host, port }), describe, opts) };
}

/**
 * Connects, optionally sends the hybrid vsock CONNECT line and checks the `OK <port>\n` answer, all
 * within `timeoutMs`. The socket comes back paused (the HTTP client resumes it once it listens); a
 * byte after the OK line is put back for it.
 */
function open(dial: () => Socket, describe: string, opts: ConnectOptions, connectLine?: string): Promise<Socket> {
  const { timeoutMs, signal } = opts;
  if (!(timeoutMs > 0))
    throw new AgentError('VIREO_ERR_AGENT', `connect timeout ${timeoutMs} ms: give a positive number`);
  return new Promise<Socket>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal, describe));
      return;
    }
    const s = dial();
    let line = Buffer.alloc(0);
    const fail = (e: AgentError) => {
      cleanup();
      s.destroy();
      reject(e);
    };
    const timer = setTimeout(
      () =>
        fail(
          new AgentError(
            'VIREO_ERR_AGENT_TIMEOUT',
            `${describe} did not ${connectLine ? 'accept the connection' : 'connect'} within ${timeoutMs} ms: is the VM running and the agent started?`,
          ),
        ),
      timeoutMs,
    );
    const onAbort = () => fail(abortError(signal as AbortSignal, describe));
    signal?.addEventListener('abort', onAbort, { once: true });
    const onError = (e: Error) =>
      fail(new AgentError('VIREO_ERR_AGENT', `cannot reach ${describe}: ${e.message}`, { cause: e }));
    const onClose = () =>
      fail(
        new AgentError(
          'VIREO_ERR_AGENT',
          `${describe} refused the connection (closed before OK): is the agent listening in the guest?`,
        ),
      );
    const onData = (chunk: Buffer) => {
      line = Buffer.concat([line, chunk]);
      const nl = line.indexOf(0x0a);
      if (nl < 0) {
        if (line.length >= OK_LINE_MAX)
          fail(new AgentError('VIREO_ERR_AGENT', `${describe} answered CONNECT with a line over ${OK_LINE_MAX} bytes`));
        return;
      }
      const text = line.subarray(0, nl).toString('latin1');
      if (!/^OK [0-9]{1,10}$/.test(text)) {
        fail(
          new AgentError(
            'VIREO_ERR_AGENT',
            `${describe} answered CONNECT with ${JSON.stringify(text.slice(0, 40))}, not OK <port>`,
          ),
        );
        return;
      }
      done(line.subarray(nl + 1));
    };
    const done = (rest: Buffer) => {
      cleanup();
      s.pause();
      if (rest.length > 0) s.unshift(rest);
      resolve(s);
    };
    function cleanup() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      s.off('error', onError);
      s.off('close', onClose);
      s.off('data', onData);
      s.off('connect', onConnect);
    }
    const onConnect = () => {
      if (connectLine === undefined) {
        done(Buffer.alloc(0));
        return;
      }
      s.on('data', onData);
      s.write(connectLine);
    };
    s.on('error', onError);
    s.on('close', onClose);
    s.once('connect', onConnect);
  });
}

function abortError(signal: AbortSignal, describe: string): AgentError {
  const why = signal.reason instanceof Error ? signal.reason.message : 'aborted';
  return new AgentError('VIREO_ERR_AGENT', `connecting to ${describe} was cancelled: ${why}`, { cause: signal.reason });
}
