/**
 * The layering of src/ (README, Architecture): each folder imports only the folders below it. biome's
 * noRestrictedImports holds that line in `npm run lint`, one override per folder in biome.json; this
 * test keeps biome.json and the order below in step (a new folder needs its rule), and checks the
 * real import graph, which also sees what biome does not: worker entries (`new URL('./x.js', import.meta.url)`).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const srcRoot = join(repoRoot, 'src');

/** Inside devices/, the virtio transports are a layer of their own (see the last two tests). */
const VIRTIO = 'src/devices/virtio';
const TRANSPORT = `${VIRTIO}/transport`;
/** What transport/ may take from devices/virtio/: what a device is and the virtqueue, never a device. */
const TRANSPORT_MAY_IMPORT = ['device.ts', 'queue.ts'];

/** Bottom to top. */
const ORDER = [
  'common',
  'os',
  'kvm',
  'memory',
  'bus',
  'devices',
  'backends',
  'arch',
  'loader',
  'config',
  'vcpu',
  'snapshot',
  'agent',
  'vmm',
  'sandbox',
  'api',
  'serve',
  'cli',
] as const;

/**
 * What each folder may import: the folders below it; devices/ only common/, bus/, memory/; agent/ (the
 * host side of the guest agent, which vmm/'s `vm.agent` and sandbox/ build on) only common/; kit/ (the
 * guest kit, outside the library) only common/ and only cli/ may import it.
 */
function allowed(folder: string): Set<string> {
  if (folder === 'devices') return new Set(['common', 'bus', 'memory']);
  if (folder === 'kit' || folder === 'agent') return new Set(['common']);
  if (folder === 'index.ts') return new Set(ORDER.filter((f) => f !== 'cli'));
  const i = ORDER.indexOf(folder as (typeof ORDER)[number]);
  assert.ok(i >= 0, `src/${folder}/ has no place in the layer order: add it to ORDER here and to biome.json`);
  const below = new Set<string>(ORDER.slice(0, i));
  if (folder === 'cli') below.add('kit');
  return below;
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** The src/ folder a file belongs to ('index.ts' for the library's entry). */
const folderOf = (file: string): string => relative(srcRoot, file).split('/')[0]!;

/** folder → folder edges, each with the imports that make it. */
function importGraph(): Map<string, Map<string, string[]>> {
  const graph = new Map<string, Map<string, string[]>>();
  const spec = /(?:\bfrom\s+|\bimport\s*\(\s*|\bnew URL\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g;
  for (const file of sourceFiles(srcRoot)) {
    for (const m of readFileSync(file, 'utf8').matchAll(spec)) {
      const target = resolve(dirname(file), m[1]!);
      if (!target.startsWith(srcRoot + '/')) continue; // bin/, dist/native/: not a layer
      const from = folderOf(file);
      const to = folderOf(target);
      if (from === to) continue;
      const edges = graph.get(from) ?? graph.set(from, new Map()).get(from)!;
      const why = edges.get(to) ?? edges.set(to, []).get(to)!;
      why.push(`${relative(srcRoot, file)} → ${m[1]}`);
    }
  }
  return graph;
}

test('every import in src/ goes down the layers, and the folder graph has no cycle', () => {
  const graph = importGraph();
  const upward: string[] = [];
  for (const [from, edges] of graph) {
    const ok = allowed(from);
    for (const [to, why] of edges) if (!ok.has(to)) upward.push(`${from} → ${to}: ${why.join(', ')}`);
  }
  assert.deepEqual(upward, [], 'imports that go up a layer');
  // With every edge going down a total order there can be no cycle; check it anyway, on its own terms.
  const state = new Map<string, 'open' | 'done'>();
  const visit = (n: string, path: string[]): void => {
    state.set(n, 'open');
    for (const m of graph.get(n)?.keys() ?? []) {
      assert.notEqual(state.get(m), 'open', `a cycle: ${[...path, n, m].join(' → ')}`);
      if (!state.has(m)) visit(m, [...path, n]);
    }
    state.set(n, 'done');
  };
  for (const n of graph.keys()) if (!state.has(n)) visit(n, []);
});

interface Override {
  includes: string[];
  linter?: { rules?: { style?: { noRestrictedImports?: { options?: { patterns?: { group: string[] }[] } } } } };
}

/** The folders a `**\/{a,b,c}\/**` group names. */
function groupFolders(group: string[]): Set<string> {
  const out = new Set<string>();
  for (const g of group) {
    const m = /^\*\*\/\{([a-z0-9_,-]+)\}\/\*\*$/.exec(g) ?? /^\*\*\/([a-z0-9_-]+)\/\*\*$/.exec(g);
    assert.ok(m, `biome.json: unexpected pattern ${g}`);
    for (const f of m[1]!.split(',')) out.add(f);
  }
  return out;
}

test('biome.json forbids, for each folder of src/, exactly the folders it may not import', () => {
  const config = JSON.parse(readFileSync(join(repoRoot, 'biome.json'), 'utf8')) as { overrides: Override[] };
  const rules = new Map<string, Set<string>>();
  for (const o of config.overrides) {
    const group = o.linter?.rules?.style?.noRestrictedImports?.options?.patterns?.flatMap((p) => p.group);
    if (!group) continue;
    if (o.includes.some((inc) => inc.startsWith(`${VIRTIO}/`))) continue; // the sub-layer rules, checked below
    for (const inc of o.includes) {
      const m = /^src\/([a-z0-9_-]+)\/\*\*$/.exec(inc) ?? /^src\/(index\.ts)$/.exec(inc);
      assert.ok(m, `biome.json: layer rule for unexpected includes ${inc}`);
      assert.ok(!rules.has(m[1]!), `biome.json: two layer rules for src/${m[1]}`);
      rules.set(m[1]!, groupFolders(group));
    }
  }
  const folders = readdirSync(srcRoot, { withFileTypes: true })
    .filter((e) => e.isDirectory() && e.name !== 'native')
    .map((e) => e.name);
  const everything = [...ORDER, 'kit'];
  for (const f of [...folders, 'index.ts']) {
    const ok = allowed(f);
    const expected = everything.filter((x) => x !== f && !ok.has(x)).sort();
    const got = [...(rules.get(f) ?? [])].sort();
    assert.deepEqual(got, expected, `biome.json's rule for src/${f}${f.endsWith('.ts') ? '' : '/'}`);
  }
});

test('devices/virtio/: no device sees its transport, and transport/ knows no device', () => {
  const spec = /(?:\bfrom\s+|\bimport\s*\(\s*|\bnew URL\(\s*)['"](\.{1,2}\/[^'"]+)['"]/g;
  const virtio = join(repoRoot, VIRTIO);
  const transport = join(repoRoot, TRANSPORT);
  const bad: string[] = [];
  let transportFiles = 0;
  for (const file of sourceFiles(virtio)) {
    const inTransport = file.startsWith(transport + '/');
    if (inTransport) transportFiles++;
    for (const m of readFileSync(file, 'utf8').matchAll(spec)) {
      const target = resolve(dirname(file), m[1]!.replace(/\.js$/, '.ts'));
      const why = `${relative(srcRoot, file)} → ${m[1]}`;
      if (!target.startsWith(virtio + '/')) continue; // common/, bus/, memory/: the devices/ rule
      const intoTransport = target.startsWith(transport + '/');
      if (!inTransport && intoTransport) bad.push(`${why} (a device importing its transport)`);
      if (inTransport && !intoTransport && !TRANSPORT_MAY_IMPORT.includes(relative(virtio, target)))
        bad.push(`${why} (the transport importing a device)`);
    }
  }
  assert.ok(transportFiles >= 5, 'transport/ holds the common state, its record, the runner, its record and mmio');
  assert.deepEqual(bad, []);
});

test("biome.json holds the same two rules for devices/virtio/, each on top of devices/' own", () => {
  const config = JSON.parse(readFileSync(join(repoRoot, 'biome.json'), 'utf8')) as { overrides: Override[] };
  const groups = (o: Override | undefined) =>
    o?.linter?.rules?.style?.noRestrictedImports?.options?.patterns?.map((p) => p.group) ?? [];
  const find = (includes: string[]) =>
    config.overrides.find((o) => JSON.stringify(o.includes) === JSON.stringify(includes));
  const devices = groups(find(['src/devices/**']));
  assert.equal(devices.length, 1, "devices/' own rule");
  // An override's options replace the earlier ones for its files: each sub-layer rule repeats devices/'.
  assert.deepEqual(groups(find([`${VIRTIO}/**`, `!${TRANSPORT}/**`])), [...devices, ['**/transport/**']]);
  assert.deepEqual(groups(find([`${TRANSPORT}/**`])), [
    ...devices,
    ['../*', ...TRANSPORT_MAY_IMPORT.map((f) => `!../${f.replace(/\.ts$/, '.js')}`)],
  ]);
});
