/**
 * What a Firecracker client sees, byte for byte, from a real vireo-firecracker process (no guest is
 * booted: every request here is answered before InstanceStart): the fault messages of body and
 * routing errors in Firecracker's words (serde_json's texts with their "at line L column C"), integers
 * out of their Rust type's range, trailing slashes and extra path segments, OS errors as Rust prints
 * them, micro_http's status line and headers, GET / and GET /vm/config with every section.
 *
 * The expected texts are Firecracker's (api_server/parsed_request.rs, request/*.rs, micro_http's
 * response.rs) and serde_json's Display of its errors, worked out by hand for each body below.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type FirecrackerProcess, fcRequest, rawExchange, startFirecracker } from './support/fc-client.js';

const tmp = mkdtempSync(join(tmpdir(), 'vireo-fc-exact-'));
const f = (name: string): string => join(tmp, name);
const SERDE = 'An error occurred when deserializing the json body of a request: ';

let fc: FirecrackerProcess;
before(async () => {
  fc = await startFirecracker(['--api-sock', f('api.sock'), '--id', 'exact-vm'], { socket: f('api.sock') });
});
after(() => fc?.kill());

/** Sends `body` as it is (text, not re-serialized) and returns status and fault_message. */
async function fault(method: string, path: string, body?: string): Promise<[number, string | undefined]> {
  const r = await fcRequest(fc.socket, method, path, body);
  return [r.status, (r.json as { fault_message?: string } | undefined)?.fault_message];
}

async function expectFault(method: string, path: string, body: string | undefined, message: string): Promise<void> {
  assert.deepEqual(await fault(method, path, body), [400, message], `${method} ${path} ${body ?? ''}`);
}

describe('vireo-firecracker answers as Firecracker does', { timeout: 60_000 }, () => {
  test('JSON body errors: serde_json wording and position', async () => {
    const cases: [method: string, path: string, body: string, message: string][] = [
      [
        'PUT',
        '/machine-config',
        '{"vcpu_count":1,"mem_size_mib":128,"x":1}',
        'unknown field `x`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages` at line 1 column 38',
      ],
      ['PUT', '/machine-config', '{}', 'missing field `vcpu_count` at line 1 column 2'],
      ['PUT', '/machine-config', '{"vcpu_count":1}', 'missing field `mem_size_mib` at line 1 column 16'],
      ['PUT', '/boot-source', '{', 'EOF while parsing an object at line 1 column 1'],
      ['PUT', '/boot-source', '{"kernel_image_path": ', 'EOF while parsing a value at line 1 column 22'],
      ['PUT', '/boot-source', '{"kernel_image_path":"/x', 'EOF while parsing a string at line 1 column 24'],
      ['PUT', '/boot-source', '   ', 'EOF while parsing a value at line 1 column 3'],
      ['PUT', '/boot-source', '{"kernel_image_path" 1}', 'expected `:` at line 1 column 22'],
      ['PUT', '/boot-source', '{"kernel_image_path":"/x" "a"}', 'expected `,` or `}` at line 1 column 27'],
      ['PUT', '/boot-source', '{kernel_image_path:1}', 'key must be a string at line 1 column 2'],
      ['PUT', '/boot-source', '{"kernel_image_path":"/x",}', 'trailing comma at line 1 column 27'],
      ['PUT', '/boot-source', '{"kernel_image_path":"/x"} {}', 'trailing characters at line 1 column 28'],
      [
        'PUT',
        '/boot-source',
        '{"kernel_image_path":1}',
        'invalid type: integer `1`, expected a string at line 1 column 22',
      ],
      [
        'PUT',
        '/boot-source',
        '[]',
        'invalid length 0, expected struct BootSourceConfig with 3 elements at line 1 column 2',
      ],
      ['PUT', '/boot-source', '"x"', 'invalid type: string "x", expected struct BootSourceConfig at line 1 column 3'],
      [
        'PUT',
        '/boot-source',
        '{"kernel_image_path":"/a","kernel_image_path":"/b"}',
        'duplicate field `kernel_image_path` at line 1 column 45',
      ],
      [
        'PUT',
        '/machine-config',
        '{"vcpu_count":"a","mem_size_mib":1}',
        'invalid type: string "a", expected u8 at line 1 column 17',
      ],
      [
        'PUT',
        '/machine-config',
        '{"vcpu_count":1,"mem_size_mib":1,"smt":null}',
        'invalid type: null, expected a boolean at line 1 column 43',
      ],
      [
        'PUT',
        '/machine-config',
        '{"vcpu_count":1.5,"mem_size_mib":1}',
        'invalid type: floating point `1.5`, expected u8 at line 1 column 17',
      ],
      [
        'PUT',
        '/actions',
        '{"action_type":"Reboot"}',
        'unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel` at line 1 column 23',
      ],
      ['PUT', '/actions', '{"action_type":5}', 'expected value at line 1 column 16'],
      [
        'PATCH',
        '/vm',
        '{"state":"Stopped"}',
        'unknown variant `Stopped`, expected `Paused` or `Resumed` at line 1 column 18',
      ],
      // Lines count from 1, columns are bytes on the line.
      [
        'PUT',
        '/machine-config',
        '{\n  "vcpu_count": 1,\n  "bogus": 2\n}',
        'unknown field `bogus`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages` at line 3 column 9',
      ],
      [
        'PUT',
        '/boot-source',
        '{"kernel_image_path":"a\u0001"}',
        'control character (\\u0000-\\u001F) found while parsing a string at line 1 column 24',
      ],
      ['PUT', '/boot-source', '{"kernel_image_path":"\\q"}', 'invalid escape at line 1 column 24'],
    ];
    for (const [method, path, body, message] of cases) await expectFault(method, path, body, `${SERDE}${message}.`);
  });

  test('integers out of their Rust type: 2^64, negatives, beyond u8/u16/u32', async () => {
    const cases: [path: string, body: string, message: string][] = [
      [
        '/machine-config',
        '{"vcpu_count":1,"mem_size_mib":18446744073709551616}',
        'invalid type: floating point `1.8446744073709552e19`, expected usize at line 1 column 51',
      ],
      [
        '/machine-config',
        '{"vcpu_count":-1,"mem_size_mib":128}',
        'invalid value: integer `-1`, expected u8 at line 1 column 16',
      ],
      [
        '/machine-config',
        '{"vcpu_count":256,"mem_size_mib":128}',
        'invalid value: integer `256`, expected u8 at line 1 column 17',
      ],
      [
        '/balloon',
        '{"amount_mib":4294967296,"deflate_on_oom":false}',
        'invalid value: integer `4294967296`, expected u32 at line 1 column 24',
      ],
      [
        '/balloon',
        '{"amount_mib":0,"deflate_on_oom":false,"stats_polling_interval_s":65536}',
        'invalid value: integer `65536`, expected u16 at line 1 column 71',
      ],
      ['/vsock', '{"guest_cid":-3,"uds_path":"/v"}', 'invalid value: integer `-3`, expected u32 at line 1 column 15'],
      [
        '/drives/d',
        '{"drive_id":"d","is_root_device":false,"rate_limiter":{"ops":{"size":-1,"refill_time":1}}}',
        'invalid value: integer `-1`, expected u64 at line 1 column 71',
      ],
      [
        '/machine-config',
        '{"vcpu_count":-0,"mem_size_mib":1}',
        'invalid type: floating point `-0.0`, expected u8 at line 1 column 16',
      ],
    ];
    for (const [path, body, message] of cases) await expectFault('PUT', path, body, `${SERDE}${message}.`);
    // u64's largest value is taken (a token bucket of size 0 limits nothing).
    writeFileSync(f('disk.img'), Buffer.alloc(4096));
    const big = `{"drive_id":"d","is_root_device":false,"path_on_host":${JSON.stringify(f('disk.img'))},"rate_limiter":{"ops":{"size":0,"refill_time":18446744073709551615}}}`;
    assert.deepEqual(await fault('PUT', '/drives/d', big), [204, undefined]);
  });

  test('routing: trailing slashes, extra segments, ids, bodies where none belongs', async () => {
    // A trailing slash is dropped, as Rust's split_terminator drops it; extra segments are ignored.
    assert.equal((await fcRequest(fc.socket, 'GET', '/machine-config/')).status, 200);
    assert.equal((await fcRequest(fc.socket, 'GET', '/machine-config/anything')).status, 200);
    assert.equal((await fcRequest(fc.socket, 'GET', '//version')).status, 200);
    assert.equal((await fcRequest(fc.socket, 'GET', '/vm/config/')).status, 200);
    assert.deepEqual(await fault('PUT', '/machine-config/', '{"vcpu_count":2,"mem_size_mib":64}'), [204, undefined]);
    await expectFault('GET', '/no/such/path', undefined, 'Invalid request method and/or path: GET no.');
    await expectFault('GET', '/vm', undefined, 'Invalid request method and/or path: GET vm.');
    await expectFault('PUT', '/nowhere', '{}', 'Invalid request method and/or path: PUT nowhere.');
    await expectFault('PATCH', '/boot-source', '{}', 'Invalid request method and/or path: PATCH boot-source.');
    await expectFault('GET', '/balloon/xyz', undefined, 'Unrecognized GET request path `xyz`.');
    await expectFault('PATCH', '/balloon/xyz', '{}', 'Unrecognized PATCH request path `xyz`.');
    await expectFault('PUT', '/mmds/xyz', '{}', 'Unrecognized PUT request path `xyz`.');
    await expectFault('PUT', '/snapshot', '{}', 'Missing snapshot operation type.');
    await expectFault('PUT', '/snapshot/', '{}', 'Missing snapshot operation type.');
    await expectFault('PUT', '/snapshot/other', '{}', 'Invalid request method and/or path: PUT /snapshot/other.');
    await expectFault('PUT', '/drives', '{}', 'The ID cannot be empty.');
    await expectFault('PUT', '/drives/', '{}', 'The ID cannot be empty.');
    await expectFault(
      'PUT',
      '/drives/a-b',
      '{}',
      'API Resource IDs can only contain alphanumeric characters and underscores.',
    );
    // No percent-decoding: %41 is not 'A'.
    await expectFault(
      'PUT',
      '/drives/%41',
      '{}',
      'API Resource IDs can only contain alphanumeric characters and underscores.',
    );
    await expectFault(
      'PUT',
      '/drives/a/b',
      '{"drive_id":"b","is_root_device":false}',
      'The id from the path does not match the id from the body!',
    );
    // The body rule comes before the path: any GET with a body, any PUT or PATCH without one.
    await expectFault('GET', '/no/such/path', '{}', 'GET request cannot have a body.');
    await expectFault('PUT', '/no/such/path', undefined, 'Empty PUT request.');
    await expectFault('PATCH', '/no/such/path', undefined, 'Empty PATCH request.');
    await expectFault('PATCH', '/balloon', undefined, 'Empty PATCH request.');
  });

  test('OS errors read as Rust prints them', async () => {
    await expectFault(
      'PUT',
      '/boot-source',
      JSON.stringify({ kernel_image_path: f('no-such-kernel') }),
      'Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)',
    );
    await expectFault(
      'PUT',
      '/drives/rootfs',
      JSON.stringify({ drive_id: 'rootfs', is_root_device: true, path_on_host: f('no-such-image') }),
      'Drive config error: Unable to open the drive image: No such file or directory (os error 2)',
    );
    await expectFault(
      'PUT',
      '/logger',
      JSON.stringify({ log_path: f('no/such/dir/fc.log') }),
      'Logger error: Failed to open target file: No such file or directory (os error 2)',
    );
  });

  test("the status line and headers are micro_http's: GET / byte for byte", async () => {
    const body = '{"app_name":"Firecracker","id":"exact-vm","state":"Not started","vmm_version":"1.17.0-dev"}';
    const r = await rawExchange(fc.socket, ['GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'], 1000);
    assert.equal(
      r.text,
      `HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    assert.equal(r.closed, false, 'the connection stays open');
    const put = 'PUT /entropy HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';
    const r204 = await rawExchange(fc.socket, [put], 1000);
    assert.equal(r204.text, 'HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n');
    const fault400 = '{"fault_message":"Invalid request method and/or path: GET x."}';
    const r400 = await rawExchange(fc.socket, ['GET /x HTTP/1.1\r\n\r\n'], 1000);
    assert.equal(
      r400.text,
      `HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: ${fault400.length}\r\n\r\n${fault400}`,
    );
    // Expect: 100-continue: micro_http's interim answer, then the answer.
    const cont = await rawExchange(
      fc.socket,
      ['PUT /entropy HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n', '{}'],
      1000,
    );
    assert.equal(
      cont.text,
      'HTTP/1.1 100 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n' +
        'HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n',
    );
    // A method micro_http does not parse: its own error body (not a fault_message), as it sends it.
    const rDel = await rawExchange(fc.socket, ['DELETE /drives/x HTTP/1.1\r\n\r\n'], 1000);
    const err =
      '{ "error": "Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped." }';
    assert.equal(
      rDel.text,
      `HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(err)}\r\n\r\n${err}`,
    );
  });

  test("GET /vm/config: every section in Firecracker's order, absent ones null", async () => {
    writeFileSync(f('kernel'), Buffer.alloc(4096));
    writeFileSync(f('root.img'), Buffer.alloc(4096));
    const fresh = await startFirecracker(['--api-sock', f('cfg.sock')], { socket: f('cfg.sock') });
    try {
      const empty = await fcRequest(fresh.socket, 'GET', '/vm/config');
      assert.equal(empty.status, 200);
      assert.equal(
        empty.text,
        '{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},' +
          '"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,' +
          '"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"memory-hotplug":null,"mmds-config":null,' +
          '"network-interfaces":[],"pmem":[],"vsock":null,"entropy":null}',
      );
      const puts: [string, unknown][] = [
        ['/machine-config', { mem_size_mib: 64, vcpu_count: 2 }],
        ['/boot-source', { kernel_image_path: f('kernel'), boot_args: 'console=ttyS0' }],
        [
          '/drives/rootfs',
          { drive_id: 'rootfs', path_on_host: f('root.img'), is_root_device: true, is_read_only: true },
        ],
        ['/vsock', { guest_cid: 3, uds_path: f('v.sock') }],
        ['/balloon', { amount_mib: 8, deflate_on_oom: true }],
        ['/entropy', {}],
        ['/logger', { log_path: f('fc.log'), level: 'info' }],
      ];
      for (const [path, body] of puts)
        assert.equal((await fcRequest(fresh.socket, 'PUT', path, body)).status, 204, `PUT ${path}`);
      const full = await fcRequest(fresh.socket, 'GET', '/vm/config');
      assert.equal(
        full.text,
        JSON.stringify({
          balloon: {
            amount_mib: 8,
            deflate_on_oom: true,
            stats_polling_interval_s: 0,
            free_page_hinting: false,
            free_page_reporting: false,
          },
          drives: [
            {
              drive_id: 'rootfs',
              partuuid: null,
              is_root_device: true,
              cache_type: 'Unsafe',
              is_read_only: true,
              path_on_host: f('root.img'),
              rate_limiter: null,
              io_engine: 'Sync',
              socket: null,
            },
          ],
          'boot-source': { kernel_image_path: f('kernel'), initrd_path: null, boot_args: 'console=ttyS0' },
          'cpu-config': null,
          logger: null,
          'machine-config': {
            vcpu_count: 2,
            mem_size_mib: 64,
            smt: false,
            track_dirty_pages: false,
            huge_pages: 'None',
          },
          metrics: null,
          'memory-hotplug': null,
          'mmds-config': null,
          'network-interfaces': [],
          pmem: [],
          vsock: { guest_cid: 3, uds_path: f('v.sock') },
          entropy: { rate_limiter: null },
        }),
      );
    } finally {
      fresh.kill();
    }
  });

  test('metrics lines: every group Firecracker writes, in its order, zero counters included', async () => {
    const m = await startFirecracker(['--api-sock', f('m.sock')], {
      socket: f('m.sock'),
      env: { VIREO_METRICS_INTERVAL_MS: '200' },
    });
    try {
      assert.equal((await fcRequest(m.socket, 'PUT', '/metrics', { metrics_path: f('m.json') })).status, 204);
      await fcRequest(m.socket, 'GET', '/machine-config');
      await fcRequest(m.socket, 'PUT', '/drives/x', '{"drive_id":"y","is_root_device":false}');
      // Deprecated: vsock_id (Firecracker flags the answer and counts the call).
      const dep = await fcRequest(m.socket, 'PUT', '/vsock', { vsock_id: 'v', guest_cid: 3, uds_path: f('m-v.sock') });
      assert.equal(dep.headers.deprecation, 'true');
      const t0 = Date.now();
      while (!(existsSync(f('m.json')) && readFileSync(f('m.json'), 'utf8').split('\n').length > 2)) {
        if (Date.now() - t0 > 10_000) assert.fail('no metrics lines within 10 s');
        await sleep(50);
      }
    } finally {
      m.kill();
    }
    const lines = readFileSync(f('m.json'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, Record<string, number>>);
    const first = lines[0] as Record<string, Record<string, number>>;
    assert.deepEqual(Object.keys(first).slice(0, 15), [
      'utc_timestamp_ms',
      'api_server',
      'deprecated_api',
      'get_api_requests',
      'latencies_us',
      'logger',
      'mmds',
      'patch_api_requests',
      'put_api_requests',
      'seccomp',
      'vcpu',
      'vmm',
      'signals',
      'interrupts',
      'metrics',
    ]);
    const fields = (g: string): string[] => Object.keys(first[g] ?? {});
    assert.deepEqual(fields('get_api_requests').slice(0, 5), [
      'instance_info_count',
      'machine_cfg_count',
      'mmds_count',
      'vmm_version_count',
      'hotplug_memory_count',
    ]);
    assert.deepEqual(fields('put_api_requests').slice(0, 26).length, 26);
    assert.deepEqual(fields('signals'), ['sigbus', 'sigsegv', 'sigxfsz', 'sigxcpu', 'sigpipe', 'sighup', 'sigill']);
    assert.deepEqual(fields('logger').slice(0, 3), ['missed_metrics_count', 'metrics_fails', 'missed_log_count']);
    assert.equal(fields('mmds').length, 13);
    assert.equal(fields('latencies_us').length, 10);
    assert.deepEqual(first.vmm, { panic_count: 0 });
    assert.deepEqual(first.seccomp, { num_faults: 0 });
    assert.equal(first.mmds?.rx_count, 0, 'zero counters are written');
    // Real values: counters add up over the lines, values are as measured.
    const sum = (g: string, k: string): number => lines.reduce((n, l) => n + (l[g]?.[k] ?? 0), 0);
    assert.equal(sum('get_api_requests', 'machine_cfg_count'), 1);
    assert.equal(sum('put_api_requests', 'drive_count'), 1);
    assert.equal(sum('put_api_requests', 'drive_fails'), 1);
    assert.equal(sum('put_api_requests', 'metrics_count'), 1);
    assert.equal(sum('put_api_requests', 'vsock_count'), 1);
    assert.equal(sum('deprecated_api', 'deprecated_http_api_calls'), 1);
    const startup = first.api_server?.process_startup_time_us ?? 0;
    assert.ok(startup > 1000 && startup < 60_000_000, `process_startup_time_us ${startup}`);
    assert.ok((first.api_server?.process_startup_time_cpu_us ?? 0) > 0);
  });
});
