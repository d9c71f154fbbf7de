/**
 * The API's structured log (PUT /logger, --log-path): JSON lines written by pino, one record per event,
 * each with its time, level, instance id, module and message. The level filter, module filter and
 * log-origin switch are Firecracker's; records always carry their level because a JSON consumer
 * filters on it (`show_level` is accepted and reported back in GET /vm/config).
 *
 * Logging never stalls nor ends the API: the file is opened non-blocking (a FIFO too, as Firecracker
 * opens it), a record its reader has no room for is dropped and counted (`missed_log_count`), and a
 * failing write (a full disk: ENOSPC, EIO) is counted (`log_fails`) and reported once on stderr.
 */
import { closeSync } from 'node:fs';
import { basename } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { openOutputFile, writeOrDrop } from '../backends/output-file.js';
import { guardStderr } from '../common/stdio.js';
import { badRequest, osErrorText } from './errors.js';
import type { LoggerConfig, LoggerLevel } from './types.js';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace';

const PINO_LEVEL: Record<LoggerLevel, LogLevel | 'silent'> = {
  Error: 'error',
  Warning: 'warn',
  Info: 'info',
  Debug: 'debug',
  Trace: 'trace',
  Off: 'silent',
};

/** Firecracker takes level names in any case ("warning", "WARN" is not one of them). */
export function parseLevel(v: string): LoggerLevel | undefined {
  const hit = (Object.keys(PINO_LEVEL) as LoggerLevel[]).find((l) => l.toLowerCase() === v.toLowerCase());
  return hit;
}

/** Where the log call came from (file:line), for show_log_origin. */
function callerOrigin(): string | undefined {
  const lines = new Error().stack?.split('\n') ?? [];
  // [0] "Error", [1] callerOrigin, [2] ApiLogger.log, [3] the shortcut or the caller, [4] the caller
  for (const line of lines.slice(3)) {
    if (line.includes('/api/logger.')) continue;
    const m = /\(?([^()\s]+):(\d+):\d+\)?$/.exec(line.trim());
    if (m) return `${basename(m[1] ?? '')}:${m[2]}`;
  }
  return undefined;
}

/** Firecracker's `logger` metrics for the log (the metrics file adds its own two). */
export interface LogWriteCounters {
  /** Records dropped because the log's reader was behind (a full FIFO or pipe). */
  missed_log_count: number;
  /** Records whose write failed (ENOSPC, EIO, EBADF, ...). */
  log_fails: number;
}

/**
 * Writes one line to stderr without ever throwing or ending the process (stderr itself may be gone).
 * A failed write to process.stderr (ENOSPC on a full disk, EPIPE on a closed pipe) is not thrown: it
 * comes as an 'error' event, which with no listener ends the process. The one listener added here
 * drops it: the log's own failure is counted already, and there is nowhere left to report this one.
 */
export function reportOnce(line: string): void {
  guardStderr();
  try {
    process.stderr.write(`${line}\n`);
  } catch {
    // nowhere left to report to
  }
}

export class ApiLogger {
  private logger: PinoLogger | undefined;
  private fd = -1;
  private target = '';
  private reportedFailure = false;
  readonly counters: LogWriteCounters = { missed_log_count: 0, log_fails: 0 };
  private module: string | undefined;
  private showOrigin = false;
  /** The configuration as given (GET /vm/config reports it). */
  config: LoggerConfig | undefined;

  constructor(private readonly instanceId: string) {}

  /**
   * Applies a logger configuration: opens (appends to) log_path, or writes to `fallbackFd` (stderr in
   * the CLI) when there is none. Throws a 400 ApiError when the file cannot be opened.
   */
  async configure(cfg: LoggerConfig, fallbackFd = 2): Promise<void> {
    const { pino } = await import('pino');
    let fd = fallbackFd;
    if (cfg.log_path !== undefined) {
      try {
        fd = openOutputFile(cfg.log_path, 'append');
      } catch (e) {
        throw badRequest(`Logger error: Failed to open target file: ${osErrorText(e)}`);
      }
    }
    this.close();
    if (cfg.log_path !== undefined) this.fd = fd;
    this.target = cfg.log_path ?? `fd ${fd}`;
    this.reportedFailure = false;
    const level = PINO_LEVEL[cfg.level ?? 'Info'];
    this.logger = pino(
      {
        level,
        base: { id: this.instanceId },
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label.toUpperCase() }) },
      },
      // Not pino.destination: its synchronous writes wait out a full FIFO and throw on ENOSPC.
      { write: (line: string) => this.writeLine(fd, line) },
    );
    this.module = cfg.module;
    this.showOrigin = cfg.show_log_origin ?? false;
    this.config = cfg;
  }

  /** One record, written now or dropped: never waits for the reader, never throws. */
  private writeLine(fd: number, line: string): void {
    const r = writeOrDrop(fd, Buffer.from(line));
    if (r.kind === 'written') return;
    if (r.kind === 'full') {
      this.counters.missed_log_count++;
      return;
    }
    this.counters.log_fails++;
    if (!this.reportedFailure)
      reportOnce(
        `vireo: cannot write the log to ${this.target}: ${r.code}; records are dropped and counted (logger.log_fails in the metrics)`,
      );
    this.reportedFailure = true;
  }

  get enabled(): boolean {
    return this.logger !== undefined;
  }

  /** One record; `module` is a Firecracker-style path ("api_server::request", "vmm"). */
  log(level: LogLevel, module: string, msg: string, fields: Record<string, unknown> = {}): void {
    const l = this.logger;
    if (!l?.isLevelEnabled(level)) return;
    if (this.module !== undefined && !module.startsWith(this.module)) return;
    const origin = this.showOrigin ? callerOrigin() : undefined;
    l[level]({ module, ...(origin ? { origin } : {}), ...fields }, msg);
  }

  error(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log('error', module, msg, fields);
  }
  warn(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log('warn', module, msg, fields);
  }
  info(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log('info', module, msg, fields);
  }
  debug(module: string, msg: string, fields?: Record<string, unknown>): void {
    this.log('debug', module, msg, fields);
  }

  /** Closes the log file (records after this are dropped until the next configure). */
  close(): void {
    this.logger?.flush();
    this.logger = undefined;
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}
