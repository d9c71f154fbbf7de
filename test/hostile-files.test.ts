/**
 * Output and input paths that are not plain files (issue 16, items 2, 3 and 10): FIFOs with no
 * reader or a reader that stopped, a full file system, /dev/full, a binary configuration file, a
 * stdout nobody reads. None may block the API's event loop or a VMM thread, end the process, or keep
 * SIGTERM from ending it. Every request and every process here has a hard timeout, so a regression
 * fails instead of hanging the suite.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestPath } from './guests/build.js';
import {
  type FirecrackerProcess,
  fcRequest,
  firecrackerBin,
  startFirecracker,
  waitForPath,
} from './support/fc-client.js';
import { kvmSkipReason, vireoBin } from './support/vireo.js';

const skip = kvmSkipReason();
const tmp = mkdtempSync(join(tmpdir(), 'vireo-hostile-files-'));
const f = (name: string): string => join(tmp, name);
const processes: FirecrackerProcess[] = [];
const fds: number[] = [];
const mounts: string[] = [];
after(() => {
  for (const p of processes) p.kill();
  for (const fd of fds) closeSync(fd);
  for (const m of mounts) spawnSync('umount', ['-l', m]);
});

function fifo(name: string): string {
  const path = f(name);
  const r = spawnSync('mkfifo', [path]);
  assert.equal(r.status, 0, `mkfifo ${path}: ${r.stderr}`);
  return path;
}

/** `p`, or a failure naming `what` after `ms` (a request that never comes back is the bug here). */
async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, expired]);
  } finally {
    clearTimeout(timer);
  }
}

const REQUEST_MS = 5000;
async function req(fc: FirecrackerProcess, method: string, path: string, body?: unknown) {
  try {
    return await within(REQUEST_MS, `${method} ${path}`, fcRequest(fc.socket, method, path, body));
  } catch (e) {
    throw new Error(`${method} ${path}: ${(e as Error).message}; vireo-firecracker's stderr: ${fc.stderr()}`);
  }
}

async function startApi(name: string): Promise<FirecrackerProcess> {
  const socket = f(`${name}.sock`);
  const fc = await startFirecracker(['--api-sock', socket], { socket });
  processes.push(fc);
  return fc;
}

/** vireo-firecracker with `stderrFd` as its fd 2 (startApi gives it a pipe the test drains). */
async function startApiOnStderr(
  name: string,
  args: string[],
  stderrFd: number,
  what: string,
): Promise<FirecrackerProcess> {
  const socket = f(`${name}.sock`);
  const child = spawn(process.execPath, [firecrackerBin, '--api-sock', socket, ...args], {
    stdio: ['ignore', 'ignore', stderrFd],
  });
  const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
  const fc: FirecrackerProcess = {
    socket,
    pid: child.pid,
    stdout: () => '',
    stderr: () => what,
    type: () => undefined,
    exited,
    kill: () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
  processes.push(fc);
  await within(
    15_000,
    `${name}: the API socket`,
    Promise.race([waitForPath(socket), exited.then((c) => Promise.reject(new Error(`exited with ${c}`)))]),
  );
  return fc;
}

/** SIGTERM, then the exit status (a process that ignores it fails the test after `ms`). */
async function terminate(fc: FirecrackerProcess, ms = 10_000): Promise<number | null> {
  assert.ok(fc.pid !== undefined);
  process.kill(fc.pid, 'SIGTERM');
  return within(ms, 'the exit after SIGTERM', fc.exited);
}

function prometheusCounter(text: string, counter: string): number {
  const m = new RegExp(`^vireo_logger_events_total\\{counter="${counter}"\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : -1;
}

describe('logs and metrics onto hostile paths (no guest)', () => {
  test('a log FIFO whose reader stopped reading: every request is answered, records are dropped and counted', async () => {
    const log = fifo('stalled-log.fifo');
    // The reader opens the FIFO and never reads: the pipe fills after some 200 records.
    fds.push(openSync(log, constants.O_RDONLY | constants.O_NONBLOCK));
    const fc = await startApi('stalled');
    assert.equal((await req(fc, 'PUT', '/logger', { log_path: log, level: 'Info' })).status, 204);
    for (let i = 0; i < 800; i++) assert.equal((await req(fc, 'GET', '/')).status, 200, `request ${i}`);
    const prom = await req(fc, 'GET', '/metrics/prometheus');
    assert.ok(prometheusCounter(prom.text, 'missed_log_count') > 0, prom.text);
    assert.equal(prometheusCounter(prom.text, 'log_fails'), 0);
    assert.equal(await terminate(fc), 0);
  });

  test('PUT /logger and PUT /metrics onto FIFOs nobody opened: answered at once; SIGTERM ends the process', async () => {
    const fc = await startApi('noreader');
    // No reader at all: a blocking open(2) waits for one forever, and SIGTERM's handler never runs.
    assert.equal((await req(fc, 'PUT', '/logger', { log_path: fifo('log-noreader.fifo'), level: 'Info' })).status, 204);
    assert.equal((await req(fc, 'PUT', '/metrics', { metrics_path: fifo('metrics-noreader.fifo') })).status, 204);
    for (let i = 0; i < 400; i++) assert.equal((await req(fc, 'GET', '/')).status, 200, `request ${i}`);
    assert.equal(await terminate(fc), 0);
  });

  test('a log on a full file system (a 64 KiB tmpfs): every request answered, failures counted, reported once', async () => {
    const mnt = f('full');
    mkdirSync(mnt);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { encoding: 'utf8' });
    assert.equal(m.status, 0, `mount a 64 KiB tmpfs (the test runs as root): ${m.stderr}`);
    mounts.push(mnt);
    const fc = await startApi('full');
    assert.equal((await req(fc, 'PUT', '/logger', { log_path: join(mnt, 'log'), level: 'Info' })).status, 204);
    for (let i = 0; i < 600; i++) assert.equal((await req(fc, 'GET', '/')).status, 200, `request ${i}`);
    const prom = await req(fc, 'GET', '/metrics/prometheus');
    assert.ok(prometheusCounter(prom.text, 'log_fails') > 0, prom.text);
    assert.equal(await terminate(fc), 0);
    const reports = fc
      .stderr()
      .split('\n')
      .filter((l) => l.includes('cannot write the log'));
    assert.equal(reports.length, 1, fc.stderr());
    assert.match(reports[0] ?? '', /ENOSPC/);
  });

  test('the log on stderr (no log_path) that nobody reads: every request is answered, records dropped and counted', async () => {
    // A blocking pipe as the process's fd 2 (as a supervisor that never drains stderr gives it): the
    // reader end is open and never read, the writer end is a blocking description of its own.
    const pipe = fifo('stderr.fifo');
    const reader = openSync(pipe, constants.O_RDONLY | constants.O_NONBLOCK);
    fds.push(reader);
    const writer = openSync(pipe, constants.O_WRONLY);
    fds.push(writer);
    // Full already (a supervisor that restarts the VMM onto the same undrained pipe): even the first
    // record, written before anything else in the process touched stderr, must not wait.
    const filler = openSync(pipe, constants.O_WRONLY | constants.O_NONBLOCK);
    fds.push(filler);
    for (let full = false; !full; )
      try {
        writeSync(filler, Buffer.alloc(4096, 0x2e));
      } catch {
        full = true;
      }
    const fc = await startApiOnStderr('stderr-log', ['--level', 'Debug'], writer, '(a pipe nobody reads)');
    for (let i = 0; i < 300; i++) assert.equal((await req(fc, 'GET', '/')).status, 200, `request ${i}`);
    const prom = await req(fc, 'GET', '/metrics/prometheus');
    assert.ok(prometheusCounter(prom.text, 'missed_log_count') > 0, prom.text);
    assert.equal(await terminate(fc), 0);
  });

  test('stderr itself failing (/dev/full) while logs and metrics fail too: never fatal, every request answered', async () => {
    // The log on stderr (no log_path) and the metrics on /dev/full: each failure is reported once on
    // stderr, whose write fails as well (ENOSPC; EPIPE for a closed pipe). Node reports a failed
    // stderr write as an 'error' event, not a throw: with no listener it ended the process (status 1).
    const full = openSync('/dev/full', 'w');
    fds.push(full);
    const fc = await startApiOnStderr('stderr-full', ['--level', 'Info'], full, '(/dev/full)');
    assert.equal((await req(fc, 'PUT', '/metrics', { metrics_path: '/dev/full' })).status, 204);
    for (let i = 0; i < 50; i++) assert.equal((await req(fc, 'GET', '/')).status, 200, `request ${i}`);
    const prom = await req(fc, 'GET', '/metrics/prometheus');
    assert.ok(prometheusCounter(prom.text, 'log_fails') > 0, prom.text);
    assert.equal(await terminate(fc), 0);
  });

  test('--boot-timer with stderr on /dev/full: the line at the first guest exit fails, the VMM lives on', async () => {
    // The boot-timer line is written to stderr when the guest first exits, outside the logger's guard:
    // a failed write there came as an unhandled 'error' event and ended the VMM with its guest.
    const full = openSync('/dev/full', 'w');
    fds.push(full);
    const fc = await startApiOnStderr('boot-timer-full', ['--level', 'Off', '--boot-timer'], full, '(/dev/full)');
    assert.equal((await req(fc, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
    assert.equal(
      (await req(fc, 'PUT', '/boot-source', { kernel_image_path: guestPath('modes64'), boot_args: 'e' })).status,
      204,
    );
    assert.equal((await req(fc, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    await sleep(1500); // the guest's first exit and the boot-timer line
    for (let i = 0; i < 5; i++) assert.equal((await req(fc, 'GET', '/')).status, 200, `request ${i} after the boot`);
    assert.equal(await terminate(fc), 0);
  });

  test('metrics onto /dev/full: the failed line is reported once, never fatal', async () => {
    const fc = await startApi('devfull');
    assert.equal((await req(fc, 'PUT', '/metrics', { metrics_path: '/dev/full' })).status, 204);
    assert.equal((await req(fc, 'GET', '/')).status, 200);
    // SIGTERM writes a last metrics line, which /dev/full refuses (ENOSPC).
    assert.equal(await terminate(fc), 0);
    const reports = fc
      .stderr()
      .split('\n')
      .filter((l) => l.includes('cannot write metrics'));
    assert.equal(reports.length, 1, fc.stderr());
    assert.match(reports[0] ?? '', /ENOSPC/);
  });
});

describe('configuration files that are not files', () => {
  const run = (args: string[]) =>
    spawnSync(process.execPath, [firecrackerBin, ...args], {
      encoding: 'latin1',
      timeout: 20_000,
      killSignal: 'SIGKILL',
      input: '',
    });

  test('--config-file naming a FIFO, a directory or /dev/zero: one line, exit 152, no wait for a writer', () => {
    for (const path of [fifo('config.fifo'), tmp, '/dev/zero']) {
      const r = run(['--no-api', '--config-file', path]);
      assert.equal(r.signal, null, `${path}: ended by ${r.signal} (it blocked)`);
      assert.equal(r.status, 152, `${path}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /is not a regular file/);
    }
  });

  test('a binary configuration file: the message quotes an escaped, bounded excerpt', () => {
    const bytes = Buffer.alloc(4096);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 151 + 7) & 0xff;
    bytes[0] = 0x1b; // ESC first: a raw one would drive the user's terminal
    writeFileSync(f('garbage.json'), bytes);
    const r = run(['--no-api', '--config-file', f('garbage.json')]);
    assert.equal(r.status, 152, r.stderr);
    assert.match(r.stderr, /is not valid JSON/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    // Printable ASCII only (latin1 shows every byte as it came).
    assert.match(r.stderr.trimEnd(), /^[\x20-\x7e]*$/, JSON.stringify(r.stderr));
    assert.ok(r.stderr.length < 600, `bounded: ${r.stderr.length} characters`);
    assert.match(r.stderr, /\\x1b/);
  });

  test('valid JSON whose keys or values hold control characters: the message escapes them, one line', () => {
    const evil = '\u001b[2Jevil\nsecond line';
    const docs: [doc: unknown, says: RegExp][] = [
      // The schema check quotes an unknown key.
      [{ 'boot-source': { kernel_image_path: '/x' }, [evil]: 1 }, /\\x1b\[2Jevil\\x0asecond line/],
      // A section's failure on such a path: the OS error as Firecracker words it (no path quoted).
      [
        {
          'boot-source': { kernel_image_path: `/nonexistent/${evil}` },
          'machine-config': { vcpu_count: 1, mem_size_mib: 16 },
        },
        /boot-source: Boot source error: The kernel file cannot be opened: No such file or directory \(os error 2\)$/,
      ],
    ];
    docs.forEach(([doc, says], i) => {
      const path = f(`controls-${i}.json`);
      writeFileSync(path, JSON.stringify(doc));
      const r = run(['--no-api', '--config-file', path]);
      assert.equal(r.status, 152, r.stderr);
      assert.equal(r.stderr.trim().split('\n').length, 1, JSON.stringify(r.stderr));
      assert.ok(!r.stderr.includes('\u001b'), JSON.stringify(r.stderr));
      assert.match(r.stderr.trimEnd(), says);
    });
  });
});

describe('console outputs that are not files', { skip, timeout: 120_000 }, () => {
  test('PUT /serial onto a FIFO nobody opened, then InstanceStart: the API answers; SIGTERM ends it', async () => {
    const fc = await startApi('serial');
    const serial = fifo('serial.fifo');
    assert.equal((await req(fc, 'PUT', '/serial', { serial_out_path: serial })).status, 204);
    assert.equal(
      (await req(fc, 'PUT', '/boot-source', { kernel_image_path: guestPath('flood64'), boot_args: '' })).status,
      204,
    );
    assert.equal((await req(fc, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
    assert.equal((await req(fc, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    // The guest's 76 KiB fill the FIFO (64 KiB); what does not fit is dropped, and the API answers on.
    const dropped = /vireo_vcpu_events_total\{kind="serial_output_dropped"\} [1-9]/;
    let prom = await req(fc, 'GET', '/metrics/prometheus');
    for (let i = 0; i < 100 && !dropped.test(prom.text); i++) {
      await sleep(100);
      prom = await req(fc, 'GET', '/metrics/prometheus');
    }
    assert.match(prom.text, dropped);
    const info = await req(fc, 'GET', '/');
    assert.equal((info.json as { state?: string }).state, 'Running');
    assert.equal(await terminate(fc), 0);
  });

  test('vireo run --serial file:FIFO (nobody reading): the guest runs and its status is the exit status', () => {
    const r = spawnSync(
      process.execPath,
      [vireoBin, 'run', '--kernel', guestPath('hello64'), '--serial', `file:${fifo('run-serial.fifo')}`],
      { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL', input: '' },
    );
    assert.equal(r.signal, null, `ended by ${r.signal}: it blocked in open(2)`);
    assert.equal(r.status, 33, r.stderr);
  });

  test('--serial stdio onto a stdout nobody reads: no core spent on it, and SIGTERM ends the process', async () => {
    const out = fifo('stdout.fifo');
    // Held open (read-write, non-blocking) and never read: the child's stdout is a full pipe.
    const hold = openSync(out, constants.O_RDWR | constants.O_NONBLOCK);
    fds.push(hold);
    const child = spawn(process.execPath, [vireoBin, 'run', '--kernel', guestPath('flood64')], {
      stdio: ['ignore', hold, 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (b: Buffer) => {
      stderr += b.toString();
    });
    const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
    const cpu = (): number => {
      // utime + stime (fields 14 and 15) in clock ticks, all threads of the process.
      const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      return Number(fields[11]) + Number(fields[12]);
    };
    try {
      // The guest's output takes two exits a byte, on a loaded machine some seconds; then it halts. A
      // VMM spinning on EAGAIN never settles: every window costs it a whole core (100 ticks a second).
      const windows: number[] = [];
      for (let i = 0; i < 20 && !windows.some((t) => t < 25); i++) {
        assert.ok(existsSync(`/proc/${child.pid}`), `vireo ended early: ${stderr}`);
        const before = cpu();
        await sleep(1000);
        windows.push(cpu() - before);
      }
      process.stderr.write(`--serial stdio, stdout unread: CPU ticks (10 ms) per 1 s window: ${windows.join(' ')}\n`);
      assert.ok(
        windows.some((t) => t < 25),
        `CPU ticks a second with the guest halted: ${windows.join(' ')}: the VMM spins on its stdout`,
      );
      child.kill('SIGTERM');
      assert.equal(await within(10_000, 'the exit after SIGTERM', exited), 0, stderr);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
