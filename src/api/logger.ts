/**
 * The API's structured log (PUT /logger, --log-path): JSON lines written by pino, one record per event,
 * each with its time, level, instance id, module and message. The level filter, module filter and
 * log-origin switch are Firecracker's; records always carry their level because a JSON consumer
 * filters on it (`show_level` is accepted and reported back in GET /vm/config).
 */
import { closeSync, openSync } from 'node:fs';
import { basename } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { badRequest } from './errors.js';
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

export class ApiLogger {
  private logger: PinoLogger | undefined;
  private fd = -1;
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
        fd = openSync(cfg.log_path, 'a');
      } catch (e) {
        throw badRequest(`Logger error: Failed to open target file: ${(e as Error).message}`);
      }
    }
    this.close();
    if (cfg.log_path !== undefined) this.fd = fd;
    const level = PINO_LEVEL[cfg.level ?? 'Info'];
    this.logger = pino(
      {
        level,
        base: { id: this.instanceId },
        timestamp: pino.stdTimeFunctions.isoTime,
        formatters: { level: (label) => ({ level: label.toUpperCase() }) },
      },
      pino.destination({ dest: fd, sync: true }),
    );
    this.module = cfg.module;
    this.showOrigin = cfg.show_log_origin ?? false;
    this.config = cfg;
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
