/** GDT entries and the kvm_segment records that describe the same descriptors to KVM. */
import type { Segment } from '../../kvm/structs.js';

/** Pack a segment descriptor from flags (the 12 bits of access byte + flags nibble), base and limit. */
export function gdtEntry(flags: number, base: number, limit: number): bigint {
  const b = BigInt(base >>> 0);
  const l = BigInt(limit >>> 0);
  const f = BigInt(flags);
  return (
    ((b & 0xff000000n) << 32n) |
    ((f & 0x0000f0ffn) << 40n) |
    ((l & 0x000f0000n) << 32n) |
    ((b & 0x00ffffffn) << 16n) |
    (l & 0x0000ffffn)
  );
}

/** The kvm_segment KVM needs for the descriptor `entry` at GDT index `index`. */
export function segmentFromGdt(entry: bigint, index: number): Segment {
  const base = Number(((entry >> 16n) & 0xffffffn) | (((entry >> 56n) & 0xffn) << 24n));
  const limitRaw = Number((entry & 0xffffn) | (((entry >> 48n) & 0xfn) << 16n));
  const g = Number((entry >> 55n) & 1n);
  const present = Number((entry >> 47n) & 1n);
  return {
    base: BigInt(base),
    limit: g ? limitRaw * 4096 + 0xfff : limitRaw,
    selector: index * 8,
    type: Number((entry >> 40n) & 0xfn),
    present,
    dpl: Number((entry >> 45n) & 3n),
    db: Number((entry >> 54n) & 1n),
    s: Number((entry >> 44n) & 1n),
    l: Number((entry >> 53n) & 1n),
    g,
    avl: Number((entry >> 52n) & 1n),
    unusable: present ? 0 : 1,
  };
}

/** Flat descriptors vireo installs for its entry modes. Index: selector / 8. */
export const GDT_64 = [
  0n,
  gdtEntry(0xa09b, 0, 0xfffff), // 1: 64-bit code
  gdtEntry(0xc093, 0, 0xfffff), // 2: data
  gdtEntry(0x808b, 0, 0xfffff), // 3: TSS
];

export const GDT_32 = [
  0n,
  gdtEntry(0xc09b, 0, 0xfffff), // 1: 32-bit flat code
  gdtEntry(0xc093, 0, 0xfffff), // 2: 32-bit flat data
  gdtEntry(0x808b, 0, 0xfffff), // 3: TSS
];
