/**
 * Snapshot and restore orchestration (Firecracker's persist.rs): what a snapshot captures from a
 * paused machine and how the pair of files is written; what a restore checks before it builds
 * (the state file's body, the memory file's tag) and the configuration it rebuilds from. The
 * building itself is builder.ts's buildFromSnapshot.
 */
import { randomUUID } from 'node:crypto';
import { closeSync } from 'node:fs';
import { SnapshotError, VireoError } from '../common/errors.js';
import type { SerialConfig, VmConfig } from '../config/index.js';
import { encodeCpuid, encodeMsrs } from '../kvm/structs.js';
import { GuestMemory, PAGE_SIZE } from '../memory/guest-memory.js';
import { encodeStateFile } from '../snapshot/format.js';
import { openMemoryFile } from '../snapshot/memory-file.js';
import { type MemoryTag, readTag } from '../snapshot/memory-tag.js';
import { writeSnapshotPair } from '../snapshot/pair.js';
import { captureVcpu, captureVm } from '../snapshot/state.js';
import { buildFromSnapshot } from './builder.js';
import { DEVICE_KINDS } from './device-registry.js';
import type { Machine } from './machine.js';
import { buildPlatform, createPlatformSpec, savePlatformState } from './platform.js';
import { readSnapshotBody, type SnapshotBody } from './snapshot-body.js';

export const VIREO_VERSION = '0.1.0';

export interface SnapshotOptions {
  statePath: string;
  memPath: string;
  /**
   * Firecracker's snapshot_type (default Full). Diff writes only the pages written since the previous
   * snapshot (or the restore) of this VM; it needs trackDirtyPages.
   */
  type?: 'Full' | 'Diff' | undefined;
}

export interface SnapshotResult {
  type: 'Full' | 'Diff';
  /** The memory image written (a diff's state goes with its base merged up to this image). */
  image: string;
  stateMs: number;
  memoryMs: number;
  /** Guest RAM covered by the memory file. */
  memoryBytes: number;
  /** Non-zero bytes actually written (the rest are holes). */
  memoryWritten: number;
}

export interface RestoreOptions {
  statePath: string;
  memPath: string;
  /** Run the guest right away (else the VM is restored paused). */
  resume?: boolean | undefined;
  /** Track dirty pages in the restored VM (its Diff snapshots are then diffs of this snapshot). */
  trackDirtyPages?: boolean | undefined;
  serial?: SerialConfig | undefined;
  kvmPath?: string | undefined;
  /** What the restored VM uses in place of the snapshot's host paths (a clone's own socket and disk). */
  overrides?: RestoreOverrides | undefined;
  /** Advance the guest's clock by the wall-clock time since the snapshot (Firecracker's clock_realtime). */
  clockRealtime?: boolean | undefined;
}

/**
 * Host resources a restore swaps in for those the snapshot names, as Firecracker's snapshot/load has
 * network_overrides: the guest sees the same devices, the host side is this VM's own.
 */
export interface RestoreOverrides {
  /** The vsock device's Unix socket (the snapshot must have a vsock device). */
  vsockUdsPath?: string | undefined;
  /** A drive's backing file by drive id (each id must be one of the snapshot's drives); same guest size. */
  drives?: Readonly<Record<string, { path: string; format?: 'raw' | 'qcow2' | undefined }>> | undefined;
  /** A TAP interface's host TAP by interface id (Firecracker's network_overrides: a clone's own TAP). */
  nets?: Readonly<Record<string, { tap: string }>> | undefined;
}

const MAX_OVERRIDE_PATH = 4096;

function overridePath(what: string, p: unknown): string {
  if (typeof p !== 'string' || p.length === 0 || p.length > MAX_OVERRIDE_PATH || p.includes('\0'))
    throw new SnapshotError('VIREO_ERR_SNAPSHOT', `restore override ${what}: give a non-empty path`);
  return p;
}

/** `cfg` with `o`'s host paths in place of the snapshot's, each checked against what the snapshot has. */
export function applyRestoreOverrides(cfg: VmConfig, o: RestoreOverrides | undefined): VmConfig {
  if (!o) return cfg;
  let out = cfg;
  if (o.vsockUdsPath !== undefined) {
    if (!cfg.vsock)
      throw new SnapshotError('VIREO_ERR_SNAPSHOT', 'restore override vsockUdsPath: the snapshot has no vsock device');
    out = { ...out, vsock: { ...cfg.vsock, udsPath: overridePath('vsockUdsPath', o.vsockUdsPath) } };
  }
  if (o.drives !== undefined) {
    const drives = cfg.drives ?? [];
    for (const id of Object.keys(o.drives))
      if (!drives.some((d) => d.id === id))
        throw new SnapshotError(
          'VIREO_ERR_SNAPSHOT',
          `restore override for drive ${JSON.stringify(id)}: the snapshot has no such drive (it has ${drives.map((d) => JSON.stringify(d.id)).join(', ') || 'none'})`,
        );
    out = {
      ...out,
      drives: drives.map((d) => {
        const r = o.drives?.[d.id];
        if (!r) return d;
        if (r.format !== undefined && r.format !== 'raw' && r.format !== 'qcow2')
          throw new SnapshotError(
            'VIREO_ERR_SNAPSHOT',
            `restore override for drive ${d.id}: format must be raw or qcow2`,
          );
        return { ...d, path: overridePath(`drive ${d.id}`, r.path), format: r.format };
      }),
    };
  }
  if (o.nets !== undefined) {
    const nets = cfg.nets ?? [];
    for (const id of Object.keys(o.nets))
      if (!nets.some((n) => n.id === id && n.kind !== 'user'))
        throw new SnapshotError(
          'VIREO_ERR_SNAPSHOT',
          `restore override for network interface ${JSON.stringify(id)}: the snapshot has no such TAP interface (it has ${
            nets
              .filter((n) => n.kind !== 'user')
              .map((n) => JSON.stringify(n.id))
              .join(', ') || 'none'
          })`,
        );
    out = {
      ...out,
      nets: nets.map((n) => {
        const r = o.nets?.[n.id];
        if (!r || n.kind === 'user') return n;
        if (typeof r.tap !== 'string' || r.tap === '' || r.tap.length > 15)
          throw new SnapshotError(
            'VIREO_ERR_SNAPSHOT',
            `restore override for network interface ${n.id}: give a TAP name`,
          );
        return { ...n, tap: r.tap };
      }),
    };
  }
  return out;
}

/** Refuses a memory file that is not the whole image the state goes with, saying what to do. */
function checkMemoryTag(tag: MemoryTag, body: SnapshotBody, path: string): void {
  if (tag.size !== body.memory.size)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT_CORRUPT',
      `memory file ${path} lays out ${tag.size} bytes; the snapshot expects ${body.memory.size}: wrong or truncated file`,
    );
  if (tag.merging !== undefined)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `memory file ${path} is half-way through a merge (of image ${tag.merging}): run vireo snapshot merge again with that diff`,
    );
  if (tag.kind === 'diff')
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `memory file ${path} is a diff (only the pages changed since image ${tag.parent}): merge it onto its base first — vireo snapshot merge --base BASE_MEM --diff ${path} — and restore from the base`,
    );
  if (tag.id !== body.memory.id)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      `memory file ${path} holds memory image ${tag.id}, but the snapshot goes with image ${body.memory.id}${body.memory.type === 'Diff' && body.memory.parent !== undefined ? ` (a diff of ${body.memory.parent}): merge the diffs up to it onto the base` : ''}: give the memory file written with the snapshot`,
    );
}

/**
 * Writes a full or diff snapshot of a paused machine: every vCPU's registers, special registers,
 * XSAVE, XCRs, MSRs, LAPIC, events and MP state; the irqchip, PIT and clock; every device's record —
 * to `statePath`; guest memory to `memPath` (sparse). Both through a temporary name.
 */
export async function snapshotMachine(m: Machine, opts: SnapshotOptions): Promise<SnapshotResult> {
  if (m.state !== 'paused')
    throw new VireoError('VIREO_ERR_STATE', `cannot snapshot a VM that is ${m.state}: pause it first`);
  const cfg = m.config;
  const type = opts.type ?? 'Full';
  if (type === 'Diff' && !cfg.trackDirtyPages)
    throw new SnapshotError(
      'VIREO_ERR_SNAPSHOT',
      'diff snapshots need dirty page tracking: create the VM with trackDirtyPages (track_dirty_pages in machine-config)',
    );
  // A Diff holds the pages changed since this VM's previous snapshot or restore. With neither, it is
  // a diff against boot, as in Firecracker: memory nobody wrote is zero, so that image is the whole
  // memory with its zero pages as holes — a full image, restorable on its own (and tagged so).
  const parent = m.image;
  const t0 = performance.now();
  const devices = m.devices;
  const sides = await devices.hold();
  try {
    const body: SnapshotBody = {
      vireo: VIREO_VERSION,
      createdAt: new Date().toISOString(),
      config: {
        memMiB: cfg.memMiB,
        cpus: cfg.cpus,
        irqchip: cfg.irqchip,
        ...Object.fromEntries(DEVICE_KINDS.map((k) => [k.configKey, k.snapshot.save(k.config(cfg))])),
      },
      memory: { size: 0, regions: [], id: randomUUID(), type, parent: type === 'Diff' ? parent : undefined },
      vcpus: m.vcpus.map((v, i) => captureVcpu(m.kvm, v.vcpu, m.cpuids[i] ?? [], cfg.irqchip)),
      vm: cfg.irqchip ? captureVm(m.vm) : undefined,
      devices: { ...savePlatformState(m.platformSpec), ...devices.saveStates(sides) },
      resources: devices.resources.save(),
    };
    const t1 = performance.now();
    const mem = m.memory;
    const id = body.memory.id;
    // With tracking, every snapshot restarts the log: the next diff is against this one.
    const dirty = cfg.trackDirtyPages
      ? mem.takeDirty((r) => {
          const slot = m.mapping.descriptors.findIndex((d) => d.gpa === r.gpa);
          return m.vm.getDirtyLog(slot, r.size / PAGE_SIZE);
        })
      : undefined;
    try {
      const layout = writeSnapshotPair(
        opts,
        mem,
        type === 'Diff' && dirty && parent !== undefined
          ? { kind: 'diff', id, parent, pages: dirty }
          : { kind: 'full', id },
        (l) => {
          body.memory = { ...body.memory, size: l.size, regions: l.regions };
          return encodeStateFile(body);
        },
      );
      m.image = id;
      return {
        type,
        image: id,
        stateMs: t1 - t0,
        memoryMs: performance.now() - t1,
        memoryBytes: layout.size,
        memoryWritten: layout.written,
      };
    } catch (e) {
      if (dirty) mem.restoreDirty(dirty);
      throw e;
    }
  } finally {
    devices.release();
  }
}

/**
 * The configuration a snapshot's machine is rebuilt from, with what the restore itself gives: each
 * device kind maps its saved configuration back (each has passed its kind's check).
 */
function restoredConfig(body: SnapshotBody, opts: RestoreOptions): VmConfig {
  const c = body.config;
  const ctx = { serial: opts.serial };
  return {
    kernel: '',
    memMiB: c.memMiB,
    cpus: c.cpus,
    irqchip: c.irqchip,
    ...Object.fromEntries(DEVICE_KINDS.map((k) => [k.configKey, k.snapshot.restore(c[k.configKey], ctx)])),
    serial: opts.serial,
    kvmPath: opts.kvmPath,
    trackDirtyPages: opts.trackDirtyPages,
  };
}

/**
 * A machine restored from a snapshot (taken by this or another vireo process), paused unless
 * `resume`. Guest memory is mapped from the memory file MAP_PRIVATE, so restoring costs the same
 * for any guest size and the file is never written.
 */
export async function restoreMachine(opts: RestoreOptions): Promise<Machine> {
  const body = readSnapshotBody(opts.statePath);
  const memFd = openMemoryFile(opts.memPath, body.memory.size);
  try {
    checkMemoryTag(readTag(memFd, opts.memPath), body, opts.memPath);
    return await buildFromSnapshot(applyRestoreOverrides(restoredConfig(body, opts), opts.overrides), {
      body,
      memFd,
      memPath: opts.memPath,
      resume: opts.resume === true,
      clockRealtime: opts.clockRealtime,
    });
  } finally {
    closeSync(memFd);
  }
}

/**
 * A dry run of the restore path's JavaScript on this thread, with no KVM call: V8 compiles each
 * function on its first call, so a VMM that runs this while it waits for work (vireo-firecracker
 * does, once its socket has answered) restores with compiled code. (vCPU threads warm their own
 * part while parked: src/vmm/vcpu-thread.ts.)
 */
export function prewarmRestorePath(): void {
  const msrs = Array.from({ length: 64 }, (_, i) => ({ index: i, data: BigInt(i) }));
  const cpuid = Array.from({ length: 16 }, (_, i) => ({
    function: i,
    index: 0,
    flags: 0,
    eax: i,
    ebx: 0,
    ecx: 0,
    edx: 0,
  }));
  for (let i = 0; i < 4; i++) {
    encodeMsrs(msrs);
    encodeCpuid(cpuid);
  }
  buildPlatform(createPlatformSpec(-1, -1, false), new GuestMemory([]));
}
