/**
 * bin/firecracker.js (vireo-firecracker) as tools run `firecracker`: --config-file with and without
 * the API socket, the socket driven over HTTP, --version as launchers parse it, --log-path and
 * --metrics-path (periodic lines), --prometheus-port, and bad flags or configuration ending the process
 * with one line and Firecracker's exit statuses (153 arguments, 152 configuration).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { guestPath } from './guests/build.js';
import { type FirecrackerProcess, fcRequest, firecrackerBin, startFirecracker } from './support/fc-client.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const tmp = mkdtempSync(join(tmpdir(), 'vireo-fc-cli-'));
const f = (name: string): string => join(tmp, name);
const processes: FirecrackerProcess[] = [];
after(() => {
  for (const p of processes) p.kill();
});

function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [firecrackerBin, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    input: '',
    env: { ...process.env, ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function configFile(name: string, cfg: unknown): string {
  writeFileSync(f(name), JSON.stringify(cfg, null, 2));
  return f(name);
}

const freePort = (): Promise<number> =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });

const httpGet = (url: string): Promise<{ status: number; text: string }> =>
  new Promise((resolve, reject) => {
    get(url, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => {
        text += d.toString();
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    }).on('error', reject);
  });

describe('vireo-firecracker without a KVM guest', () => {
  test('--version prints one line a launcher can parse (second word: a semantic version)', () => {
    const r = run(['--version']);
    assert.equal(r.status, 0);
    const first = r.stdout.split('\n')[0] ?? '';
    assert.match(first, /vireo 0\.1\.0/);
    // Kata Containers: strings.Split(firstLine, " ")[1], trim "v", semver.Make.
    const version = (first.split(' ')[1] ?? '').replace(/^v/, '');
    assert.match(version, /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/);
  });

  test('bad flags: one line on stderr, exit status 153', () => {
    for (const [args, text] of [
      [['--bogus'], "Found argument '--bogus'"],
      [['--api-sock'], "'--api-sock' requires a value"],
      [['--no-api'], "'--no-api' requires also argument '--config-file'"],
      [['--id', 'a', '--id', 'b'], 'more than once'],
      [['--id', 'bad_id!'], 'Invalid instance ID'],
      [['--level', 'loud'], 'Invalid value for logger level'],
      [['--boot-timer=yes'], 'does not take a value'],
      [['--metadata', 'x.json'], 'MMDS'],
      [['positional'], "Found argument 'positional'"],
      [['--prometheus-port', '99999'], "'--prometheus-port' expects a TCP port from 1 to 65535, got '99999'"],
      [['--prometheus-port', '0'], "'--prometheus-port' expects a TCP port from 1 to 65535, got '0'"],
      [['--prometheus-port=-1'], "'--prometheus-port' expects a whole number, got '-1'"],
      [['--prometheus-port', 'abc'], "'--prometheus-port' expects a whole number, got 'abc'"],
    ] as [string[], string][]) {
      const r = run(args);
      assert.equal(r.status, 153, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.ok(r.stderr.includes(text), `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '');
    }
  });

  test('an API socket path longer than sun_path holds: refused with one line, nothing bound', () => {
    // 108 bytes and more: the bind would cut the path and listen at a name nobody asked for.
    const long = join(tmp, 'x'.repeat(120 - tmp.length));
    assert.ok(Buffer.byteLength(long) > 107);
    const r = spawnSync(process.execPath, [firecrackerBin, '--api-sock', long], {
      encoding: 'utf8',
      timeout: 15_000,
      killSignal: 'SIGKILL',
      input: '',
    });
    assert.equal(r.status, 1, `${r.signal ?? ''} ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /a Unix socket path holds at most 107 bytes/);
    assert.deepEqual(
      readdirSync(tmp).filter((n) => n.startsWith('xxx')),
      [],
      'no socket at a truncated path',
    );
  });

  test('a bad configuration file: one line naming the section, exit status 152', () => {
    const cases: [unknown, string][] = [
      [{ 'boot-source': { kernel_image_path: 5 } }, '`boot-source.kernel_image_path`'],
      [
        { 'machine-config': { vcpu_count: 1, mem_size_mib: 16, hyperthreads: true } },
        'unknown field `machine-config.hyperthreads`',
      ],
      [
        { 'boot-source': { kernel_image_path: f('missing-kernel') } },
        'boot-source: Boot source error: The kernel file cannot be opened',
      ],
      [{ 'mmds-config': { network_interfaces: [] } }, 'mmds-config'],
      [{ 'machine-config': { vcpu_count: 1, mem_size_mib: 16 } }, 'Cannot start microvm without kernel configuration'],
    ];
    for (const [cfg, text] of cases) {
      const r = run(['--no-api', '--config-file', configFile('bad.json', cfg)]);
      assert.equal(r.status, 152, `${JSON.stringify(cfg)}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.ok(r.stderr.includes(text), `${JSON.stringify(cfg)}: ${r.stderr}`);
    }
    writeFileSync(f('notjson.json'), '{ "boot-source": ');
    const r = run(['--no-api', '--config-file', f('notjson.json')]);
    assert.equal(r.status, 152);
    assert.match(r.stderr, /not valid JSON/);
  });
});

describe('vireo-firecracker with a guest', { skip, timeout: 120_000 }, () => {
  test('--config-file --no-api boots the guest; the process ends with its status', () => {
    const cfg = configFile('hello.json', {
      'boot-source': { kernel_image_path: guestPath('hello64'), boot_args: 'console=ttyS0' },
      'machine-config': { vcpu_count: 1, mem_size_mib: 32 },
    });
    const r = run([
      '--no-api',
      '--config-file',
      cfg,
      '--log-path',
      f('hello.log'),
      '--level',
      'info',
      '--metrics-path',
      f('hello-metrics.json'),
    ]);
    assert.equal(r.stdout, 'Hello from a vireo guest\n', r.stderr);
    assert.equal(r.status, 0x21, r.stderr);
    const log = readFileSync(f('hello.log'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(log.some((l) => l.module === 'main' && /Running vireo/.test(String(l.msg)) && l.level === 'INFO'));
    assert.ok(log.some((l) => l.module === 'vmm' && /microVM exited/.test(String(l.msg))));
    const metrics = readFileSync(f('hello-metrics.json'), 'utf8').trim().split('\n');
    const last = JSON.parse(metrics[metrics.length - 1] as string) as Record<string, Record<string, number>>;
    assert.equal(last.put_api_requests?.actions_count, 1, 'InstanceStart from the config file is counted');
    assert.ok(typeof last.utc_timestamp_ms === 'number');
  });

  test('--api-sock: configure and start over HTTP; the guest ends the process', async () => {
    const sock = f('hello.sock');
    const fc = await startFirecracker(['--api-sock', sock, '--id', 'hello-vm'], { socket: sock });
    processes.push(fc);
    const info = await fcRequest(sock, 'GET', '/');
    assert.equal(info.status, 200);
    assert.deepEqual(info.json, {
      app_name: 'Firecracker',
      id: 'hello-vm',
      state: 'Not started',
      vmm_version: '1.17.0-dev',
    });
    assert.equal((await fcRequest(sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 16 })).status, 204);
    assert.equal(
      (await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: guestPath('hello64') })).status,
      204,
    );
    assert.equal((await fcRequest(sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.equal(await fc.exited, 0x21, fc.stderr());
    assert.equal(fc.stdout(), 'Hello from a vireo guest\n');
  });

  test('--config-file with the API: booted at once, then served; metrics every interval; Prometheus', async () => {
    const sock = f('count.sock');
    const port = await freePort();
    const cfg = configFile('count.json', {
      'boot-source': { kernel_image_path: guestPath('modes64'), boot_args: 'c' },
      'machine-config': { vcpu_count: 2, mem_size_mib: 32 },
      metrics: { metrics_path: f('count-metrics.json'), emit_id: true, properties: { pool: 'test' } },
    });
    const fc = await startFirecracker(
      ['--api-sock', sock, '--config-file', cfg, '--id', 'counter', '--prometheus-port', String(port)],
      { socket: sock, env: { VIREO_METRICS_INTERVAL_MS: '150' } },
    );
    processes.push(fc);
    const info = await fcRequest(sock, 'GET', '/');
    assert.equal((info.json as { state: string }).state, 'Running');
    const put = await fcRequest(sock, 'PUT', '/boot-source', { kernel_image_path: guestPath('hello64') });
    assert.equal(put.status, 400);
    assert.match((put.json as { fault_message: string }).fault_message, /not supported after starting the microVM/);
    assert.equal((await fcRequest(sock, 'PATCH', '/vm', { state: 'Paused' })).status, 204);
    assert.equal(((await fcRequest(sock, 'GET', '/')).json as { state: string }).state, 'Paused');
    const prom = await httpGet(`http://127.0.0.1:${port}/metrics`);
    assert.equal(prom.status, 200);
    assert.match(prom.text, /vireo_instance_state\{state="Paused"\} 1/);
    assert.match(prom.text, /vireo_api_requests_total\{method="patch",resource="vm"\} 1/);
    await sleep(500);
    const lines = readFileSync(f('count-metrics.json'), 'utf8').trim().split('\n');
    assert.ok(lines.length >= 2, `metrics lines are written periodically (${lines.length})`);
    const line = JSON.parse(lines[0] as string) as Record<string, unknown>;
    assert.equal(line.id, 'counter');
    assert.deepEqual(line.properties, { pool: 'test' });
    fc.kill();
    await fc.exited;
  });

  test('a socket path that exists is refused (exit 1, one line)', () => {
    writeFileSync(f('taken.sock'), '');
    const r = run(['--api-sock', f('taken.sock')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot bind the API socket .* exists/);
    assert.equal(r.stderr.trim().split('\n').length, 1);
  });
});
