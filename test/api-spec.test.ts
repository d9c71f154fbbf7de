/**
 * vireo's API against Firecracker's API description (spec/firecracker-api.yaml), over the socket of a
 * real vireo-firecracker process and a real guest (test/guests modes64: 'e' echoes serial input
 * upper-cased, 'q' ends it with status 0x25). For every operation vireo implements: a valid request
 * built from the spec's definitions and answered as the spec says, and invalid ones (missing field,
 * wrong type, unknown field, bad enum; a body on a GET) answered 400 with a fault_message naming the
 * field. Then the payload limit, the state rules (configuration after InstanceStart, PATCH /vm before
 * it, snapshots), pause/resume on the running guest, GET /vm/config, the metrics and log files, and a
 * snapshot loaded by a second process. Network interfaces are included where the test may create a
 * network namespace of its own (root): their TAP lives there.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { implementedRoutes } from '../src/api/resources/index.js';
import { type JsonObject, SpecValidator } from '../src/api/spec.js';
import { guestPath } from './guests/build.js';
import {
  canUnshareNet,
  type FcResponse,
  type FirecrackerProcess,
  fcRequest,
  rawExchange,
  startFirecracker,
} from './support/fc-client.js';
import { bodyDefinition, checkAgainstSpec, invalidVariants, minimalBody, specOperations } from './support/fc-spec.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const v = new SpecValidator();
const tmp = mkdtempSync(join(tmpdir(), 'vireo-api-'));
const netns = canUnshareNet();
if (!netns) process.stderr.write('api-spec: no network namespace here (needs root): network interfaces are left out\n');
const image = join(tmp, 'root.img');
writeFileSync(image, Buffer.alloc(1 << 20));
const f = (name: string): string => join(tmp, name);
const processes: FirecrackerProcess[] = [];
after(() => {
  for (const p of processes) p.kill();
});

/** Operations exercised with a valid and with an invalid request ("PUT /drives/{drive_id}"). */
const valid = new Set<string>();
const invalid = new Set<string>();

async function call(fc: FirecrackerProcess, method: string, template: string, path: string, body?: unknown) {
  const r = await fcRequest(fc.socket, method, path, body);
  checkAgainstSpec(v, template, method.toLowerCase(), r);
  return r;
}

const fault = (r: FcResponse): string => (r.json as { fault_message: string }).fault_message;

async function expectOk(fc: FirecrackerProcess, method: string, template: string, path: string, body?: unknown) {
  const def = bodyDefinition(template, method.toLowerCase());
  if (def && body !== undefined)
    assert.equal(v.check(def, body), undefined, `the test's body for ${template} is valid`);
  const r = await call(fc, method, template, path, body);
  assert.ok(r.status === 200 || r.status === 204, `${method} ${path}: ${r.status} ${r.text}`);
  valid.add(`${method} ${template}`);
  return r;
}

async function expectFault(
  fc: FirecrackerProcess,
  method: string,
  template: string,
  path: string,
  body: unknown,
  pattern: RegExp | string,
) {
  const r = await call(fc, method, template, path, body);
  assert.equal(r.status, 400, `${method} ${path} ${JSON.stringify(body)}: ${r.text}`);
  const msg = fault(r);
  if (typeof pattern === 'string') assert.ok(msg.includes(pattern), `"${msg}" mentions ${pattern}`);
  else assert.match(msg, pattern);
  return r;
}

/** Every invalid variant of a valid body is refused, naming the field. */
async function expectInvalidBodies(
  fc: FirecrackerProcess,
  method: string,
  template: string,
  path: string,
  body: JsonObject,
) {
  const def = bodyDefinition(template, method.toLowerCase());
  assert.ok(def, `${template} takes a body`);
  // PATCH bodies Firecracker takes partially have no required fields to leave out.
  const partial = implementedRoutes.some((r) => r.method === method && r.path === template && r.partial);
  for (const variant of invalidVariants(v, def, body)) {
    if (partial && variant.what.startsWith('missing')) continue;
    const r = await expectFault(fc, method, template, path, variant.body, variant.mentions);
    assert.match(fault(r), /deserializing the json body/, variant.what);
  }
  invalid.add(`${method} ${template}`);
}

/** A valid body for an operation: the spec's minimal body with what this host needs on top. */
function bodyFor(template: string, method: string, extra: JsonObject): JsonObject {
  const def = bodyDefinition(template, method.toLowerCase());
  const base = def ? (minimalBody(v, { $ref: `fc#/definitions/${def}` }) as JsonObject) : {};
  return { ...base, ...extra };
}

const MACHINE = { vcpu_count: 1, mem_size_mib: 64 };
const PRE_BOOT: [method: string, template: string, path: string, extra: JsonObject][] = [
  ['PUT', '/logger', '/logger', { log_path: f('api.log'), level: 'Debug', show_level: true, show_log_origin: true }],
  ['PUT', '/metrics', '/metrics', { metrics_path: f('metrics.json') }],
  ['PUT', '/machine-config', '/machine-config', MACHINE],
  ['PATCH', '/machine-config', '/machine-config', { mem_size_mib: 64, track_dirty_pages: false }],
  ['PUT', '/boot-source', '/boot-source', { kernel_image_path: guestPath('modes64'), boot_args: 'e' }],
  [
    'PUT',
    '/drives/{drive_id}',
    '/drives/rootfs',
    { drive_id: 'rootfs', is_root_device: true, path_on_host: image, is_read_only: false },
  ],
  ...(netns
    ? [
        [
          'PUT',
          '/network-interfaces/{iface_id}',
          '/network-interfaces/eth0',
          { iface_id: 'eth0', host_dev_name: 'vfctap0', guest_mac: '06:00:ac:10:00:02', mtu: 1400 },
        ] as [string, string, string, JsonObject],
      ]
    : []),
  ['PUT', '/vsock', '/vsock', { guest_cid: 3, uds_path: f('vsock.sock') }],
  ['PUT', '/balloon', '/balloon', { amount_mib: 0, deflate_on_oom: false, stats_polling_interval_s: 1 }],
  ['PUT', '/entropy', '/entropy', { rate_limiter: { bandwidth: { size: 1 << 20, refill_time: 100 } } }],
  ['PUT', '/serial', '/serial', { serial_out_path: f('serial.log') }],
];

/** Bodies of runtime operations (valid), used before start (state errors) and after. */
const RUNTIME: Record<string, [method: string, template: string, path: string, body: JsonObject]> = {
  vm: ['PATCH', '/vm', '/vm', { state: 'Paused' }],
  create: [
    'PUT',
    '/snapshot/create',
    '/snapshot/create',
    { snapshot_path: f('snap.state'), mem_file_path: f('snap.mem') },
  ],
  load: [
    'PUT',
    '/snapshot/load',
    '/snapshot/load',
    { snapshot_path: f('snap.state'), mem_backend: { backend_type: 'File', backend_path: f('snap.mem') } },
  ],
  balloon: ['PATCH', '/balloon', '/balloon', { amount_mib: 1 }],
  stats: ['PATCH', '/balloon/statistics', '/balloon/statistics', { stats_polling_interval_s: 2 }],
  drive: ['PATCH', '/drives/{drive_id}', '/drives/rootfs', { drive_id: 'rootfs' }],
  net: ['PATCH', '/network-interfaces/{iface_id}', '/network-interfaces/eth0', { iface_id: 'eth0' }],
  flush: ['PUT', '/actions', '/actions', { action_type: 'FlushMetrics' }],
  cad: ['PUT', '/actions', '/actions', { action_type: 'SendCtrlAltDel' }],
};

const serial = (): string => (existsSync(f('serial.log')) ? readFileSync(f('serial.log'), 'latin1') : '');

async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('Firecracker API over a real vireo-firecracker process', { skip, timeout: 180_000 }, () => {
  let fc: FirecrackerProcess;

  test('pre-boot: every configuration operation, valid and invalid', async () => {
    fc = await startFirecracker(['--api-sock', f('api.sock')], { netns, socket: f('api.sock') });
    processes.push(fc);
    const info = await expectOk(fc, 'GET', '/', '/');
    assert.equal((info.json as { state: string }).state, 'Not started');
    assert.match((await expectOk(fc, 'GET', '/version', '/version')).text, /"firecracker_version":"1\.\d+/);
    assert.deepEqual((await expectOk(fc, 'GET', '/machine-config', '/machine-config')).json, {
      vcpu_count: 1,
      mem_size_mib: 128,
      smt: false,
      track_dirty_pages: false,
      huge_pages: 'None',
    });
    await expectFault(fc, 'GET', '/balloon', '/balloon', undefined, 'No balloon device found');
    for (const [method, template, path, extra] of PRE_BOOT) {
      const body = bodyFor(template, method, extra);
      await expectInvalidBodies(fc, method, template, path, body);
      await expectOk(fc, method, template, path, body);
    }
    if (!netns) {
      const body = { iface_id: 'eth0', host_dev_name: 'vfctap0' };
      await expectInvalidBodies(fc, 'PUT', '/network-interfaces/{iface_id}', '/network-interfaces/eth0', body);
    }
    assert.equal((await expectOk(fc, 'GET', '/balloon', '/balloon')).status, 200);
    for (const [template, path] of [
      ['/', '/'],
      ['/version', '/version'],
      ['/machine-config', '/machine-config'],
      ['/vm/config', '/vm/config'],
      ['/balloon', '/balloon'],
      ['/balloon/statistics', '/balloon/statistics'],
    ] as const) {
      await expectFault(fc, 'GET', template, path, { x: 1 }, 'GET request cannot have a body.');
      invalid.add(`GET ${template}`);
    }
  });

  test('pre-boot: runtime operations are refused, their bodies still checked', async () => {
    for (const key of ['vm', 'create', 'balloon', 'stats', 'drive', 'net', 'flush', 'cad'] as const) {
      const [method, template, path, body] = RUNTIME[key] as [string, string, string, JsonObject];
      await expectInvalidBodies(fc, method, template, path, body);
      await expectFault(fc, method, template, path, body, 'not supported before starting the microVM');
    }
    await expectFault(fc, 'GET', '/balloon/statistics', '/balloon/statistics', undefined, 'before starting');
    const [m, t, p, b] = RUNTIME.load as [string, string, string, JsonObject];
    await expectInvalidBodies(fc, m, t, p, b);
    await expectFault(fc, m, t, p, b, 'not allowed after configuring boot-specific resources');
    await expectFault(fc, m, t, p, { snapshot_path: 'x' }, 'either `mem_backend` or `mem_file_path` is required');
    await expectFault(fc, 'PUT', '/actions', '/actions', { action_type: 'Reboot' }, 'unknown variant `Reboot`');
  });

  test('requests outside the contract: ids, empty bodies, unknown paths, unsupported operations', async () => {
    await expectFault(fc, 'PUT', '/drives/{drive_id}', '/drives/', { drive_id: '' }, 'The ID cannot be empty.');
    await expectFault(fc, 'PUT', '/drives/{drive_id}', '/drives/bad-id', { drive_id: 'bad-id' }, 'alphanumeric');
    await expectFault(
      fc,
      'PUT',
      '/drives/{drive_id}',
      '/drives/a',
      { drive_id: 'b', is_root_device: false },
      'does not match',
    );
    await expectFault(fc, 'PUT', '/boot-source', '/boot-source', undefined, 'Empty PUT request.');
    await expectFault(
      fc,
      'PUT',
      '/boot-source',
      '/boot-source',
      '{"kernel_image_path": ',
      'deserializing the json body',
    );
    const r = await fcRequest(fc.socket, 'GET', '/no/such/path');
    assert.equal(r.status, 400);
    assert.equal(fault(r), 'Invalid request method and/or path: GET no.');
    assert.equal((await fcRequest(fc.socket, 'DELETE', '/')).status, 400);
    const implemented = new Set(implementedRoutes.map((x) => `${x.method} ${x.path}`));
    let refused = 0;
    for (const [path, method] of specOperations()) {
      if (implemented.has(`${method.toUpperCase()} ${path}`)) continue;
      const def = bodyDefinition(path, method);
      const body = def ? minimalBody(v, { $ref: `fc#/definitions/${def}` }) : undefined;
      const concrete = path.replace(/\{[^}]+\}/g, 'dev0');
      const res = await expectFault(fc, method.toUpperCase(), path, concrete, body, 'vireo does not support');
      assert.ok(fault(res).length > 20);
      refused++;
    }
    assert.ok(refused >= 10, `the spec's unsupported operations were tried (${refused})`);
  });

  test('payloads above 51200 bytes are refused before they are read', async () => {
    const head = (len: string): string =>
      `PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n${len}\r\n\r\n`;
    const byLength = await rawExchange(fc.socket, [head('Content-Length: 51201')]);
    assert.match(byLength.text, /^HTTP\/1\.1 400 /);
    assert.match(byLength.text, /"fault_message":"Request payload with size 51201 is larger than the limit of 51200/);
    assert.ok(byLength.closed, 'the connection is closed');
    const expect = await rawExchange(fc.socket, [
      `${head('Content-Length: 60000')}`.replace('\r\n\r\n', '\r\nExpect: 100-continue\r\n\r\n'),
    ]);
    assert.match(expect.text, /^HTTP\/1\.1 400 /, 'no 100 Continue for a body that is too large');
    const chunk = `${(50_000).toString(16)}\r\n${' '.repeat(50_000)}\r\n`;
    const streamed = await rawExchange(fc.socket, [head('Transfer-Encoding: chunked'), chunk, chunk]);
    assert.match(streamed.text, /^HTTP\/1\.1 400 /);
    assert.match(streamed.text, /larger than the limit of 51200/);
    const json = JSON.stringify(MACHINE);
    const exact = json + ' '.repeat(51200 - json.length);
    const r = await fcRequest(fc.socket, 'PUT', '/machine-config', exact);
    assert.equal(r.status, 204, `a body of exactly 51200 bytes is read: ${r.text}`);
  });

  test('GET /vm/config before start, then InstanceStart boots the guest', async () => {
    const cfg = (await expectOk(fc, 'GET', '/vm/config', '/vm/config')).json as JsonObject;
    assert.deepEqual(cfg['boot-source'], {
      kernel_image_path: guestPath('modes64'),
      initrd_path: null,
      boot_args: 'e',
    });
    await expectInvalidBodies(fc, 'PUT', '/actions', '/actions', { action_type: 'InstanceStart' });
    await expectOk(fc, 'PUT', '/actions', '/actions', { action_type: 'InstanceStart' });
    await waitFor('the guest to print "echo ready"', () => serial().includes('echo ready\n'));
    assert.equal(((await expectOk(fc, 'GET', '/', '/')).json as { state: string }).state, 'Running');
  });

  test('after start: configuration is refused as Firecracker refuses it', async () => {
    for (const [method, template, path, extra] of PRE_BOOT)
      await expectFault(
        fc,
        method,
        template,
        path,
        bodyFor(template, method, extra),
        'not supported after starting the microVM',
      );
    await expectFault(fc, 'PUT', '/actions', '/actions', { action_type: 'InstanceStart' }, 'after starting');
    await expectFault(fc, 'PUT', '/snapshot/load', '/snapshot/load', RUNTIME.load?.[3], 'after starting');
  });

  test('runtime operations on the running guest', async () => {
    const [dm, dt, dp, db] = RUNTIME.drive as [string, string, string, JsonObject];
    await expectOk(fc, dm, dt, dp, db);
    // A drive's rate limiter is changed at run time, and lifted again.
    await expectOk(fc, dm, dt, dp, { ...db, rate_limiter: { ops: { size: 10_000, refill_time: 100 } } });
    await expectOk(fc, dm, dt, dp, { ...db, rate_limiter: { ops: { size: 0, refill_time: 0 } } });
    // A new backing file that is not there: refused, naming it (api-drive-swap swaps a real one).
    await expectFault(fc, dm, dt, dp, { ...db, path_on_host: f('other.img') }, 'other.img');
    if (netns) {
      await expectOk(fc, ...(RUNTIME.net as [string, string, string, JsonObject]));
      // Rate limiters on the interface at run time: shown by GET /vm/config.
      const rl = { bandwidth: { size: 1 << 20, refill_time: 100 } };
      await expectOk(fc, 'PATCH', '/network-interfaces/{iface_id}', '/network-interfaces/eth0', {
        iface_id: 'eth0',
        tx_rate_limiter: rl,
      });
      const cfg = (await expectOk(fc, 'GET', '/vm/config', '/vm/config')).json as Record<string, JsonObject[]>;
      assert.deepEqual(cfg['network-interfaces']?.[0]?.tx_rate_limiter, rl);
      await expectOk(fc, 'PATCH', '/network-interfaces/{iface_id}', '/network-interfaces/eth0', {
        iface_id: 'eth0',
        tx_rate_limiter: { bandwidth: { size: 0, refill_time: 0 } },
      });
    }
    await expectFault(
      fc,
      'PATCH',
      '/network-interfaces/{iface_id}',
      '/network-interfaces/nope',
      { iface_id: 'nope' },
      'nope',
    );
    await expectOk(fc, ...(RUNTIME.balloon as [string, string, string, JsonObject]));
    const balloon = (await expectOk(fc, 'GET', '/balloon', '/balloon')).json as JsonObject;
    assert.equal(balloon.amount_mib, 1);
    const stats = (await expectOk(fc, 'GET', '/balloon/statistics', '/balloon/statistics')).json as JsonObject;
    assert.equal(stats.target_mib, 1);
    assert.equal(stats.target_pages, 256);
    // The statistics interval changes at run time (enabled at boot with 1 s), but cannot be turned off.
    await expectOk(fc, ...(RUNTIME.stats as [string, string, string, JsonObject]));
    const patched = (await expectOk(fc, 'GET', '/balloon', '/balloon')).json as JsonObject;
    assert.equal(patched.stats_polling_interval_s, 2, 'the new interval is reported');
    await expectOk(fc, ...(RUNTIME.stats as [string, string, string, JsonObject]));
    await expectFault(
      fc,
      'PATCH',
      '/balloon/statistics',
      '/balloon/statistics',
      { stats_polling_interval_s: 0 },
      'Cannot enable/disable the statistics after boot.',
    );
    await expectOk(fc, ...(RUNTIME.flush as [string, string, string, JsonObject]));
    // The echo guest keeps interrupts off and never reads the i8042: two sequences fit its buffer.
    await expectOk(fc, ...(RUNTIME.cad as [string, string, string, JsonObject]));
    await expectOk(fc, ...(RUNTIME.cad as [string, string, string, JsonObject]));
    await expectFault(fc, ...(RUNTIME.cad as [string, string, string, JsonObject]), 'Failed to send Ctrl+Alt+Del');
    await expectFault(fc, ...(RUNTIME.create as [string, string, string, JsonObject]), 'pause it first');
  });

  test('PATCH /vm pauses and resumes the guest; a paused guest is snapshotted', async () => {
    await expectOk(fc, 'PATCH', '/vm', '/vm', { state: 'Paused' });
    assert.equal(((await expectOk(fc, 'GET', '/', '/')).json as { state: string }).state, 'Paused');
    await expectOk(fc, 'PATCH', '/vm', '/vm', { state: 'Paused' });
    const before = serial();
    fc.type('abc');
    await sleep(300);
    assert.equal(serial(), before, 'a paused guest does not echo');
    await expectFault(
      fc,
      'PUT',
      '/snapshot/create',
      '/snapshot/create',
      { ...RUNTIME.create?.[3], snapshot_type: 'Diff' },
      'dirty page tracking',
    );
    await expectOk(fc, ...(RUNTIME.create as [string, string, string, JsonObject]));
    assert.ok(existsSync(f('snap.state')) && existsSync(f('snap.mem')), 'the snapshot files exist');
    await expectOk(fc, 'PATCH', '/vm', '/vm', { state: 'Resumed' });
    await waitFor('the resumed guest to echo ABC', () => serial().includes('ABC'));
    assert.equal(((await expectOk(fc, 'GET', '/', '/')).json as { state: string }).state, 'Running');
  });

  test('GET /vm/config and /machine-config reflect the configuration; metrics and logs are written', async () => {
    const cfg = (await expectOk(fc, 'GET', '/vm/config', '/vm/config')).json as Record<
      string,
      JsonObject & JsonObject[]
    >;
    assert.deepEqual(cfg['machine-config'], { ...MACHINE, smt: false, track_dirty_pages: false, huge_pages: 'None' });
    assert.equal(cfg.drives[0]?.drive_id, 'rootfs');
    assert.equal(cfg.drives[0]?.path_on_host, image);
    assert.deepEqual(cfg.vsock, { guest_cid: 3, uds_path: f('vsock.sock') });
    assert.equal(cfg.balloon.amount_mib, 1);
    // As Firecracker: the logger and metrics are configured but not reported back.
    assert.equal(cfg.logger, null);
    assert.equal(cfg.metrics, null);
    assert.deepEqual(cfg.entropy, { rate_limiter: { bandwidth: { size: 1 << 20, refill_time: 100 } } });
    assert.equal(cfg['network-interfaces'].length, netns ? 1 : 0);
    if (netns) assert.equal(cfg['network-interfaces'][0]?.mtu, 1400, 'the MTU offered to the guest (VIRTIO_NET_F_MTU)');
    const mc = (await expectOk(fc, 'GET', '/machine-config', '/machine-config')).json as JsonObject;
    assert.equal(mc.mem_size_mib, 64);
    // Each line has what happened since the previous one: the sums are the totals.
    const lines = readFileSync(f('metrics.json'), 'utf8').trim().split('\n');
    const sum = (group: string, key: string): number =>
      lines.reduce((n, l) => n + ((JSON.parse(l) as Record<string, Record<string, number>>)[group]?.[key] ?? 0), 0);
    assert.ok(sum('put_api_requests', 'drive_count') >= 2, 'PUT /drives requests are counted');
    assert.ok(sum('put_api_requests', 'drive_fails') >= 1, 'and their failures');
    assert.ok(sum('vcpu', 'exits_io') > 0, 'the echo guest polls the UART: I/O exits');
    const prom = await fcRequest(fc.socket, 'GET', '/metrics/prometheus');
    assert.equal(prom.status, 200);
    assert.match(prom.text, /vireo_api_requests_total\{method="put",resource="drive"\} \d+/);
    assert.match(prom.text, /vireo_instance_state\{state="Running"\} 1/);
    // Device counters are read live from the I/O thread, so they are there while the guest runs.
    assert.match(prom.text, /vireo_device_events_total\{device="virtio-blk:rootfs",counter="reads"\} 0/);
    assert.match(prom.text, /vireo_device_events_total\{device="virtio-rng",counter="requests"\} 0/);
    const log = readFileSync(f('api.log'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as JsonObject);
    const req = log.find((l) => l.module === 'api_server::request' && /PUT \/actions -> 204/.test(String(l.msg)));
    assert.ok(req, 'requests are logged');
    assert.equal(req.level, 'INFO');
    assert.equal(req.id, 'anonymous-instance');
    assert.match(String(req.origin), /server\.js:\d+/);
    assert.ok(
      log.some((l) => l.level === 'WARN' && l.module === 'api_server::request'),
      'refused requests are warnings',
    );
  });

  test('the guest ends the process with its status', async () => {
    fc.type('q');
    assert.equal(await fc.exited, 0x25, fc.stderr());
    const lines = readFileSync(f('metrics.json'), 'utf8').trim().split('\n');
    assert.ok(lines.length >= 2, 'a last metrics line is written when the VM ends');
  });

  test('a second process loads the snapshot and the guest goes on', async () => {
    const sock = f('api2.sock');
    const fc2 = await startFirecracker(['--api-sock', sock], { netns, socket: sock });
    processes.push(fc2);
    const [m, t, p, b] = RUNTIME.load as [string, string, string, JsonObject];
    await expectFault(fc2, m, t, p, { ...b, mem_file_path: f('snap.mem') }, 'too many fields');
    await expectFault(fc2, m, t, p, { ...b, mem_backend: { backend_type: 'Uffd', backend_path: 'x' } }, 'Uffd');
    await expectOk(fc2, 'PUT', '/serial', '/serial', { serial_out_path: f('serial2.log') });
    await expectOk(fc2, m, t, p, b);
    assert.equal(((await expectOk(fc2, 'GET', '/', '/')).json as { state: string }).state, 'Paused');
    const cfg = (await expectOk(fc2, 'GET', '/vm/config', '/vm/config')).json as JsonObject;
    assert.deepEqual(
      cfg['boot-source'],
      { kernel_image_path: '', initrd_path: null, boot_args: null },
      'a restored VM has the empty boot source Firecracker reports',
    );
    assert.equal((cfg['machine-config'] as JsonObject).mem_size_mib, 64);
    assert.equal((cfg.drives as JsonObject[])[0]?.path_on_host, image, 'the restored drives are reported');
    assert.equal((cfg.balloon as JsonObject).amount_mib, 1, 'with the balloon target at the snapshot');
    await expectOk(fc2, 'PATCH', '/vm', '/vm', { state: 'Resumed' });
    await expectOk(fc2, ...(RUNTIME.drive as [string, string, string, JsonObject]));
    await expectOk(fc2, 'PATCH', '/balloon', '/balloon', { amount_mib: 2 });
    fc2.type('xyz');
    await waitFor('the restored guest to echo XYZ', () => {
      const s = existsSync(f('serial2.log')) ? readFileSync(f('serial2.log'), 'latin1') : '';
      return s.includes('XYZ');
    });
    fc2.type('q');
    assert.equal(await fc2.exited, 0x25, fc2.stderr());
  });

  test('every operation vireo implements had a valid and an invalid request', () => {
    for (const r of implementedRoutes) {
      if (r.extension) continue;
      const key = `${r.method} ${r.path}`;
      if (!netns && r.path === '/network-interfaces/{iface_id}') assert.ok(invalid.has(key));
      else assert.ok(valid.has(key), `${key} was sent a valid request`);
      assert.ok(invalid.has(key), `${key} was sent an invalid request`);
    }
  });
});
