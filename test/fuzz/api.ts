/**
 * The Firecracker API (src/api: route matching, JSON parsing, the ajv check against the spec, the
 * controller's handlers) and the --config-file parser, on mutated valid bodies: a value anywhere in
 * the document replaced by a hostile one (wrong types, huge and negative numbers, long strings, paths
 * that are not files, deep nesting), fields dropped or added, and the JSON text itself cut or bent. A
 * request may be answered with any status but 500 ("Internal error": an exception the handlers did not
 * turn into an ApiError); the config file may fail only with a VireoError. Every case gets a fresh
 * controller whose KVM path does not exist, so an InstanceStart that passes every check fails there
 * instead of booting; every path a body names is inside the target's temporary directory, /dev/null
 * or does not exist, so no case writes outside it.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { applyConfigFile } from '../../src/api/config-file.js';
import { VmController } from '../../src/api/controller.js';
import { ApiServer } from '../../src/api/server.js';
import { crash, isClean, OK, refused, target, type Verdict } from './harness.js';
import { applyEdits, bend, type Edit, editArb, type Json, type TextEdit, textEditArb } from './json-mutate.js';

/** A temporary directory with an image, a kernel-sized file and a sub-directory, made once per target. */
function sandbox() {
  const dir = mkdtempSync(join(tmpdir(), 'vireo-fuzz-api-'));
  const f = (n: string) => join(dir, n);
  writeFileSync(f('disk.img'), Buffer.alloc(64 * 1024));
  writeFileSync(f('kernel'), Buffer.alloc(4096, 0x90));
  writeFileSync(f('snap.state'), Buffer.from('VIREOSNP garbage'));
  writeFileSync(f('snap.mem'), Buffer.alloc(4096));
  mkdirSync(f('subdir'));
  // Relative paths in a body resolve here, and nowhere else, while the target runs.
  const cwd = process.cwd();
  process.chdir(dir);
  /** Keeps every path a document names inside the sandbox (see confine). */
  const allowed = new Set([
    dir,
    '/dev/null',
    ...[
      'disk.img',
      'kernel',
      'snap.state',
      'snap.mem',
      'subdir',
      'missing/file',
      'v.sock',
      'serial.out',
      'log',
      'metrics',
      'out.state',
      'out.mem',
      'no-kvm',
    ].map(f),
  ]);
  return {
    dir,
    f,
    confine: (text: string) => confine(text, allowed),
    close: () => {
      process.chdir(cwd);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * The handlers open, create and append to the paths a body names (log_path, metrics_path,
 * serial_out_path, snapshot files) and the process may run as root: a mutated or bent path would
 * land anywhere ("/x", "../x", "/tmp/dir}log"). Every string holding a "/" that is not one of the
 * sandbox's own paths has its slashes replaced, so it names a file in the sandbox (the working
 * directory); text that is not JSON reaches no handler and is left as it is.
 */
function confine(text: string, allowed: ReadonlySet<string>): string {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return text;
  }
  const fix = (v: unknown): unknown => {
    if (typeof v === 'string') return allowed.has(v) || !/[/\\]|\.\./.test(v) ? v : v.replace(/[/\\.]/g, '_');
    if (Array.isArray(v)) return v.map(fix);
    if (v !== null && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      for (const k of Object.keys(o))
        Object.defineProperty(o, k, { value: fix(o[k]), enumerable: true, writable: true, configurable: true });
    }
    return v;
  };
  return JSON.stringify(fix(doc));
}

/** Hostile values for any position in a document; the strings are never a path outside the sandbox. */
function hostileValues(f: (n: string) => string): fc.Arbitrary<Json> {
  return fc.oneof(
    fc.constantFrom<Json>(
      null,
      true,
      false,
      0,
      -1,
      1.5,
      2 ** 31,
      2 ** 32,
      2 ** 53,
      -(2 ** 53),
      1e308,
      -1e308,
      '',
      'x'.repeat(5000),
      '\u0000',
      'é',
      '/dev/null',
      f('missing/file'),
      f('subdir'),
      f('disk.img'),
      f('snap.state'),
      'aa:bb:cc:dd:ee:ff',
      '01:00:00:00:00:00',
      'InstanceStart',
      'SendCtrlAltDel',
      'FlushMetrics',
      'Paused',
      'Resumed',
      'Full',
      'Diff',
      [],
      {},
      [[[[[[[[[[]]]]]]]]]],
    ),
    fc.integer(),
    fc.string({ maxLength: 12 }),
  );
}

/** Valid bodies per route (Firecracker's documented examples, paths in the sandbox). */
function routes(f: (n: string) => string): [method: string, path: string, body: Json | undefined][] {
  return [
    ['PUT', '/boot-source', { kernel_image_path: f('kernel'), boot_args: 'console=ttyS0', initrd_path: f('disk.img') }],
    ['PUT', '/machine-config', { vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: true }],
    ['PATCH', '/machine-config', { vcpu_count: 1 }],
    [
      'PUT',
      '/drives/rootfs',
      {
        drive_id: 'rootfs',
        path_on_host: f('disk.img'),
        is_root_device: true,
        is_read_only: false,
        cache_type: 'Unsafe',
      },
    ],
    ['PATCH', '/drives/rootfs', { drive_id: 'rootfs', path_on_host: f('disk.img') }],
    [
      'PUT',
      '/network-interfaces/eth0',
      { iface_id: 'eth0', host_dev_name: 'vireo-fz0', guest_mac: '06:00:ac:10:00:02' },
    ],
    ['PATCH', '/network-interfaces/eth0', { iface_id: 'eth0' }],
    ['PUT', '/vsock', { guest_cid: 3, uds_path: f('v.sock') }],
    ['PUT', '/balloon', { amount_mib: 16, deflate_on_oom: true, stats_polling_interval_s: 1 }],
    ['PATCH', '/balloon', { amount_mib: 8 }],
    ['PATCH', '/balloon/statistics', { stats_polling_interval_s: 2 }],
    ['PUT', '/entropy', {}],
    ['PUT', '/serial', { serial_out_path: f('serial.out') }],
    ['PUT', '/logger', { log_path: f('log'), level: 'Info', show_level: true, show_log_origin: false }],
    ['PUT', '/metrics', { metrics_path: f('metrics') }],
    ['PUT', '/actions', { action_type: 'InstanceStart' }],
    ['PUT', '/actions', { action_type: 'FlushMetrics' }],
    ['PATCH', '/vm', { state: 'Paused' }],
    ['PUT', '/snapshot/create', { snapshot_path: f('out.state'), mem_file_path: f('out.mem'), snapshot_type: 'Full' }],
    ['PUT', '/snapshot/load', { snapshot_path: f('snap.state'), mem_file_path: f('snap.mem'), resume_vm: false }],
    ['GET', '/', undefined],
    ['GET', '/vm/config', undefined],
    ['GET', '/balloon/statistics', undefined],
    ['PUT', '/mmds', { a: 1 }],
  ];
}

/**
 * A logger configured without a log_path writes to stderr: thousands of lines in a test's output. Such
 * a body gets the sandbox's log file back (the rest of it stays as mutated).
 */
function keepLogsInSandbox(doc: Json, f: (n: string) => string): Json {
  if (doc !== null && typeof doc === 'object' && !Array.isArray(doc) && !('log_path' in doc))
    Object.defineProperty(doc, 'log_path', { value: f('log'), enumerable: true, writable: true, configurable: true });
  return doc;
}

interface Request {
  route: number;
  edits: Edit[];
  text: TextEdit;
}

export const apiTarget = target(
  'api-bodies',
  // Each case builds a controller and runs up to four requests through ajv and the handlers (~0.3 ms
  // a request); 10k cases fit the CI budget.
  10_000,
  () => {
    const box = sandbox();
    const rs = routes(box.f);
    const values = hostileValues(box.f);
    const request: fc.Arbitrary<Request> = fc.record({
      route: fc.nat(rs.length - 1),
      edits: fc.array(editArb(values), { maxLength: 3 }),
      text: textEditArb,
    });
    return {
      arbitrary: fc.array(request, { minLength: 1, maxLength: 4 }),
      close: box.close,
      async run(reqs: Request[]): Promise<Verdict> {
        const ctl = new VmController({ id: 'fuzz', kvmPath: box.f('no-kvm') });
        const api = new ApiServer(ctl);
        let verdict: Verdict = OK;
        try {
          for (const q of reqs) {
            const [method, path, base] = rs[q.route] as (typeof rs)[number];
            let doc = applyEdits(base ?? {}, q.edits);
            if (path === '/logger') doc = keepLogsInSandbox(doc, box.f);
            const body = base === undefined && q.edits.length === 0 ? '' : JSON.stringify(doc);
            const r = await api.dispatch(method, path, box.confine(bend(body ?? 'null', q.text)));
            if (r.status >= 500) return crash(new Error(`${method} ${path} answered ${r.status}: ${r.body}`));
            if (r.status >= 400) verdict = refused(`${r.status}`);
          }
        } catch (e) {
          // dispatch answers every request; a rejection is a crash of the API thread.
          return crash(e);
        } finally {
          await ctl.shutdown(); // closes the log and metrics files a case opened
        }
        return verdict;
      },
    };
  },
  true,
);

/** A full configuration document, as Firecracker's --config-file takes it. */
function configDoc(f: (n: string) => string): Json {
  return {
    'boot-source': { kernel_image_path: f('kernel'), boot_args: 'console=ttyS0' },
    'machine-config': { vcpu_count: 1, mem_size_mib: 128 },
    drives: [{ drive_id: 'rootfs', path_on_host: f('disk.img'), is_root_device: true, is_read_only: true }],
    'network-interfaces': [],
    vsock: { guest_cid: 3, uds_path: f('v.sock') },
    balloon: { amount_mib: 0, deflate_on_oom: false },
    entropy: {},
    logger: { log_path: f('log'), level: 'Warning' },
    metrics: { metrics_path: f('metrics') },
  };
}

export const configFileTarget = target(
  'config-file',
  10_000,
  () => {
    const box = sandbox();
    const base = configDoc(box.f);
    const values = hostileValues(box.f);
    return {
      arbitrary: fc.record({ edits: fc.array(editArb(values), { maxLength: 4 }), text: textEditArb }),
      close: box.close,
      async run(c: { edits: Edit[]; text: TextEdit }): Promise<Verdict> {
        const ctl = new VmController({ id: 'fuzz', kvmPath: box.f('no-kvm') });
        const api = new ApiServer(ctl);
        const doc = applyEdits(base, c.edits);
        if (doc !== null && typeof doc === 'object' && !Array.isArray(doc) && 'logger' in doc)
          doc.logger = keepLogsInSandbox(doc.logger as Json, box.f);
        try {
          await applyConfigFile(api, box.confine(bend(JSON.stringify(doc), c.text)));
        } catch (e) {
          if (!isClean(e)) return crash(e);
          // Every section passed its checks and only the boot failed (no KVM by design): parsed whole.
          return /InstanceStart: .*no-kvm/.test((e as Error).message) ? OK : refused((e as Error).message);
        } finally {
          await ctl.shutdown();
        }
        return OK;
      },
    };
  },
  true,
);
