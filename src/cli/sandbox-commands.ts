/**
 * The sandbox commands of `vireo`: image create (qcow2), serve (the local E2B-compatible service),
 * template build, and the sandbox client (create, exec, cp, ls, kill against a running serve).
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { MAX_MEM_MIB, MAX_VCPUS } from '../config/index.js';
import { keyValuesSync, positiveInt } from './args.js';

/** Adds the commands to `program`; `setStatus` takes each command's exit status. */
export function registerSandboxCommands(program: Command, setStatus: (status: number) => void): void {
  program
    .command('image')
    .description('make disk images: vireo image create [--backing BASE] [--size SIZE] OUT.qcow2')
    .command('create')
    .description(
      'write a qcow2 (v3) image: an overlay over BASE (raw or qcow2; its writes stay in OUT, the rest reads from BASE), or an empty one of --size',
    )
    .argument('<out>', 'the image to write (must not exist)')
    .option('--backing <base>', 'the backing image (stored as an absolute path)')
    .option('--size <size>', "virtual size: bytes or with K, M, G, T (default: the backing image's)")
    .action(async (out: string, opts: { backing?: string; size?: string }) => {
      const { imageCreateCommand } = await import('./image.js');
      setStatus(imageCreateCommand(out, opts));
    });

  program
    .command('serve')
    .description(
      "a local sandbox service for E2B's SDK on 127.0.0.1: set E2B_API_URL and E2B_SANDBOX_URL to its URL and E2B_API_KEY to its key (it prints the three)",
    )
    .addOption(
      new Option('--port <n>', 'TCP port on 127.0.0.1 (0: any free one)').default(49982).argParser((v: string) => {
        const n = Number(v);
        if (!/^\d+$/.test(v) || n > 65535) throw new InvalidArgumentError('--port must be 0 to 65535');
        return n;
      }),
    )
    .option(
      '--api-key <key>',
      'the key every control-plane request must carry (default: VIREO_API_KEY, else generated)',
    )
    .option(
      '--template <spec>',
      'NAME=KERNEL,INITRD[,ROOTFS]: what Sandbox.create(NAME) boots, or NAME=DIR: clones of a vireo template build; repeat for more (default base: the guest kit)',
      (v: string, prev: string[]) => [...prev, v],
      [] as string[],
    )
    .addOption(new Option('--cpus <n>', 'vCPUs per sandbox').default(1).argParser(positiveInt('--cpus', MAX_VCPUS)))
    .addOption(
      new Option('--mem <MiB>', 'memory per sandbox in MiB').default(256).argParser(positiveInt('--mem', MAX_MEM_MIB)),
    )
    .addOption(
      new Option('--max-sandboxes <n>', 'sandboxes at once')
        .default(16)
        .argParser(positiveInt('--max-sandboxes', 1024)),
    )
    .addOption(
      new Option('--boot-timeout <s>', "seconds a sandbox's agent may take to answer after boot")
        .default(120)
        .argParser(positiveInt('--boot-timeout', 3600)),
    )
    .action(async (opts: import('./serve.js').ServeCliOptions) => {
      const { serveCommand } = await import('./serve.js');
      setStatus(await serveCommand(opts));
    });

  program
    .command('template')
    .description('templates for sandbox clones: vireo template build --dir DIR [--kernel K --initrd I] [--rootfs R]')
    .command('build')
    .description(
      'boot once, wait for the guest agent, and snapshot it into DIR (with a manifest): Sandbox.create({ template: DIR }) restores clones of it (default: the guest kit)',
    )
    .requiredOption('--dir <dir>', 'where the template goes (made if missing; must not hold one)')
    .option('--kernel <path>', 'kernel to boot (default: the guest kit)')
    .option('--initrd <path>', 'its initramfs, which must start the agent')
    .option(
      '--rootfs <path>',
      'a root disk image: copied into DIR; each clone writes a qcow2 overlay of its own over it',
    )
    .addOption(new Option('--cpus <n>', 'vCPUs').default(1).argParser(positiveInt('--cpus', MAX_VCPUS)))
    .addOption(new Option('--mem <MiB>', 'memory in MiB').default(256).argParser(positiveInt('--mem', MAX_MEM_MIB)))
    .addOption(
      new Option('--boot-timeout <s>', 'seconds the agent may take to answer after boot')
        .default(120)
        .argParser(positiveInt('--boot-timeout', 3600)),
    )
    .action(async (opts: import('./template.js').TemplateBuildCliOptions) => {
      const { templateBuildCommand } = await import('./template.js');
      setStatus(await templateBuildCommand(opts));
    });

  const sandbox = program
    .command('sandbox')
    .description(
      'use a running vireo serve: create, exec, cp, ls, kill (--url, --api-key or VIREO_SERVE_URL, VIREO_API_KEY)',
    )
    .option('--url <url>', 'the service (default VIREO_SERVE_URL, E2B_API_URL or http://127.0.0.1:49982)')
    .option('--api-key <key>', 'its API key (default VIREO_API_KEY or E2B_API_KEY)');
  const client = async () => (await import('./serve.js')).serveClient(sandbox.opts());
  const kv = (v: string, prev?: Record<string, string>) => {
    try {
      return keyValuesSync(v, prev);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
  sandbox
    .command('create')
    .description('create a sandbox and print its id')
    .option('--template <name>', 'template name', 'base')
    .addOption(new Option('--timeout <s>', 'seconds until it is killed').argParser(positiveInt('--timeout', 86_400)))
    .option('--env <K=V>', 'an environment variable for its commands (repeatable)', kv)
    .option('--metadata <K=V>', 'metadata kept with it (repeatable)', kv)
    .action(
      async (o: {
        template: string;
        timeout?: number;
        env?: Record<string, string>;
        metadata?: Record<string, string>;
      }) => {
        setStatus(await (await import('./serve.js')).sandboxCreate(await client(), o));
      },
    );
  sandbox
    .command('exec')
    .description("run a command in a sandbox: vireo sandbox exec ID -- CMD [ARGS...]; the exit status is the command's")
    .argument('<id>')
    .argument('<command...>')
    .option('--cwd <dir>')
    .option('--user <name>')
    .option('-i, --stdin', "give it this command's stdin (read to its end first)")
    .option('--env <K=V>', 'an environment variable (repeatable)', kv)
    .addOption(
      new Option('--timeout <s>', 'kill it after this many seconds').argParser(positiveInt('--timeout', 86_400)),
    )
    .action(
      async (
        id: string,
        command: string[],
        o: { cwd?: string; user?: string; env?: Record<string, string>; timeout?: number },
      ) => {
        setStatus(await (await import('./serve.js')).sandboxExec(await client(), id, command, o));
      },
    );
  sandbox
    .command('cp')
    .description('copy a file: cp LOCAL ID:/PATH uploads, cp ID:/PATH LOCAL downloads (- is stdin/stdout)')
    .argument('<src>')
    .argument('<dst>')
    .action(async (src: string, dst: string) => {
      setStatus(await (await import('./serve.js')).sandboxCp(await client(), src, dst));
    });
  sandbox
    .command('ls')
    .description("list the service's sandboxes")
    .option('--json', 'machine-readable output')
    .action(async (o: { json?: boolean }) => {
      setStatus(await (await import('./serve.js')).sandboxLs(await client(), o.json ?? false));
    });
  sandbox
    .command('kill')
    .description('kill sandboxes (their VMs stop, their files go)')
    .argument('<id...>')
    .action(async (ids: string[]) => {
      setStatus(await (await import('./serve.js')).sandboxKill(await client(), ids));
    });
}
