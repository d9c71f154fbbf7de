/**
 * `sb.files`: E2B's Filesystem in vireo — read and write through the agent's /files endpoint, the rest
 * through its filesystem.Filesystem service. Each call takes `user` (the sandbox's default user when not
 * given) and `requestTimeoutMs` (the sandbox's requestTimeoutMs when not given).
 */
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError } from '@connectrpc/connect';
import type { AgentClient, AgentWriteInfo } from '../agent/client.js';
import { AgentError, agentErrorFrom } from '../agent/errors.js';
import {
  EventType,
  type EntryInfo as PbEntryInfo,
  FileType as PbFileType,
  type WatchDirResponse,
} from '../agent/gen/filesystem_pb.js';

export type FileType = 'file' | 'dir' | 'symlink';

export interface EntryInfo {
  name: string;
  type?: FileType | undefined;
  path: string;
  size: number;
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  modifiedTime?: Date | undefined;
  symlinkTarget?: string | undefined;
}

export type WriteInfo = AgentWriteInfo;

export type FileData = string | Uint8Array | ArrayBuffer;

export interface WriteEntry {
  path: string;
  data: FileData;
}

export type FilesystemEventType = 'create' | 'write' | 'remove' | 'rename' | 'chmod';

export interface FilesystemEvent {
  name: string;
  type: FilesystemEventType;
  entry?: EntryInfo | undefined;
}

export interface FilesystemRequestOpts {
  user?: string | undefined;
  requestTimeoutMs?: number | undefined;
}

export interface WatchOpts extends FilesystemRequestOpts {
  recursive?: boolean | undefined;
  includeEntry?: boolean | undefined;
  /** Stop watching after this long (ms); none when not given (the keepalive still detects a dead agent). */
  timeoutMs?: number | undefined;
  /** Called once when the watch ends: with the error, or none after stop(). */
  onExit?: ((err?: Error) => void | Promise<void>) | undefined;
}

/** A running watch: stop() ends it. */
export class WatchHandle {
  /** @internal */
  constructor(private readonly stopFn: () => void) {}
  async stop(): Promise<void> {
    this.stopFn();
  }
}

export class Files {
  /** @internal */
  constructor(private readonly agent: AgentClient) {}

  read(path: string, opts?: FilesystemRequestOpts & { format?: 'text' | undefined }): Promise<string>;
  read(path: string, opts: FilesystemRequestOpts & { format: 'bytes' }): Promise<Uint8Array>;
  async read(
    path: string,
    opts: FilesystemRequestOpts & { format?: 'text' | 'bytes' | undefined } = {},
  ): Promise<string | Uint8Array> {
    const bytes = await this.agent.readFile(path, { user: opts.user, timeoutMs: opts.requestTimeoutMs });
    return opts.format === 'bytes' ? bytes : Buffer.from(bytes).toString('utf8');
  }

  /** Writes a file (making its parent directories), replacing what was there; or several, in order. */
  write(path: string, data: FileData, opts?: FilesystemRequestOpts): Promise<WriteInfo>;
  write(files: WriteEntry[], opts?: FilesystemRequestOpts): Promise<WriteInfo[]>;
  async write(
    pathOrFiles: string | WriteEntry[],
    dataOrOpts?: FileData | FilesystemRequestOpts,
    maybeOpts: FilesystemRequestOpts = {},
  ): Promise<WriteInfo | WriteInfo[]> {
    if (Array.isArray(pathOrFiles)) {
      const opts = (dataOrOpts ?? {}) as FilesystemRequestOpts;
      const out: WriteInfo[] = [];
      for (const f of pathOrFiles) out.push(await this.writeOne(f.path, f.data, opts));
      return out;
    }
    return this.writeOne(pathOrFiles, dataOrOpts as FileData, maybeOpts);
  }

  private writeOne(path: string, data: FileData, opts: FilesystemRequestOpts): Promise<WriteInfo> {
    const bytes =
      typeof data === 'string' ? Buffer.from(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data;
    if (!(bytes instanceof Uint8Array))
      throw new AgentError('VIREO_ERR_AGENT', `writing ${path}: give a string, Uint8Array or ArrayBuffer`);
    return this.agent.writeFile(path, bytes, { user: opts.user, timeoutMs: opts.requestTimeoutMs });
  }

  /** The entries of a directory, `depth` levels down (1: its own entries). */
  async list(path: string, opts: FilesystemRequestOpts & { depth?: number | undefined } = {}): Promise<EntryInfo[]> {
    const depth = opts.depth ?? 1;
    if (!Number.isInteger(depth) || depth < 1)
      throw new AgentError('VIREO_ERR_AGENT', `depth ${depth}: give 1 or more`);
    try {
      const r = await this.agent.filesystem.listDir({ path, depth }, this.call(opts));
      return r.entries.map(entry);
    } catch (e) {
      throw agentErrorFrom(e, `listing ${path}`);
    }
  }

  async exists(path: string, opts: FilesystemRequestOpts = {}): Promise<boolean> {
    try {
      await this.agent.filesystem.stat({ path }, this.call(opts));
      return true;
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.NotFound) return false;
      throw agentErrorFrom(e, `checking ${path}`);
    }
  }

  async getInfo(path: string, opts: FilesystemRequestOpts = {}): Promise<EntryInfo> {
    try {
      const r = await this.agent.filesystem.stat({ path }, this.call(opts));
      return entryOf(r.entry, `stat ${path}`);
    } catch (e) {
      throw agentErrorFrom(e, `stat ${path}`);
    }
  }

  /** Makes a directory and its parents; false when it was there already. */
  async makeDir(path: string, opts: FilesystemRequestOpts = {}): Promise<boolean> {
    try {
      await this.agent.filesystem.makeDir({ path }, this.call(opts));
      return true;
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.AlreadyExists) return false;
      throw agentErrorFrom(e, `making ${path}`);
    }
  }

  async remove(path: string, opts: FilesystemRequestOpts = {}): Promise<void> {
    try {
      await this.agent.filesystem.remove({ path }, this.call(opts));
    } catch (e) {
      throw agentErrorFrom(e, `removing ${path}`);
    }
  }

  async rename(oldPath: string, newPath: string, opts: FilesystemRequestOpts = {}): Promise<EntryInfo> {
    try {
      const r = await this.agent.filesystem.move({ source: oldPath, destination: newPath }, this.call(opts));
      return entryOf(r.entry, `moving ${oldPath}`);
    } catch (e) {
      throw agentErrorFrom(e, `moving ${oldPath} to ${newPath}`);
    }
  }

  /**
   * Watches a directory: `onEvent` for each change, from the moment this resolves (the agent's start
   * event) until stop(), the timeout or an error (then onExit gets it).
   */
  async watchDir(
    path: string,
    onEvent: (e: FilesystemEvent) => void | Promise<void>,
    opts: WatchOpts = {},
  ): Promise<WatchHandle> {
    const ac = new AbortController();
    const stream = this.agent.filesystem.watchDir(
      { path, recursive: opts.recursive ?? false, includeEntry: opts.includeEntry ?? false },
      { ...this.agent.callOptions({ user: opts.user, timeoutMs: 0 }), signal: ac.signal },
    );
    const it = stream[Symbol.asyncIterator]() as AsyncIterator<WatchDirResponse>;
    const limit = opts.requestTimeoutMs ?? this.agent.timeouts.requestTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        (async () => {
          for (;;) {
            const r = await it.next();
            if (r.done)
              throw new AgentError('VIREO_ERR_AGENT', `the agent ended the watch of ${path} before it started`);
            if (r.value.event.case === 'start') return;
          }
        })(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(new AgentError('VIREO_ERR_AGENT_TIMEOUT', `watching ${path} did not start within ${limit} ms`)),
            limit,
          );
        }),
      ]);
    } catch (e) {
      ac.abort();
      throw agentErrorFrom(e, `watching ${path}`);
    } finally {
      clearTimeout(timer);
    }
    let stopped = false;
    const life = opts.timeoutMs && opts.timeoutMs > 0 ? setTimeout(() => stop(), opts.timeoutMs) : undefined;
    const stop = () => {
      stopped = true;
      if (life) clearTimeout(life);
      ac.abort();
    };
    void (async () => {
      let err: Error | undefined;
      try {
        for (;;) {
          const r = await it.next();
          if (r.done) break;
          const ev = r.value.event;
          if (ev.case !== 'filesystem') continue;
          const type = EVENT_TYPES[ev.value.type];
          if (type === undefined) continue;
          await onEvent({ name: ev.value.name, type, entry: ev.value.entry ? entry(ev.value.entry) : undefined });
        }
      } catch (e) {
        if (!stopped) err = agentErrorFrom(e, `watching ${path}`);
      } finally {
        if (life) clearTimeout(life);
      }
      await opts.onExit?.(err);
    })().catch(() => undefined);
    return new WatchHandle(stop);
  }

  private call(opts: FilesystemRequestOpts) {
    return this.agent.callOptions({ user: opts.user, timeoutMs: opts.requestTimeoutMs });
  }
}

const EVENT_TYPES: Partial<Record<EventType, FilesystemEventType>> = {
  [EventType.CREATE]: 'create',
  [EventType.WRITE]: 'write',
  [EventType.REMOVE]: 'remove',
  [EventType.RENAME]: 'rename',
  [EventType.CHMOD]: 'chmod',
};

const FILE_TYPES: Partial<Record<PbFileType, FileType>> = {
  [PbFileType.FILE]: 'file',
  [PbFileType.DIRECTORY]: 'dir',
  [PbFileType.SYMLINK]: 'symlink',
};

function entryOf(e: PbEntryInfo | undefined, what: string): EntryInfo {
  if (!e) throw new AgentError('VIREO_ERR_AGENT', `the agent answered ${what} without the entry`);
  return entry(e);
}

function entry(e: PbEntryInfo): EntryInfo {
  return {
    name: e.name,
    type: FILE_TYPES[e.type],
    path: e.path,
    size: Number(e.size),
    mode: e.mode,
    permissions: e.permissions,
    owner: e.owner,
    group: e.group,
    modifiedTime: e.modifiedTime ? timestampDate(e.modifiedTime) : undefined,
    symlinkTarget: e.symlinkTarget,
  };
}
