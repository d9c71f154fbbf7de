/**
 * `vireo-firecracker` (bin/firecracker.js): Firecracker's command line, so tools that run `firecracker`
 * can run vireo instead. The API socket serves Firecracker's API (src/api); --config-file boots from
 * Firecracker's JSON at once; --no-api runs without the socket. The process ends when the guest does,
 * with the guest's status, as Firecracker's does. Flags and their errors follow Firecracker's parser;
 * exit statuses are Firecracker's (153: bad arguments, 152: bad configuration, 1: other errors).
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { VmController } from '../api/controller.js';
import { parseLevel } from '../api/logger.js';
import type { ApiServer } from '../api/server.js';
import { apiVersion } from '../api/spec.js';
import { ConfigError, VireoError } from '../common/errors.js';
import { guardStderr } from '../common/stdio.js';
import type { ConsoleHandle } from '../vmm/console.js';
import { prewarmIoThread, prewarmVcpuThreads, threadsLoaded } from '../vmm/vcpu-threads.js';

export const VIREO_VERSION = '0.1.0';
export const DEFAULT_API_SOCK_PATH = '/run/firecracker.socket';
/** As in src/api (not imported here: --version and argument errors load nothing else). */
const DEFAULT_INSTANCE_ID = 'anonymous-instance';
const HTTP_MAX_PAYLOAD_SIZE = 51200;

/** Firecracker's FcExitCode values vireo uses. */
export const EXIT = { ok: 0, generic: 1, badConfiguration: 152, argParsing: 153 } as const;

interface ArgSpec {
  takesValue: boolean;
  help: string;
  /** Accepted for compatibility with what launchers pass; has no effect in vireo. */
  ignored?: boolean;
  /** Refused with this reason (a Firecracker feature vireo does not have). */
  unsupported?: string;
}

const ARGS: Record<string, ArgSpec> = {
  'api-sock': {
    takesValue: true,
    help: `Path to unix domain socket used by the API (default ${DEFAULT_API_SOCK_PATH}).`,
  },
  id: { takesValue: true, help: `MicroVM unique identifier (default ${DEFAULT_INSTANCE_ID}).` },
  'config-file': { takesValue: true, help: 'Path to a file that contains the microVM configuration in JSON format.' },
  'no-api': { takesValue: false, help: 'Run without the API socket (requires --config-file).' },
  'log-path': { takesValue: true, help: 'Path to a file (JSON lines) used for configuring the logger on startup.' },
  level: { takesValue: true, help: 'Set the logger level: Error, Warning, Info, Debug, Trace or Off.' },
  module: { takesValue: true, help: 'Set the logger module filter.' },
  'show-level': { takesValue: false, help: 'Whether or not to output the level in the logs.' },
  'show-log-origin': { takesValue: false, help: "Include the file and line of each log record's origin." },
  'metrics-path': { takesValue: true, help: 'Path to a file used for configuring the metrics on startup.' },
  'boot-timer': { takesValue: false, help: "Report the time from InstanceStart to the guest's first exit." },
  'http-api-max-payload-size': {
    takesValue: true,
    help: `Http API request payload max size, in bytes (default ${HTTP_MAX_PAYLOAD_SIZE}).`,
  },
  'prometheus-port': { takesValue: true, help: 'vireo: serve Prometheus text on http://127.0.0.1:PORT/metrics.' },
  version: { takesValue: false, help: 'Print the binary version number.' },
  help: { takesValue: false, help: 'Print this help.' },
  'no-seccomp': {
    takesValue: false,
    help: 'Disables seccomp filtering (a warning is printed for each microVM). Not recommended.',
  },
  'start-time-us': { takesValue: true, help: 'Accepted (launchers pass it); unused.', ignored: true },
  'start-time-cpu-us': { takesValue: true, help: 'Accepted (launchers pass it); unused.', ignored: true },
  'parent-cpu-time-us': { takesValue: true, help: 'Accepted (launchers pass it); unused.', ignored: true },
  'mmds-size-limit': { takesValue: true, help: 'Accepted; vireo has no MMDS.', ignored: true },
  'seccomp-filter': {
    takesValue: true,
    help: '',
    unsupported:
      'vireo does not support custom seccomp filters (it installs its own per thread: src/kvm/seccomp-policy.ts; --no-seccomp turns them off)',
  },
  metadata: { takesValue: true, help: '', unsupported: 'vireo does not support MMDS (the metadata service)' },
  'enable-pci': { takesValue: false, help: '', unsupported: 'vireo has no PCI transport (virtio over MMIO only)' },
  'snapshot-version': { takesValue: false, help: '', unsupported: 'vireo has no snapshot data format yet' },
  'describe-snapshot': { takesValue: true, help: '', unsupported: 'vireo has no snapshot data format yet' },
};

export class ArgError extends Error {}

/** Firecracker's parser: `--name value` or `--name=value`, each at most once, no positionals. */
export function parseFirecrackerArgs(argv: readonly string[]): Map<string, string | true> {
  const out = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--'))
      throw new ArgError(`Found argument '${arg}' which wasn't expected, or isn't valid in this context.`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = ARGS[name];
    if (!spec) throw new ArgError(`Found argument '${arg}' which wasn't expected, or isn't valid in this context.`);
    if (out.has(name)) throw new ArgError(`The argument '--${name}' was provided more than once.`);
    if (spec.unsupported) throw new ArgError(`'--${name}': ${spec.unsupported}.`);
    if (!spec.takesValue) {
      if (eq >= 0) throw new ArgError(`The argument '--${name}' does not take a value.`);
      out.set(name, true);
      continue;
    }
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || (eq < 0 && value.startsWith('--')))
      throw new ArgError(`The argument '--${name}' requires a value, but none was supplied.`);
    out.set(name, value);
  }
  if (out.has('no-api') && !out.has('config-file'))
    throw new ArgError("Argument '--no-api' requires also argument '--config-file'.");
  const id = out.get('id');
  if (typeof id === 'string' && !/^[A-Za-z0-9-]{1,64}$/.test(id))
    throw new ArgError(`Invalid instance ID '${id}': use 1 to 64 letters, digits or hyphens.`);
  for (const n of ['http-api-max-payload-size', 'prometheus-port']) {
    const v = out.get(n);
    if (typeof v === 'string' && !/^\d+$/.test(v)) throw new ArgError(`'--${n}' expects a whole number, got '${v}'.`);
  }
  // Node's listen() throws (a stack trace) on a port out of range; 0 would listen on a random port
  // nobody is told about.
  const port = out.get('prometheus-port');
  if (typeof port === 'string' && !(Number(port) >= 1 && Number(port) <= 65535))
    throw new ArgError(`'--prometheus-port' expects a TCP port from 1 to 65535, got '${port}'.`);
  const level = out.get('level');
  if (typeof level === 'string' && !parseLevel(level))
    throw new ArgError(
      `Invalid value for logger level: ${level}. Possible values: [Error, Warning, Info, Debug, Trace, Off]`,
    );
  return out;
}

/**
 * What --version prints. Launchers (Kata Containers) read the second word of the first line as a
 * semantic version and compare it with the Firecracker they need: that word is the Firecracker API
 * version vireo implements; the line says plainly that this is vireo.
 */
export function versionText(): string {
  return `Firecracker-compatible v${apiVersion()} (vireo ${VIREO_VERSION}; implements the Firecracker API ${apiVersion()})\n`;
}

function helpText(): string {
  const lines = Object.entries(ARGS)
    .filter(([, s]) => !s.unsupported)
    .map(([n, s]) => `  --${n}${s.takesValue ? ' <value>' : ''}\n      ${s.help}`);
  return `${versionText()}\nusage: vireo-firecracker [--api-sock PATH] [--config-file FILE [--no-api]] [options]\n\n${lines.join('\n')}\n`;
}

function servePrometheus(ctl: VmController, port: number): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    void ctl.metrics.prometheus().then((text) => {
      res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4' }).end(text);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', (e) =>
      reject(new ConfigError(`cannot serve Prometheus metrics on 127.0.0.1:${port}: ${e.message}`)),
    );
    try {
      server.listen(port, '127.0.0.1', () => resolve(server.unref()));
    } catch (e) {
      // listen() throws at once on a port it refuses (parseFirecrackerArgs checks the range first).
      reject(new ConfigError(`cannot serve Prometheus metrics on 127.0.0.1:${port}: ${(e as Error).message}`));
    }
  });
}

/** A configuration file is a few KiB; anything far larger is not one. */
export const MAX_CONFIG_FILE_BYTES = 1 << 20;

/**
 * Reads --config-file without ever blocking: opened O_NONBLOCK (a FIFO's open would wait for a writer,
 * its read for data, and SIGTERM could not end the process meanwhile), then refused unless fstat says
 * it is a regular file of at most MAX_CONFIG_FILE_BYTES.
 */
export function readConfigFile(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    throw new ConfigError(
      `Unable to open or read from the configuration file ${path}: ${(e as NodeJS.ErrnoException).code}`,
    );
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile())
      throw new ConfigError(
        `the configuration file ${path} is not a regular file (a directory, FIFO, socket or device): give a JSON file`,
      );
    if (st.size > MAX_CONFIG_FILE_BYTES)
      throw new ConfigError(
        `the configuration file ${path} is ${st.size} bytes: a configuration is at most ${MAX_CONFIG_FILE_BYTES}`,
      );
    // One byte more than the limit: a file that grows while read is caught too.
    const buf = Buffer.alloc(MAX_CONFIG_FILE_BYTES + 1);
    let len = 0;
    for (;;) {
      const n = readSync(fd, buf, len, buf.length - len, null);
      if (n === 0) break;
      len += n;
      if (len > MAX_CONFIG_FILE_BYTES)
        throw new ConfigError(`the configuration file ${path} is over ${MAX_CONFIG_FILE_BYTES} bytes`);
    }
    return buf.toString('utf8', 0, len);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(
      `Unable to open or read from the configuration file ${path}: ${(e as NodeJS.ErrnoException).code}`,
    );
  } finally {
    closeSync(fd);
  }
}

/** How long a freshly served socket waits for its first request before warming up anyway. */
const WARM_UP_IDLE_MS = 50;

/**
 * What the first VM needs, loaded while the API is idle, so that neither the first answer waits for
 * it nor InstanceStart or /snapshot/load does: the I/O thread for the devices a VM will almost surely
 * have (a worker: 100+ ms to load), the VMM's modules (KVM through koffi, the devices, snapshots:
 * tens of ms), a dry run of the restore path's code, and the body checks of the API's requests (ajv:
 * ~100 ms the first time). It starts once the first response is written, or after a short idle if no
 * request comes.
 */
function warmUpWhenServed(api: ApiServer, loadVmm: () => Promise<{ prewarmRestorePath(): void }>): void {
  let started = false;
  const warmUp = (): void => {
    if (started) return;
    started = true;
    clearTimeout(idle);
    prewarmIoThread();
    // Failures here are only lost time: the request that needs the part reports its error.
    void loadVmm()
      .then((vmm) => {
        vmm.prewarmRestorePath();
        return api.prewarm();
      })
      .catch(() => undefined);
  };
  const idle = setTimeout(warmUp, WARM_UP_IDLE_MS).unref();
  void api.firstAnswer.then(() => setImmediate(warmUp));
}

/** Runs Firecracker's command line; resolves with the exit status. */
export async function firecrackerMain(argv: string[]): Promise<number> {
  guardStderr();
  try {
    return await firecrackerCommand(argv);
  } finally {
    // No exit (a bad flag, a bad file, SIGTERM) while a prewarmed thread is inside koffi's
    // initialisation: the process would abort (SIGABRT) instead of ending with its status.
    await threadsLoaded();
  }
}

async function firecrackerCommand(argv: string[]): Promise<number> {
  let args: Map<string, string | true>;
  try {
    args = parseFirecrackerArgs(argv);
  } catch (e) {
    process.stderr.write(
      `vireo-firecracker: Arguments parsing error: ${(e as Error).message} For more information try --help.\n`,
    );
    return EXIT.argParsing;
  }
  const str = (n: string): string | undefined => {
    const v = args.get(n);
    return typeof v === 'string' ? v : undefined;
  };
  if (args.has('help')) {
    process.stdout.write(helpText());
    return EXIT.ok;
  }
  if (args.has('version')) {
    process.stdout.write(versionText());
    return EXIT.ok;
  }

  // Read by every VM this process builds (the builder prints the warning, once per VM).
  if (args.has('no-seccomp')) process.env.VIREO_SECCOMP = 'off';
  // A vCPU thread starts loading now, in parallel with the rest, so that InstanceStart or a
  // snapshot load finds it ready (a fresh thread takes tens of ms to load its modules).
  prewarmVcpuThreads(1);
  // The VMM is loaded only now that the arguments are known to be good.
  const [{ VmController, loadVmm }, { ApiServer }, { applyConfigFile }, { attachConsole }] = await Promise.all([
    import('../api/controller.js'),
    import('../api/server.js'),
    import('../api/config-file.js'),
    import('../vmm/console.js'),
  ]);
  let console: ConsoleHandle | undefined;
  const ctl = new VmController({
    id: str('id') ?? DEFAULT_INSTANCE_ID,
    serial: { kind: 'stdio' },
    kvmPath: process.env.VIREO_KVM_DEVICE ?? '/dev/kvm',
    bootTimer: args.has('boot-timer'),
    metricsIntervalMs: process.env.VIREO_METRICS_INTERVAL_MS
      ? Number(process.env.VIREO_METRICS_INTERVAL_MS)
      : undefined,
    // Every thread of this process under the process-wide seccomp deny-list before the VM exists
    // (kvm/seccomp-policy.ts; VIREO_SECCOMP=off, set by --no-seccomp above, installs nothing).
    beforeVm: async () => {
      (await import('../kvm/seccomp-policy.js')).confineVmmProcess(true);
    },
    // The serial console is this process's stdin and stdout, as Firecracker's is.
    onVm: (vm) => {
      console = attachConsole(vm, process.stdin, () => void vm.stop());
    },
  });
  const api = new ApiServer(ctl, {
    socketPath: str('api-sock') ?? DEFAULT_API_SOCK_PATH,
    payloadLimit: str('http-api-max-payload-size') ? Number(str('http-api-max-payload-size')) : undefined,
  });
  let stopOnSignal = (): void => undefined;
  const exited = new Promise<number>((resolve) => {
    ctl.once('exited', (e) => resolve(e.status));
    // A signal stops the VM (its exit then ends the process), or ends a process that has none.
    stopOnSignal = () => (ctl.vm ? void ctl.shutdown() : resolve(EXIT.ok));
  });
  process.once('SIGINT', stopOnSignal);
  process.once('SIGTERM', stopOnSignal);
  let prometheus: Server | undefined;
  try {
    const level = str('level');
    if (str('log-path') !== undefined || level !== undefined || args.has('show-level') || args.has('module'))
      await ctl.logger.configure({
        log_path: str('log-path'),
        level: level !== undefined ? parseLevel(level) : undefined,
        show_level: args.has('show-level') || undefined,
        show_log_origin: args.has('show-log-origin') || undefined,
        module: str('module'),
      });
    ctl.logger.info('main', `Running vireo ${VIREO_VERSION} (Firecracker API ${apiVersion()})`);
    const metricsPath = str('metrics-path');
    if (metricsPath !== undefined) ctl.metrics.configure({ metrics_path: metricsPath }, ctl.metricsIntervalMs);
    const port = str('prometheus-port');
    if (port !== undefined) prometheus = await servePrometheus(ctl, Number(port));
    if (!args.has('no-api'))
      await api.listen().catch((e: Error) => {
        // Firecracker ends with its generic error status when it cannot serve its socket.
        throw new VireoError('VIREO_ERR_CONFIG', e.message);
      });
    const configFile = str('config-file');
    // With a config file the VM starts at once and its I/O thread with it: no prewarm, which could
    // still be loading its native modules when a bad file ends the process (Node aborts then).
    if (configFile === undefined && !args.has('no-api')) warmUpWhenServed(api, loadVmm);
    if (configFile !== undefined) {
      await applyConfigFile(api, readConfigFile(configFile), configFile);
    }
  } catch (e) {
    await ctl.shutdown();
    await api.close();
    prometheus?.close();
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`vireo-firecracker: ${msg}\n`);
    if (e instanceof ConfigError) return EXIT.badConfiguration;
    if (e instanceof VireoError) return EXIT.generic;
    throw e;
  }
  const status = await exited;
  console?.detach();
  process.off('SIGINT', stopOnSignal);
  process.off('SIGTERM', stopOnSignal);
  await ctl.shutdown();
  await api.close();
  prometheus?.close();
  return status;
}
