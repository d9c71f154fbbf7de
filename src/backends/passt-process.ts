/**
 * passt as a child process, the main thread's half of the user-mode network (passt.ts is the I/O
 * thread's). vireo starts passt unprivileged (as root it has passt drop to the invoking sudo user, or
 * to nobody, passt's default), in the foreground, one-off (it ends when vireo's connection does, so a
 * vireo that dies leaves no passt behind), with its socket in a private directory (mode 0700).
 *
 * Supervision: when passt is missing, exits, or refuses or breaks the connection, vireo prints one
 * line, the guest's link goes down (the I/O thread sees the connection end) and passt is started again
 * with a backoff (0.5 s doubling to 30 s; back to 0.5 s after a passt that served 10 s). Each passt
 * that says it listens is published as a generation (PASST_STATE.READY) and the I/O thread is woken
 * to connect to it; the link comes up and one line says so. Never a VMM crash: every failure here is
 * a line and a retry.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { chownSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Disposable } from '../common/lifecycle.js';
import * as sys from '../os/sys.js';
import type { EgressDrop, EgressRules } from './egress.js';
import { hostAddresses } from './egress-address.js';
import { egressDrops, newEgressChannel, writeEgressRules } from './egress-channel.js';
import { PASST_LOST, PASST_STATE, PASST_STATE_SLOTS, type PasstSpec, passtSocketPath } from './passt.js';

/** A host port passt forwards to the guest (config/net.ts's PortForward). */
export interface PasstForward {
  proto: 'tcp' | 'udp';
  hostAddr?: string | undefined;
  hostPort: number;
  guestPort: number;
}

export interface PasstOptions {
  /** The interface's id, for messages. */
  id: string;
  forwards?: readonly PasstForward[] | undefined;
  /** The passt binary: default $VIREO_PASST, else `passt` in PATH. */
  binary?: string | undefined;
  /** Wakes the I/O thread, so the device looks at the connection again. */
  wake: () => void;
  /** Where the one-line reports go (default: stderr). */
  log?: ((line: string) => void) | undefined;
  /** Extra arguments for passt (tests: a log file, an interface). */
  extraArgs?: readonly string[] | undefined;
  /** The egress policy (egress.ts); default: the host's own addresses refused, everything else allowed. */
  egress?: Omit<EgressRules, 'hostNets'> | undefined;
  /** The host's own addresses as the policy sees them (default hostAddresses()). */
  hostNets?: readonly string[] | undefined;
}

/** What the supervisor sees (for the API and tests). */
export interface PasstStatus {
  state: 'starting' | 'up' | 'down' | 'stopped';
  /** The running passt's pid, if any. */
  pid: number | undefined;
  /** Passts started so far. */
  starts: number;
  /** Generation of the passt the I/O thread is connected to (0: none). */
  connected: number;
}

const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/** A passt that served this long resets the backoff. */
const STABLE_MS = 10_000;
/** How often the I/O thread's LOST report is looked at. */
const WATCH_MS = 200;
/** passt prints it once its socket listens (the line before it comes between bind and listen). */
const READY_LINE = 'You can now start qemu';
/** What passt says when all is well (not worth quoting when it exits). */
const BANNER = /^(You can now start qemu|kvm \.\.\.|or qrap|\.\/qrap|UNIX domain socket bound|Don't run as root)/;

const LISTEN_POLL_MS = 100;
/** __SO_ACCEPTCON in /proc/net/unix's Flags column: a listening socket. */
const SO_ACCEPTCON = 0x10000;

/** Whether a Unix socket listens at `path` (this network namespace's /proc/net/unix). */
export function listensAt(path: string): boolean {
  let table: string;
  try {
    table = readFileSync('/proc/net/unix', 'latin1');
  } catch {
    return false;
  }
  for (const line of table.split('\n')) {
    if (!line.endsWith(` ${path}`)) continue;
    const flags = Number.parseInt(line.trim().split(/\s+/)[3] ?? '', 16);
    if (flags & SO_ACCEPTCON) return true;
  }
  return false;
}

/** passt's -t/-u argument for a forward: [ADDR/]HOSTPORT:GUESTPORT. */
export function forwardArg(f: PasstForward): string[] {
  const addr = f.hostAddr === undefined ? '' : `${f.hostAddr}/`;
  return [f.proto === 'tcp' ? '-t' : '-u', `${addr}${f.hostPort}:${f.guestPort}`];
}

/** nobody's uid and gid from /etc/passwd (65534 where it is not listed). */
function nobody(): { uid: number; gid: number } {
  try {
    const line = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('nobody:'));
    const [, , uid, gid] = line?.split(':') ?? [];
    if (uid !== undefined && gid !== undefined && /^\d+$/.test(uid) && /^\d+$/.test(gid))
      return { uid: Number(uid), gid: Number(gid) };
  } catch {
    // no passwd file: the usual numbers
  }
  return { uid: 65534, gid: 65534 };
}

/**
 * Who passt runs as: vireo's own user, or, when vireo is root, the sudo user if there is one, else
 * nobody (passt refuses to stay root). passt binds its socket after it dropped to that user, so the
 * private directory belongs to it.
 */
function runAs(): { args: string[]; uid?: number; gid?: number } {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return { args: [] };
  const sudoUid = Number(process.env.SUDO_UID);
  const sudoGid = Number(process.env.SUDO_GID);
  const who =
    Number.isInteger(sudoUid) && sudoUid > 0 && Number.isInteger(sudoGid) && sudoGid >= 0
      ? { uid: sudoUid, gid: sudoGid }
      : nobody();
  return { args: ['--runas', `${who.uid}:${who.gid}`], ...who };
}

const LOST_TEXT: Record<number, string> = {
  [PASST_LOST.CONNECT]: 'vireo could not connect to its socket',
  [PASST_LOST.CLOSED]: 'it closed the connection',
  [PASST_LOST.ERROR]: 'the connection failed',
  [PASST_LOST.BAD_FRAME]: 'it sent a frame length out of range',
};

export class PasstSupervisor implements Disposable {
  readonly spec: PasstSpec;
  private readonly st: Int32Array;
  private readonly epoll: sys.Epoll;
  private readonly pendingFd: number;
  private readonly log: (line: string) => void;
  private readonly binary: string;
  private readonly runAsArgs: string[];
  private forwards: readonly PasstForward[];
  private readonly hostNets: string[];
  private egressRules: Omit<EgressRules, 'hostNets'>;
  private child: ChildProcess | undefined;
  private gen = 0;
  private starts = 0;
  private backoff = FIRST_BACKOFF_MS;
  private restartTimer: NodeJS.Timeout | undefined;
  private readonly watchTimer: NodeJS.Timeout;
  private startedAt = 0;
  /** An outage was reported and not yet its end. */
  private outage = false;
  /** The next exit is one vireo asked for (new forwards): restart at once, no report. */
  private planned = false;
  private state: PasstStatus['state'] = 'starting';
  /** Callers waiting for a connection to a passt of at least generation `gen`. */
  private waiters: { gen: number; done: (up: boolean) => void }[] = [];
  private disposed = false;

  constructor(private readonly opts: PasstOptions) {
    this.log = opts.log ?? ((l) => process.stderr.write(`${l}\n`));
    this.binary = opts.binary ?? (process.env.VIREO_PASST || 'passt');
    this.forwards = [...(opts.forwards ?? [])];
    this.egressRules = {
      allow: [...(opts.egress?.allow ?? [])],
      deny: [...(opts.egress?.deny ?? [])],
      allowHost: opts.egress?.allowHost ?? false,
    };
    const dir = mkdtempSync(join(tmpdir(), 'vireo-passt-'));
    const who = runAs();
    this.runAsArgs = who.args;
    if (who.uid !== undefined) chownSync(dir, who.uid, who.gid ?? 0);
    this.epoll = new sys.Epoll(1);
    try {
      this.pendingFd = sys.eventfd(0, sys.EFD_NONBLOCK | sys.EFD_CLOEXEC);
      this.epoll.add(this.pendingFd, sys.EPOLLIN, 0);
    } catch (e) {
      this.epoll.close();
      rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    const state = new SharedArrayBuffer(PASST_STATE_SLOTS * 4);
    this.st = new Int32Array(state);
    Atomics.store(this.st, PASST_STATE.FD, -1);
    this.hostNets = [...(opts.hostNets ?? hostAddresses())];
    const egress = newEgressChannel(this.rules(opts.egress));
    this.spec = { id: opts.id, dir, epollFd: this.epoll.fd, pendingFd: this.pendingFd, state, egress };
    this.watchTimer = setInterval(() => this.watch(), WATCH_MS);
    this.watchTimer.unref();
    this.start();
  }

  status(): PasstStatus {
    return {
      state: this.state,
      pid: this.child?.pid,
      starts: this.starts,
      connected: Atomics.load(this.st, PASST_STATE.CONNECTED),
    };
  }

  /** Resolves true once the I/O thread is connected to passt (false after `timeoutMs`, or when disposed). */
  whenUp(timeoutMs = 30_000): Promise<boolean> {
    return this.waitFor(Math.max(this.gen, 1), timeoutMs);
  }

  private waitFor(gen: number, timeoutMs: number): Promise<boolean> {
    if (Atomics.load(this.st, PASST_STATE.CONNECTED) >= gen) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = {
        gen,
        done: (up: boolean): void => {
          clearTimeout(t);
          resolve(up);
        },
      };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(false);
      }, timeoutMs); // not unref'd: a caller that waits keeps Node running until the answer
      this.waiters.push(w);
    });
  }

  private rules(p: Omit<EgressRules, 'hostNets'> | undefined): EgressRules {
    return {
      allow: [...(p?.allow ?? [])],
      deny: [...(p?.deny ?? [])],
      allowHost: p?.allowHost ?? false,
      hostNets: [...this.hostNets],
    };
  }

  /** A new egress policy, applied from the guest's next frame on (no restart, flows keep going). */
  setEgress(p: Omit<EgressRules, 'hostNets'>): void {
    this.egressRules = { allow: [...p.allow], deny: [...p.deny], allowHost: p.allowHost };
    writeEgressRules(this.spec.egress, this.rules(p));
  }

  get currentEgress(): Omit<EgressRules, 'hostNets'> {
    return this.egressRules;
  }

  /** Frames from the guest the egress policy dropped, by reason. */
  egressDrops(): Record<EgressDrop, number> {
    return egressDrops(this.spec.egress);
  }

  get currentForwards(): readonly PasstForward[] {
    return this.forwards;
  }

  /**
   * New port forwards. passt (2023) takes its forwards only on its command line and has no control
   * socket, so this starts a new passt with them: the link goes down and up, and connections through
   * the old passt (the guest's TCP flows, forwarded connections) are reset. Resolves true once the
   * new passt serves.
   */
  setForwards(forwards: readonly PasstForward[], timeoutMs = 30_000): Promise<boolean> {
    if (this.disposed) return Promise.resolve(false);
    this.forwards = [...forwards];
    const up = this.waitFor(this.gen + 1, timeoutMs);
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.planned = true;
      this.child.kill('SIGTERM');
    } else {
      this.clearRestart();
      this.start();
    }
    return up;
  }

  private start(): void {
    if (this.disposed) return;
    const gen = ++this.gen;
    this.starts++;
    this.state = 'starting';
    const path = passtSocketPath(this.spec.dir, gen);
    const args = [
      '--foreground',
      '--stderr',
      '--quiet',
      '--one-off',
      '--socket',
      path,
      ...this.runAsArgs,
      ...this.forwards.flatMap(forwardArg),
      ...(this.opts.extraArgs ?? []),
    ];
    let child: ChildProcess;
    try {
      child = spawn(this.binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      this.failed(`cannot start ${this.binary}: ${(e as Error).message}`);
      return;
    }
    this.child = child;
    this.startedAt = Date.now();
    // Listening is also seen in /proc/net/unix (its ACCEPTCON flag), whatever passt prints or not.
    const poll = setInterval(() => {
      if (child !== this.child || gen !== this.gen || this.disposed) clearInterval(poll);
      else if (listensAt(path)) {
        clearInterval(poll);
        this.listening(gen);
      }
    }, LISTEN_POLL_MS);
    poll.unref();
    const lines: string[] = [];
    let partial = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => {
      const all = (partial + text).split('\n');
      partial = all.pop() ?? '';
      for (const raw of all) {
        const l = raw.trim();
        if (l === '' || /^Failed to send \d+ bytes to syslog/.test(l)) continue;
        if (l.startsWith(READY_LINE) && child === this.child) this.listening(gen);
        lines.push(l);
        if (lines.length > 4) lines.shift();
      }
    });
    child.once('error', (e: NodeJS.ErrnoException) => {
      if (child !== this.child) return;
      this.child = undefined;
      const why =
        e.code === 'ENOENT'
          ? `${this.binary} is not installed (apt-get install passt, or set VIREO_PASST to its path)`
          : `cannot start ${this.binary}: ${e.message}`;
      this.failed(why);
    });
    child.once('exit', (code, signal) => {
      if (child !== this.child) return;
      this.child = undefined;
      Atomics.store(this.st, PASST_STATE.READY, 0);
      this.opts.wake();
      if (this.disposed) return;
      if (this.planned) {
        this.planned = false;
        this.start();
        return;
      }
      if (Date.now() - this.startedAt >= STABLE_MS) this.backoff = FIRST_BACKOFF_MS;
      const status = signal ? `killed by ${signal}` : `status ${code}`;
      const last = lines.filter((l) => !BANNER.test(l)).at(-1);
      // One-off: passt also ends when the I/O thread dropped the connection; that says more.
      const lost = Atomics.load(this.st, PASST_STATE.LOST) === gen;
      const why = lost ? LOST_TEXT[Atomics.load(this.st, PASST_STATE.LOST_REASON)] : undefined;
      this.failed(why ? `passt stopped serving (${why})` : `passt exited (${status}${last ? `: ${last}` : ''})`);
    });
    // Neither passt nor its pipe keeps Node running: the VM's own handles do, and dispose() ends passt.
    (child.stderr as (NodeJS.ReadableStream & { unref?: () => void }) | null)?.unref?.();
    child.unref();
  }

  /** passt said it listens: publish its generation for the I/O thread to connect to. */
  private listening(gen: number): void {
    if (gen !== this.gen || this.disposed || Atomics.load(this.st, PASST_STATE.READY) === gen) return;
    Atomics.store(this.st, PASST_STATE.READY, gen);
    this.opts.wake();
  }

  /** One line per outage, the link down, and a restart after the backoff. */
  private failed(why: string): void {
    if (this.disposed) return;
    this.state = 'down';
    if (!this.outage) {
      this.outage = true;
      this.log(
        `vireo: net ${this.opts.id}: ${why}; the guest's link is down, vireo restarts passt (every ${FIRST_BACKOFF_MS / 1000}-${MAX_BACKOFF_MS / 1000} s) until it serves`,
      );
    }
    this.clearRestart();
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      this.start();
    }, this.backoff);
    this.restartTimer.unref();
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
  }

  private clearRestart(): void {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
  }

  /** Looks at what the I/O thread reported: a connection made, or one lost while passt lives. */
  private watch(): void {
    if (this.disposed) return;
    const connected = Atomics.load(this.st, PASST_STATE.CONNECTED);
    if (connected !== 0 && connected === this.gen && this.state !== 'up') {
      this.state = 'up';
      if (this.outage) {
        this.outage = false;
        this.log(`vireo: net ${this.opts.id}: passt serves again; the guest's link is up`);
      }
    }
    if (connected !== 0)
      this.waiters = this.waiters.filter((w) => {
        if (connected < w.gen) return true;
        w.done(true);
        return false;
      });
    const lost = Atomics.load(this.st, PASST_STATE.LOST);
    if (lost !== 0 && lost === this.gen && this.child) {
      Atomics.store(this.st, PASST_STATE.LOST, 0);
      const why = LOST_TEXT[Atomics.load(this.st, PASST_STATE.LOST_REASON)] ?? 'the connection ended';
      // A passt that is still running after that is refusing or broken: end it; its exit restarts one.
      const child = this.child;
      this.child = undefined;
      Atomics.store(this.st, PASST_STATE.READY, 0);
      child.kill('SIGKILL');
      this.failed(`passt stopped serving (${why})`);
    }
  }

  /**
   * Ends passt and removes its directory; closes the epoll set and eventfd, and a connection the I/O
   * thread left open, so call it once that thread has stopped. Safe to call twice.
   */
  dispose(): void {
    if (this.disposed) return;
    if (process.env.VIREO_VERBOSE)
      this.log(`vireo: net ${this.opts.id}: egress policy dropped ${JSON.stringify(this.egressDrops())}`);
    this.disposed = true;
    this.state = 'stopped';
    clearInterval(this.watchTimer);
    this.clearRestart();
    this.child?.kill('SIGTERM');
    this.child = undefined;
    const fd = Atomics.load(this.st, PASST_STATE.FD);
    if (fd >= 0) {
      Atomics.store(this.st, PASST_STATE.FD, -1);
      sys.close(fd);
    }
    sys.close(this.pendingFd);
    this.epoll.close();
    rmSync(this.spec.dir, { recursive: true, force: true });
    for (const w of this.waiters.splice(0)) w.done(false);
  }
}
