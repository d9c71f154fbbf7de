/**
 * vireo as a library: `import { Vm } from 'vireo'` through the package's own exports, the serial
 * console as streams on a real guest, the API controller without a socket, the spec validator's
 * messages, and the logger's level and module filters.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadVmm, VmController } from '../src/api/controller.js';
import { ApiLogger } from '../src/api/logger.js';
import { ApiServer } from '../src/api/server.js';
import { SpecValidator } from '../src/api/spec.js';
import { Vm } from '../src/vmm/vm.js';
import { guestPath } from './guests/build.js';
import { kvmSkipReason } from './support/vireo.js';

const skip = kvmSkipReason();
const tmp = mkdtempSync(join(tmpdir(), 'vireo-lib-'));

test("import { Vm } from 'vireo' resolves through package.json exports", async () => {
  const name = 'vireo'; // not a literal import: the package's own build is what is being tested
  const pkg = (await import(name)) as typeof import('../src/index.js');
  assert.equal(pkg.Vm, Vm, 'the same Vm class');
  assert.equal(typeof pkg.createConsoleStreams, 'function');
  assert.equal(typeof pkg.ApiServer, 'function');
  assert.equal(new pkg.ConfigError('x').code, 'VIREO_ERR_CONFIG');
  assert.match(pkg.apiVersion(), /^\d+\.\d+\.\d+/);
});

test('the serial console as streams: output, input, end', { skip }, async () => {
  const { createConsoleStreams } = await import('../src/vmm/console-stream.js');
  const con = createConsoleStreams();
  const vm = await Vm.create({ kernel: guestPath('modes64'), cmdline: 'e', memMiB: 16, serial: con.serial });
  const { output, input } = con.attach(vm);
  let text = '';
  output.on('data', (b: Buffer) => {
    text += b.toString('latin1');
  });
  const ended = new Promise<void>((resolve) => output.on('end', () => resolve()));
  vm.start();
  const until = async (want: string): Promise<void> => {
    const t0 = Date.now();
    while (!text.includes(want)) {
      if (Date.now() - t0 > 10_000) assert.fail(`no "${want}" in ${JSON.stringify(text)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  await until('echo ready\n');
  input.write('hello streams');
  await until('HELLO STREAMS');
  input.write('q');
  const exit = await vm.waitForExit();
  assert.equal(exit.status, 0x25);
  await ended;
});

test('the controller without a socket: dispatch, state rules, GET /vm/config', async () => {
  const ctl = new VmController({ id: 'lib-vm' });
  const api = new ApiServer(ctl);
  const r1 = await api.dispatch(
    'PUT',
    '/machine-config',
    JSON.stringify({ vcpu_count: 2, mem_size_mib: 48, smt: true }),
  );
  assert.equal(r1.status, 204, r1.body);
  const r2 = await api.dispatch('PATCH', '/machine-config', JSON.stringify({ vcpu_count: 3 }));
  assert.equal(r2.status, 400);
  assert.match(r2.body, /must be 1 or an even number if SMT is enabled/);
  const r3 = await api.dispatch('PATCH', '/machine-config', '{}');
  assert.equal(JSON.parse(r3.body).fault_message, 'Empty PATCH request.');
  const r4 = await api.dispatch(
    'PUT',
    '/machine-config',
    JSON.stringify({ vcpu_count: 1, mem_size_mib: 64, cpu_template: 'T2' }),
  );
  assert.match(JSON.parse(r4.body).fault_message, /does not support CPU templates/);
  const r5 = await api.dispatch('PATCH', '/vm', JSON.stringify({ state: 'Resumed' }));
  assert.equal(
    JSON.parse(r5.body).fault_message,
    'The requested operation is not supported before starting the microVM.',
  );
  const r6 = await api.dispatch('PUT', '/actions', JSON.stringify({ action_type: 'InstanceStart' }));
  assert.equal(
    JSON.parse(r6.body).fault_message,
    'Start microvm error: Cannot start microvm without kernel configuration.',
  );
  const cfg = JSON.parse((await api.dispatch('GET', '/vm/config')).body);
  assert.deepEqual(cfg['machine-config'], {
    vcpu_count: 2,
    mem_size_mib: 48,
    smt: true,
    track_dirty_pages: false,
    huge_pages: 'None',
  });
  assert.deepEqual(cfg.drives, []);
  assert.equal(JSON.parse((await api.dispatch('GET', '/')).body).id, 'lib-vm');
  const logger = await api.dispatch('PUT', '/logger', JSON.stringify({ level: 'warning' }));
  assert.equal(logger.status, 204, 'levels are case-insensitive, as in Firecracker');
  await ctl.shutdown();
});

test('warming up ahead of requests: every body check compiles, the restore path runs dry, the first answer is signalled', async () => {
  const ctl = new VmController({ id: 'warm-vm' });
  const api = new ApiServer(ctl, { socketPath: join(tmp, 'warm.sock') });
  await api.prewarm();
  const vmm = await loadVmm();
  assert.equal(vmm.Vm, Vm, 'the VMM the controller loads lazily is the one imported here');
  vmm.prewarmRestorePath();
  // Checks still answer as before once compiled ahead.
  const r = await api.dispatch('PATCH', '/machine-config', JSON.stringify({ vcpu_count: 'x' }));
  assert.equal(
    JSON.parse(r.body).fault_message,
    'An error occurred when deserializing the json body of a request: invalid type: string "x", expected u8 at line 1 column 17.',
  );
  await api.listen();
  let answered = false;
  void api.firstAnswer.then(() => {
    answered = true;
  });
  await new Promise((r) => setImmediate(r));
  assert.equal(answered, false, 'nothing answered yet');
  const status = await new Promise<number>((resolve, reject) => {
    request({ socketPath: join(tmp, 'warm.sock'), path: '/' }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    })
      .on('error', reject)
      .end();
  });
  assert.equal(status, 200);
  await api.firstAnswer;
  await api.close();
  await ctl.shutdown();
});

test('validation messages read like serde and name the field', () => {
  const v = new SpecValidator();
  assert.equal(v.check('BootSource', {}), 'missing field `kernel_image_path`');
  assert.match(v.check('Vm', { state: 'Paused', extra: 1 }) ?? '', /^unknown field `extra`, expected one of `state`$/);
  assert.equal(
    v.check('Vm', { state: 'Stopped' }),
    'unknown variant `Stopped` for `state`, expected one of `Paused`, `Resumed`',
  );
  assert.equal(
    v.check('MachineConfiguration', { vcpu_count: '2', mem_size_mib: 1 }),
    'invalid type for `vcpu_count`: string "2", expected an integer',
  );
  assert.match(
    v.check('BalloonUpdate', { amount_mib: -1 }) ?? '',
    /`amount_mib`: integer `-1`, expected an integer >= 0/,
  );
  assert.match(v.check('Balloon', { amount_mib: 2 ** 32, deflate_on_oom: false }) ?? '', /`amount_mib`.*<= 4294967295/);
  assert.equal(
    v.check('FullVmConfiguration', { drives: [{ drive_id: 'a', is_root_device: true, path_on_host: 1 }] }),
    'invalid type for `drives[0].path_on_host`: integer `1`, expected a string',
  );
  assert.equal(v.check('MachineConfiguration', { vcpu_count: 2 }, { partial: true }), undefined);
  assert.equal(v.check('Metrics', { metrics_path: 'm', properties: { a: 'b' } }), undefined, 'maps stay maps');
});

test('the logger: JSON lines with level and module, filtered by level and module', async () => {
  const path = join(tmp, 'filtered.log');
  const log = new ApiLogger('filter-vm');
  await log.configure({ log_path: path, level: 'Warning', module: 'api_server' });
  log.info('api_server::request', 'dropped: below the level');
  log.warn('vmm', 'dropped: another module');
  log.warn('api_server::request', 'kept', { status: 400 });
  log.error('api_server', 'kept too');
  log.close();
  const lines = readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(lines.length, 2);
  assert.deepEqual(
    lines.map((l) => [l.level, l.module, l.msg, l.id]),
    [
      ['WARN', 'api_server::request', 'kept', 'filter-vm'],
      ['ERROR', 'api_server', 'kept too', 'filter-vm'],
    ],
  );
  assert.equal(lines[0]?.status, 400);
  assert.match(String(lines[0]?.time), /^\d{4}-\d\d-\d\dT/);
});
