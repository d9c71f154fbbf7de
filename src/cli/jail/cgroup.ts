/**
 * The jail's cgroups, as Firecracker's jailer makes them: `<cgroup_base>/<parent_cgroup>/<id>` in the
 * hierarchy that holds each `--cgroup` file's controller, the value written, then the jailer's own PID
 * attached (the exec that follows keeps the PID, so the VMM starts inside). cgroup v2: the unified
 * hierarchy from /proc/mounts, the controller enabled in `cgroup.subtree_control` down the path. v1: the
 * hierarchy mounted with the controller; cpuset.cpus/mems copied from the parent, as a v1 cpuset takes
 * no task while they are empty. Without --cgroup-version, v2 is used where its hierarchy offers every
 * controller asked for, else v1 (Firecracker's default is always 1; vireo follows the host).
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { type CgroupSetting, JailerError } from './args.js';

interface Mount {
  dir: string;
  version: 1 | 2;
  /** v1: the mount options (the controllers bound to it). */
  options: string[];
}

export function cgroupMounts(mountsText = readFileSync('/proc/mounts', 'utf8')): Mount[] {
  const out: Mount[] = [];
  for (const line of mountsText.split('\n')) {
    const [, dir, type, opts] = line.split(' ');
    if (!dir || (type !== 'cgroup' && type !== 'cgroup2')) continue;
    out.push({
      dir: dir.replace(/\\040/g, ' '),
      version: type === 'cgroup2' ? 2 : 1,
      options: (opts ?? '').split(','),
    });
  }
  return out;
}

const v2Controllers = (dir: string): string[] => {
  try {
    return readFileSync(join(dir, 'cgroup.controllers'), 'utf8').trim().split(/\s+/).filter(Boolean);
  } catch {
    return [];
  }
};

export interface CgroupPlan {
  version: 1 | 2;
  /** One entry per hierarchy: where the cgroup goes and what is written there. */
  groups: { base: string; dir: string; settings: CgroupSetting[]; controllers: string[] }[];
}

/** Where each setting goes; one line naming the missing hierarchy or controller when it cannot. */
export function planCgroups(
  settings: readonly CgroupSetting[],
  version: 1 | 2 | undefined,
  parent: string,
  id: string,
  mounts: readonly Mount[] = cgroupMounts(),
): CgroupPlan | undefined {
  if (settings.length === 0) return undefined;
  const unified = mounts.find((m) => m.version === 2);
  const offered = unified ? v2Controllers(unified.dir) : [];
  const wanted = [...new Set(settings.map((s) => s.controller))];
  const v = version ?? (unified && wanted.every((c) => offered.includes(c)) ? 2 : 1);
  if (v === 2) {
    if (!unified)
      throw new JailerError(
        'cgroup v2 is not mounted on this host (no cgroup2 file system in /proc/mounts): use --cgroup-version 1',
      );
    const missing = wanted.filter((c) => !offered.includes(c));
    if (missing.length > 0)
      throw new JailerError(
        `cgroup v2: controller ${missing.join(', ')} is not available in the cgroup2 hierarchy at ${unified.dir} (it offers: ${offered.join(' ') || 'none'}; a controller bound to cgroup v1 is not: use --cgroup-version 1)`,
      );
    return {
      version: 2,
      groups: [{ base: unified.dir, dir: join(unified.dir, parent, id), settings: [...settings], controllers: wanted }],
    };
  }
  const byBase = new Map<string, CgroupPlan['groups'][number]>();
  for (const s of settings) {
    const m = mounts.find((x) => x.version === 1 && x.options.includes(s.controller));
    if (!m)
      throw new JailerError(
        `cgroup v1: no hierarchy is mounted with the ${s.controller} controller${unified ? ' (use --cgroup-version 2)' : ''}`,
      );
    const g = byBase.get(m.dir) ?? { base: m.dir, dir: join(m.dir, parent, id), settings: [], controllers: [] };
    g.settings.push(s);
    if (!g.controllers.includes(s.controller)) g.controllers.push(s.controller);
    byBase.set(m.dir, g);
  }
  return { version: 1, groups: [...byBase.values()] };
}

const write = (path: string, value: string): void => {
  try {
    appendFileSync(path, `${value}\n`);
  } catch (e) {
    throw new JailerError(`Failed to write ${value} to ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
};

/**
 * Creates the cgroups, writes the values and attaches `pid`. A failure before the attach removes the
 * folders this call created, so bad input (an unknown file, a value the kernel refuses) leaves none.
 */
export function applyCgroups(plan: CgroupPlan, pid: number): void {
  const created: string[] = [];
  try {
    for (const g of plan.groups) {
      const rel = g.dir.slice(g.base.length + 1).split('/');
      let dir = g.base;
      for (const part of rel) {
        const parentDir = dir;
        dir = join(dir, part);
        if (plan.version === 2)
          for (const c of g.controllers) {
            if (!readFileSync(join(parentDir, 'cgroup.subtree_control'), 'utf8').split(/\s+/).includes(c))
              write(join(parentDir, 'cgroup.subtree_control'), `+${c}`);
          }
        if (existsSync(dir)) continue;
        try {
          mkdirSync(dir);
        } catch (e) {
          throw new JailerError(`Failed to create directory ${dir}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
        }
        created.push(dir);
        if (plan.version === 1 && g.controllers.includes('cpuset'))
          for (const f of ['cpuset.cpus', 'cpuset.mems']) {
            const own = readFileSync(join(dir, f), 'utf8').trim();
            const up = readFileSync(join(parentDir, f), 'utf8').trim();
            if (!own && up) write(join(dir, f), up);
          }
      }
      for (const s of g.settings) {
        if (!existsSync(join(g.dir, s.file)))
          throw new JailerError(`Cgroup invalid file: ${s.file} (no such file in ${g.dir})`);
        write(join(g.dir, s.file), s.value);
      }
    }
  } catch (e) {
    for (const d of created.reverse()) {
      try {
        rmdirSync(d);
      } catch {
        // a cgroup another process entered meanwhile stays
      }
    }
    throw e;
  }
  for (const g of plan.groups) write(join(g.dir, 'cgroup.procs'), String(pid));
}
