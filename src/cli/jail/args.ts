/**
 * vireo-jailer's command line: Firecracker's jailer flags (docs/jailer.md), parsed and validated whole
 * before anything is created, so that bad input gets one line and leaves nothing behind. Names, defaults
 * and messages follow Firecracker's jailer (its arg_parser and env.rs); where vireo differs, the comment
 * says so.
 */
import { realpathSync, statfsSync, statSync } from 'node:fs';
import { basename, isAbsolute } from 'node:path';
import { VireoError } from '../../common/errors.js';

export class JailerError extends VireoError {
  override name = 'JailerError';
  constructor(message: string) {
    super('VIREO_ERR_CONFIG', message);
  }
}

export const DEFAULT_CHROOT_BASE = '/srv/jailer';
/** Firecracker's jailer bounds no-file to 2048 when no --resource-limit names it. */
export const DEFAULT_NO_FILE = 2048;
const NSFS_MAGIC = 0x6e736673;

export interface CgroupSetting {
  /** `<controller>.<property>`, e.g. memory.max or cpu.shares. */
  file: string;
  controller: string;
  value: string;
}

export interface JailerConfig {
  id: string;
  /** The exec file as given (its last component names the chroot folder) and canonicalized. */
  execFile: string;
  execFileReal: string;
  execFileName: string;
  uid: number;
  gid: number;
  chrootBaseDir: string;
  /** `<chroot_base>/<exec_file_name>/<id>/root`. */
  chrootDir: string;
  netns?: string;
  daemonize: boolean;
  newPidNs: boolean;
  cgroups: CgroupSetting[];
  /** 1 or 2; undefined: chosen from the host (see cgroup.ts). */
  cgroupVersion?: 1 | 2;
  parentCgroup: string;
  resourceLimits: { fsize?: bigint; noFile: bigint };
  extraArgs: string[];
}

interface Flag {
  value: boolean;
  multiple?: boolean;
  help: string;
}

const FLAGS: Record<string, Flag> = {
  id: { value: true, help: 'Jail ID (letters, digits and hyphens, at most 64).' },
  'exec-file': { value: true, help: 'File path to exec into (vireo-firecracker, bin/firecracker.js).' },
  uid: { value: true, help: 'The user identifier the jailer switches to after exec.' },
  gid: { value: true, help: 'The group identifier the jailer switches to after exec.' },
  'chroot-base-dir': {
    value: true,
    help: `The base folder where chroot jails are located (default ${DEFAULT_CHROOT_BASE}).`,
  },
  netns: { value: true, help: 'Path to the network namespace this microVM should join.' },
  daemonize: { value: false, help: 'Daemonize before exec: setsid() and standard I/O to /dev/null.' },
  'new-pid-ns': { value: false, help: 'Exec into a new PID namespace.' },
  cgroup: {
    value: true,
    multiple: true,
    help: 'Cgroup file and value, <cgroup_file>=<value> (e.g. memory.max=256M); repeatable.',
  },
  'cgroup-version': {
    value: true,
    help: 'The cgroup version, 1 or 2 (default: 2 where the host offers the controllers asked for, else 1).',
  },
  'parent-cgroup': {
    value: true,
    help: 'Parent cgroup (relative path) in which the cgroup of this microVM is placed.',
  },
  'resource-limit': {
    value: true,
    multiple: true,
    help: 'Resource limit, fsize=<bytes> or no-file=<count>; repeatable.',
  },
  version: { value: false, help: 'Print the binary version number.' },
  help: { value: false, help: 'Print this help.' },
};

export function helpText(): string {
  const lines = Object.entries(FLAGS).map(([n, f]) => `  --${n}${f.value ? ' <value>' : ''}\n      ${f.help}`);
  return `usage: vireo-jailer --id <id> --exec-file <exec_file> --uid <uid> --gid <gid> [options] [-- <VMM arguments>]\n\n${lines.join('\n')}\n`;
}

/** Firecracker's parser: `--name value` or `--name=value`; only --cgroup and --resource-limit repeat; `--` ends the options. */
export function parseJailerArgv(argv: readonly string[]): { flags: Map<string, string[] | true>; extra: string[] } {
  const flags = new Map<string, string[] | true>();
  let i = 0;
  for (; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === '--') {
      i++;
      break;
    }
    if (!arg.startsWith('--'))
      throw new JailerError(`Found argument '${arg}' which wasn't expected, or isn't valid in this context.`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const flag = FLAGS[name];
    if (!flag) throw new JailerError(`Found argument '${arg}' which wasn't expected, or isn't valid in this context.`);
    if (flags.has(name) && !flag.multiple)
      throw new JailerError(`The argument '--${name}' was provided more than once.`);
    if (!flag.value) {
      if (eq >= 0) throw new JailerError(`The argument '--${name}' does not take a value.`);
      flags.set(name, true);
      continue;
    }
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || (eq < 0 && value.startsWith('--')))
      throw new JailerError(`The argument '--${name}' requires a value, but none was supplied.`);
    const prev = flags.get(name);
    flags.set(name, Array.isArray(prev) ? [...prev, value] : [value]);
  }
  return { flags, extra: argv.slice(i) as string[] };
}

/** Firecracker's validate_instance_id. */
export function validateId(id: string): void {
  if (id.length < 1 || id.length > 64)
    throw new JailerError(`Invalid instance ID: invalid len (${id.length}); the length must be between 1 and 64`);
  const bad = [...id].findIndex((c) => !/[A-Za-z0-9-]/.test(c));
  if (bad >= 0) throw new JailerError(`Invalid instance ID: invalid char (${[...id][bad]}) at position ${bad}`);
}

/** A uid or gid: a u32 as Firecracker parses it, but not 4294967295, which the kernel reads as "unchanged". */
function u32(text: string, what: 'uid' | 'gid'): number {
  if (!/^\d{1,10}$/.test(text) || Number(text) > 0xffffffff) throw new JailerError(`Invalid ${what}: ${text}`);
  if (Number(text) === 0xffffffff)
    throw new JailerError(`Invalid ${what}: ${text} (the kernel reads (${what}_t)-1 as "leave unchanged")`);
  return Number(text);
}

function canonical(path: string): string {
  try {
    return realpathSync(path);
  } catch (e) {
    throw new JailerError(`Failed to canonicalize path ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

function parseCgroup(arg: string): CgroupSetting {
  const parts = arg.split('=');
  if (parts.length !== 2 || !parts[1]) throw new JailerError(`Invalid format for cgroups: ${arg}`);
  const file = parts[0] as string;
  const dot = file.split('.');
  if (dot.length < 2 || !dot[0] || dot.some((p) => !/^[A-Za-z0-9_]+$/.test(p)))
    throw new JailerError(`Cgroup invalid file: ${file} (expected <controller>.<property>, e.g. memory.max)`);
  return { file, controller: dot[0], value: parts[1] as string };
}

function parseResourceLimits(args: readonly string[]): JailerConfig['resourceLimits'] {
  const out: JailerConfig['resourceLimits'] = { noFile: BigInt(DEFAULT_NO_FILE) };
  for (const arg of args) {
    const eq = arg.indexOf('=');
    if (eq < 0) throw new JailerError(`Invalid format for resources limits: ${arg}`);
    const name = arg.slice(0, eq);
    const value = arg.slice(eq + 1);
    if (!/^\d{1,20}$/.test(value) || BigInt(value) > 0xffffffffffffffffn)
      throw new JailerError(`Invalid limit value for resource: ${value}: not a whole number`);
    if (name === 'fsize') out.fsize = BigInt(value);
    else if (name === 'no-file') out.noFile = BigInt(value);
    else throw new JailerError(`Invalid resource argument: ${name} (fsize or no-file)`);
  }
  return out;
}

/** The whole command line, checked against the host (paths exist, netns is a namespace); creates nothing. */
export function jailerConfig(argv: readonly string[]): JailerConfig {
  const { flags, extra } = parseJailerArgv(argv);
  const one = (name: string): string | undefined => {
    const v = flags.get(name);
    return Array.isArray(v) ? v[0] : undefined;
  };
  const required = (name: string): string => {
    const v = one(name);
    if (v === undefined) throw new JailerError(`Argument '${name}' required, but not found.`);
    return v;
  };
  const id = required('id');
  validateId(id);
  const execFile = required('exec-file');
  const execFileReal = canonical(execFile);
  if (!statSync(execFileReal).isFile()) throw new JailerError(`${execFileReal} is not a file`);
  // Firecracker names the chroot folder after the canonical path's last component; vireo takes the
  // name as given, so `--exec-file /usr/bin/firecracker` (a link to bin/firecracker.js) gives the
  // /srv/jailer/firecracker/<id>/root that launchers made for Firecracker expect.
  const execFileName = basename(execFile);
  if (!execFileName || execFileName === '.' || execFileName === '..')
    throw new JailerError(`Failed to extract filename from path ${execFile}`);
  const uid = u32(required('uid'), 'uid');
  const gid = u32(required('gid'), 'gid');
  const chrootBaseDir = canonical(one('chroot-base-dir') ?? DEFAULT_CHROOT_BASE);
  if (!statSync(chrootBaseDir).isDirectory()) throw new JailerError(`${chrootBaseDir} is not a directory`);
  const netns = one('netns');
  if (netns !== undefined) {
    let type: number;
    try {
      type = statfsSync(netns).type;
    } catch (e) {
      throw new JailerError(`Failed to open file ${netns}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
    if (type !== NSFS_MAGIC)
      throw new JailerError(`${netns} is not a namespace file (expected /var/run/netns/NAME or /proc/PID/ns/net)`);
  }
  const version = one('cgroup-version');
  if (version !== undefined && version !== '1' && version !== '2')
    throw new JailerError(`${version} is an invalid cgroup version specifier`);
  const parentCgroup = one('parent-cgroup') ?? execFileName;
  if (isAbsolute(parentCgroup) || parentCgroup.split('/').some((c) => c === '.' || c === '..' || c === ''))
    throw new JailerError("Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'");
  const cg = flags.get('cgroup');
  const rl = flags.get('resource-limit');
  return {
    id,
    execFile,
    execFileReal,
    execFileName,
    uid,
    gid,
    chrootBaseDir,
    chrootDir: `${chrootBaseDir}/${execFileName}/${id}/root`,
    ...(netns !== undefined ? { netns } : {}),
    daemonize: flags.has('daemonize'),
    newPidNs: flags.has('new-pid-ns'),
    cgroups: (Array.isArray(cg) ? cg : []).map(parseCgroup),
    ...(version !== undefined ? { cgroupVersion: Number(version) as 1 | 2 } : {}),
    parentCgroup,
    resourceLimits: parseResourceLimits(Array.isArray(rl) ? rl : []),
    extraArgs: extra,
  };
}
