/** `vireo serve` (a local E2B-compatible sandbox service) and `vireo sandbox …` (a client of it). */

import { createReadStream, readFileSync, writeFileSync } from 'node:fs';
import { ConfigError } from '../common/errors.js';
import { detectFlavour } from '../kvm/kvm.js';
import { confineVmmProcess } from '../kvm/seccomp-policy.js';
import { ServeClient } from '../serve/client.js';
import { checkApiKey, SERVE_DEFAULT_PORT, VireoServe } from '../serve/server.js';
import { bootLauncher, parseTemplate, type TemplateConfig } from '../serve/templates.js';

export interface ServeCliOptions {
  port: number;
  apiKey?: string;
  template: string[];
  cpus: number;
  mem: number;
  maxSandboxes: number;
  bootTimeout: number;
}

/** Starts the service and runs until SIGINT/SIGTERM, when it kills its sandboxes. */
export async function serveCommand(opts: ServeCliOptions): Promise<number> {
  const apiKey = opts.apiKey ?? process.env.VIREO_API_KEY;
  if (apiKey) checkApiKey(apiKey);
  const templates: TemplateConfig[] = opts.template.map((t) => parseTemplate(t, { cpus: opts.cpus, memMiB: opts.mem }));
  if (detectFlavour() === 'pvm')
    process.stderr.write(
      "vireo serve: this host's KVM is PVM, which cannot boot a stock Linux kernel natively: sandboxes will fail to boot here (run the service inside the nested lane, as test/linux-serve.test.ts does)\n",
    );
  if (!templates.some((t) => t.name === 'base')) {
    // E2B's SDK asks for `base` unless told: the guest kit (Debian's kernel, busybox, the agent).
    const { prepareKit } = await import('../kit/kit.js');
    const { progressPrinter } = await import('../kit/util.js');
    const progress = progressPrinter(process.stderr);
    const kit = await prepareKit({ onProgress: progress }).finally(() => progress.end());
    templates.push({ name: 'base', kernel: kit.kernel, initrd: kit.initrd, cpus: opts.cpus, memMiB: opts.mem });
  }
  // Every thread of the service under the process-wide seccomp deny-list before its first sandbox
  // (kvm/seccomp-policy.ts; VIREO_SECCOMP=off installs nothing).
  confineVmmProcess(true);
  const serve = await VireoServe.start({
    port: opts.port,
    apiKey: apiKey || undefined,
    templates,
    maxSandboxes: opts.maxSandboxes,
    launcher: bootLauncher({ bootTimeoutMs: opts.bootTimeout * 1000, kvmPath: process.env.VIREO_KVM_DEVICE }),
    log: (l) => process.stderr.write(`vireo serve: ${l}\n`),
  });
  process.stderr.write(
    `vireo serve: listening on ${serve.url}; templates ${templates.map((t) => t.name).join(', ')}${apiKey ? '' : '; API key generated (give --api-key or VIREO_API_KEY to choose one)'}\n`,
  );
  process.stdout.write(`export E2B_API_URL=${serve.url} E2B_SANDBOX_URL=${serve.url} E2B_API_KEY=${serve.apiKey}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  process.stderr.write('vireo serve: stopping; killing its sandboxes\n');
  await serve.close();
  return 0;
}

export interface ClientCliOptions {
  url?: string;
  apiKey?: string;
}

export function serveClient(opts: ClientCliOptions): ServeClient {
  const url =
    opts.url ?? process.env.VIREO_SERVE_URL ?? process.env.E2B_API_URL ?? `http://127.0.0.1:${SERVE_DEFAULT_PORT}`;
  const key = opts.apiKey ?? process.env.VIREO_API_KEY ?? process.env.E2B_API_KEY;
  if (!key) throw new ConfigError("give the service's API key: --api-key KEY, VIREO_API_KEY or E2B_API_KEY");
  return new ServeClient(url, key);
}

export async function sandboxCreate(
  c: ServeClient,
  o: { template: string; timeout?: number; env?: Record<string, string>; metadata?: Record<string, string> },
): Promise<number> {
  const r = await c.create({ template: o.template, timeoutS: o.timeout, envs: o.env, metadata: o.metadata });
  process.stdout.write(`${r.sandboxID}\n`);
  return 0;
}

export async function sandboxLs(c: ServeClient, json: boolean): Promise<number> {
  const all = await c.list();
  if (json) {
    process.stdout.write(`${JSON.stringify(all, null, 2)}\n`);
    return 0;
  }
  const rows = all.map((s) => [
    s.sandboxID,
    s.templateID,
    s.state,
    s.startedAt,
    s.endAt,
    Object.entries(s.metadata ?? {})
      .map(([k, v]) => `${k}=${v}`)
      .join(','),
  ]);
  const head = ['SANDBOX', 'TEMPLATE', 'STATE', 'STARTED', 'ENDS', 'METADATA'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const r of [head, ...rows])
    process.stdout.write(
      `${r
        .map((x, i) => x.padEnd(widths[i]!))
        .join('  ')
        .trimEnd()}\n`,
    );
  return 0;
}

/** Runs a command; its output streams to ours, its exit status is ours. */
export async function sandboxExec(
  c: ServeClient,
  id: string,
  argv: string[],
  o: { cwd?: string; user?: string; env?: Record<string, string>; timeout?: number; stdin?: boolean },
): Promise<number> {
  if (argv.length === 0) throw new ConfigError('vireo sandbox exec ID -- COMMAND...: give a command');
  const sb = await c.sandbox(id);
  const cmd = argv.length === 1 ? argv[0]! : argv.map(shellQuote).join(' ');
  const { CommandExitError } = await import('../sandbox/errors.js');
  try {
    await sb.commands.run(cmd, {
      cwd: o.cwd,
      user: o.user,
      envs: o.env,
      timeoutMs: o.timeout === undefined ? undefined : o.timeout * 1000,
      stdin: o.stdin ? readFileSync(0) : undefined,
      onStdout: (s) => void process.stdout.write(s),
      onStderr: (s) => void process.stderr.write(s),
    });
    return 0;
  } catch (e) {
    if (e instanceof CommandExitError) return e.exitCode > 0 && e.exitCode < 256 ? e.exitCode : 1;
    throw e;
  }
}

const shellQuote = (s: string): string => (/^[A-Za-z0-9_./:=@%+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** `cp LOCAL ID:PATH` uploads, `cp ID:PATH LOCAL` downloads (`-` for stdin/stdout). */
export async function sandboxCp(c: ServeClient, src: string, dst: string): Promise<number> {
  const remote = (s: string) => /^([A-Za-z0-9_-]{1,64}):(\/.*)$/.exec(s);
  const rs = remote(src);
  const rd = remote(dst);
  if ((rs && rd) || (!rs && !rd))
    throw new ConfigError('vireo sandbox cp: one side is ID:/ABSOLUTE/PATH in the sandbox, the other a local file');
  if (rd) {
    const sb = await c.sandbox(rd[1]!);
    const data = src === '-' ? readFileSync(0) : await readAll(src);
    await sb.files.write(rd[2]!, data);
    return 0;
  }
  const sb = await c.sandbox(rs![1]!);
  const bytes = await sb.files.read(rs![2]!, { format: 'bytes' });
  if (dst === '-') process.stdout.write(bytes);
  else writeFileSync(dst, bytes);
  return 0;
}

async function readAll(path: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of createReadStream(path)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function sandboxKill(c: ServeClient, ids: string[]): Promise<number> {
  for (const id of ids) await c.kill(id);
  return 0;
}
