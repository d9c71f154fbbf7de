/**
 * The machine's guest-visible resources, handed out by one allocator (Firecracker's
 * vstate/resources.rs, kvmtool's irq__alloc_line): interrupt lines (GSIs) and MMIO windows, for the
 * virtio-mmio slots today. PCI goes here too when it comes: bus/device/function numbers, BAR windows
 * and MSI vectors are more pools of this allocator (and more fields of its state, a new version).
 *
 * Its state is a named, versioned record saved in every snapshot, so a restore gives each device the
 * window and line it had and a device added later cannot collide with them. A snapshot written before
 * the allocator existed has no record: its state is derived (the devices got their resources in slot
 * order from the start of each pool, which is what a fresh allocator hands out again).
 */
import { MMIO_DEVICES_START } from '../arch/x86_64/layout.js';
import { ConfigError, SnapshotError } from '../common/errors.js';
import { array, type Check, int, object, SchemaError, version } from '../common/schema.js';

/** ISA IRQs free on vireo's platform (0 PIT, 1 i8042, 2 cascade, 3/4 COM, 8 RTC, 9 SCI, 12 PS/2 aux are taken). */
export const DEVICE_GSIS = [5, 6, 7, 10, 11, 14, 15] as const;

/** Where MMIO device windows go: the first 256 MiB of the hole below 4 GiB (well below the IOAPIC and LAPIC). */
export const MMIO_POOL = { start: MMIO_DEVICES_START, end: MMIO_DEVICES_START + 0x1000_0000 } as const;
/** Windows are whole pages. */
const MMIO_ALIGN = 0x1000;

/** How a device slot is reached by the guest: a union, one member per transport (PCI later). */
export type SlotTransport = { kind: 'mmio'; base: number; gsi: number };

export const RESOURCES_STATE_VERSION = 1;

/** The allocator's persisted state (format 1). */
export interface ResourcesState {
  version: 1;
  /** GSIs handed out, in the order they were. */
  gsis: number[];
  /** MMIO windows handed out, in the order they were. */
  mmio: { base: number; size: number }[];
}

export const checkResourcesState: Check = (v, at) => {
  object({
    version: version(RESOURCES_STATE_VERSION),
    gsis: array(int(0, 255), 0, DEVICE_GSIS.length),
    mmio: array(object({ base: int(0, 2 ** 52), size: int(MMIO_ALIGN, MMIO_POOL.end - MMIO_POOL.start) }), 0, 4096),
  })(v, at);
  const s = v as ResourcesState;
  const gsis = new Set<number>();
  s.gsis.forEach((g, i) => {
    if (!(DEVICE_GSIS as readonly number[]).includes(g))
      throw new SchemaError(`${at}.gsis[${i}]`, `expected one of the device GSIs ${DEVICE_GSIS.join(', ')}`);
    if (gsis.has(g)) throw new SchemaError(`${at}.gsis[${i}]`, `GSI ${g} handed out twice`);
    gsis.add(g);
  });
  const sorted = s.mmio.map((w, i) => ({ ...w, i })).sort((a, b) => a.base - b.base);
  sorted.forEach((w, k) => {
    const where = `${at}.mmio[${w.i}]`;
    if (w.base % MMIO_ALIGN !== 0 || w.size % MMIO_ALIGN !== 0)
      throw new SchemaError(where, 'expected a page-aligned window');
    if (w.base < MMIO_POOL.start || w.base + w.size > MMIO_POOL.end)
      throw new SchemaError(where, 'expected a window inside the MMIO device pool');
    const prev = sorted[k - 1];
    if (prev && prev.base + prev.size > w.base) throw new SchemaError(where, `overlaps mmio[${prev.i}]`);
  });
};

export class ResourceAllocator {
  private readonly gsis: number[] = [];
  private readonly mmio: { base: number; size: number }[] = [];
  private readonly claimed = { bases: new Set<number>(), gsis: new Set<number>() };

  /** A GSI for a device's interrupt; ConfigError when none is left. */
  allocateGsi(): number {
    const g = DEVICE_GSIS.find((x) => !this.gsis.includes(x));
    if (g === undefined)
      throw new ConfigError(`too many virtio devices: vireo has IRQs for ${DEVICE_GSIS.length}; remove some`);
    this.gsis.push(g);
    return g;
  }

  /** The lowest free window of `size` bytes (whole pages) in the MMIO pool. */
  allocateMmio(size: number): number {
    const len = Math.ceil(size / MMIO_ALIGN) * MMIO_ALIGN;
    const taken = [...this.mmio].sort((a, b) => a.base - b.base);
    let base: number = MMIO_POOL.start;
    for (const w of taken) {
      if (base + len <= w.base) break;
      base = Math.max(base, w.base + w.size);
    }
    if (base + len > MMIO_POOL.end) throw new ConfigError('too many MMIO devices: the MMIO device pool is full');
    this.mmio.push({ base, size: len });
    return base;
  }

  /** A virtio-mmio slot's transport: one window of `size` and one GSI. */
  allocateMmioSlot(size: number): SlotTransport {
    const base = this.allocateMmio(size);
    return { kind: 'mmio', base, gsi: this.allocateGsi() };
  }

  /**
   * Takes a restored slot's transport: it must be one this allocator handed out, and held by no other
   * slot (a snapshot's slots must match its allocator's record).
   */
  claim(t: SlotTransport, size: number, what: string): void {
    const owned = this.mmio.some((w) => w.base === t.base && w.size === size) && this.gsis.includes(t.gsi);
    if (!owned || this.claimed.bases.has(t.base) || this.claimed.gsis.has(t.gsi))
      throw new SnapshotError(
        'VIREO_ERR_SNAPSHOT_CORRUPT',
        `${what}'s transport (MMIO 0x${t.base.toString(16)}, GSI ${t.gsi}) is not one the snapshot's resources handed out; it was damaged or not written by this vireo`,
      );
    this.claimed.bases.add(t.base);
    this.claimed.gsis.add(t.gsi);
  }

  save(): ResourcesState {
    return { version: 1, gsis: [...this.gsis], mmio: this.mmio.map((w) => ({ ...w })) };
  }

  /** An allocator in the state a snapshot recorded (checked by checkResourcesState first). */
  static restore(state: ResourcesState): ResourceAllocator {
    const a = new ResourceAllocator();
    a.gsis.push(...state.gsis);
    a.mmio.push(...state.mmio.map((w) => ({ base: w.base, size: w.size })));
    return a;
  }
}
