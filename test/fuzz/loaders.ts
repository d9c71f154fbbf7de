/**
 * The kernel loaders (ELF, Multiboot, bzImage, vmlinux ELF, PVH) on mutated real images, built the way
 * the loader tests build them (test/support/images.ts, linux-images.ts): byte, word and dword
 * mutations biased to the headers the parsers read (ELF and program headers, the setup header, the
 * Multiboot header with its checksum repaired so the loader goes deeper, the PVH note), and
 * truncation. Guest memory is audited: a loader writes only inside the case's RAM. A loader may refuse
 * with ImageError or, as the loader tests accept, GuestMemoryError; anything else is a crash.
 */
import fc from 'fast-check';
import { E820_RAM, E820_RESERVED, type MemMapEntry } from '../../src/arch/x86_64/memmap.js';
import { MiB } from '../../src/common/address.js';
import { isElf, loadElf, parseElf } from '../../src/loader/elf.js';
import { type LinuxBootOptions, loadLinux, loadLinuxElf } from '../../src/loader/linux.js';
import { findMultibootHeader, loadMultiboot, MULTIBOOT_HEADER_MAGIC } from '../../src/loader/multiboot.js';
import { findPvhEntry, loadPvh } from '../../src/loader/pvh.js';
import { GuestMemoryMapping } from '../../src/memory/guest-memory.js';
import { buildAout, buildElf, buildMultibootElf, pattern } from '../support/images.js';
import { buildBzImage, buildVmlinux, note, u32 } from '../support/linux-images.js';
import { RecordingMemory } from '../support/mock-virtq.js';
import { guarded, oob, refused, target, type Verdict } from './harness.js';

// 40 MiB at 0 and 1 MiB at 64 MiB, with a hole between: as the Linux loader tests have it.
const LOW = { gpa: 0, size: 40 * MiB };
const HIGH = { gpa: 64 * MiB, size: 1 * MiB };
const inRam = (gpa: number, len: number): boolean =>
  [LOW, HIGH].some((r) => gpa >= r.gpa && gpa + Math.max(len, 1) <= r.gpa + r.size);

const E820: MemMapEntry[] = [
  { addr: 0, size: 0x9fc00, type: E820_RAM },
  { addr: 0x9fc00, size: 0x60400, type: E820_RESERVED },
  { addr: 0x100000, size: LOW.size - 0x100000, type: E820_RAM },
];
const opts = (initrd: Buffer | undefined, cmdline: string): LinuxBootOptions => ({ cmdline, e820: E820, initrd });

type Kind = 'elf64' | 'elf32' | 'multiboot-aout' | 'multiboot-elf' | 'bzimage' | 'vmlinux' | 'pvh';
const IMAGES: Record<Kind, Buffer> = {
  elf64: buildElf({
    cls: 64,
    entry: 0x100000,
    segs: [
      { paddr: 0x100000, data: pattern(256), memsz: 0x2000 },
      { paddr: HIGH.gpa, data: pattern(64), memsz: 64 },
    ],
  }),
  elf32: buildElf({ cls: 32, entry: 0x100000, segs: [{ paddr: 0x100000, data: pattern(256), memsz: 0x1000 }] }),
  'multiboot-aout': buildAout({ headerOffset: 0x40, bss: 0x800 }),
  'multiboot-elf': buildMultibootElf(),
  bzimage: buildBzImage({ initSize: 0x400000, prefAddress: 0x200000n }),
  vmlinux: buildVmlinux(64),
  pvh: buildVmlinux(64, Buffer.concat([note('GNU', 3, pattern(20, 4)), note('Xen', 18, u32(0x1000100))])),
};
/** Where each kind's parser looks first: mutations land there most of the time. */
const HOT: Record<Kind, [number, number]> = {
  elf64: [0, 64 + 2 * 56],
  elf32: [0, 52 + 32],
  'multiboot-aout': [0x40, 0x60],
  'multiboot-elf': [0, 0x90],
  bzimage: [0x1f1, 0x290],
  vmlinux: [0, 64 + 2 * 56],
  pvh: [0, 0x140],
};

interface Mutation {
  hot: boolean;
  pos: number;
  width: 1 | 2 | 4;
  value: number;
}
interface LoaderCase {
  kind: Kind;
  mutations: Mutation[];
  truncate: number | null;
  initrd: number;
  cmdline: string;
}

const INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000];

const caseArb: fc.Arbitrary<LoaderCase> = fc.record({
  kind: fc.constantFrom(...(Object.keys(IMAGES) as Kind[])),
  mutations: fc.array(
    fc.record({
      hot: fc.boolean(),
      pos: fc.nat(),
      width: fc.constantFrom<1 | 2 | 4>(1, 2, 4),
      value: fc.oneof(fc.constantFrom(...INTERESTING), fc.nat()),
    }),
    { minLength: 1, maxLength: 6 },
  ),
  truncate: fc.oneof({ weight: 6, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: fc.nat() }),
  initrd: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.nat(3 * MiB) }),
  cmdline: fc.oneof(fc.constant('console=ttyS0'), fc.string({ maxLength: 40 })),
});

function mutate(c: LoaderCase): Buffer {
  const b = Buffer.from(IMAGES[c.kind]);
  const [lo, hi] = HOT[c.kind];
  for (const m of c.mutations) {
    const span = m.hot ? hi - lo : b.length;
    const pos = ((m.hot ? lo : 0) + (m.pos % span)) % Math.max(1, b.length - m.width);
    if (m.width === 1) b[pos] = m.value & 0xff;
    else if (m.width === 2) b.writeUInt16LE(m.value & 0xffff, pos);
    else b.writeUInt32LE(m.value >>> 0, pos);
  }
  // A repaired Multiboot checksum, so mutations of the flags and a.out fields reach the loader.
  if (c.kind.startsWith('multiboot') && findMultibootHeader(b) === undefined)
    for (let o = 0; o + 12 <= Math.min(b.length, 8192); o += 4)
      if (b.readUInt32LE(o) === MULTIBOOT_HEADER_MAGIC) {
        b.writeUInt32LE(-(MULTIBOOT_HEADER_MAGIC + b.readUInt32LE(o + 4)) >>> 0, o + 8);
        break;
      }
  return c.truncate === null ? b : b.subarray(0, c.truncate % (b.length + 1));
}

export const loaderTarget = target('loaders', 10_000, () => {
  const mapping = GuestMemoryMapping.allocate([LOW, HIGH]);
  const mem = new RecordingMemory(mapping.descriptors);
  mem.budget = 10_000_000;
  return {
    arbitrary: caseArb,
    close: () => mapping.release(),
    run(c: LoaderCase): Verdict {
      const img = mutate(c);
      const initrd = c.initrd > 0 ? Buffer.alloc(c.initrd, 0x11) : undefined;
      mem.take();
      const v = guarded(() => {
        switch (c.kind) {
          case 'elf64':
          case 'elf32':
            if (!isElf(img)) return refused('not ELF');
            loadElf(mem, parseElf(img));
            break;
          case 'multiboot-aout':
          case 'multiboot-elf':
            loadMultiboot(mem, img, c.cmdline, initrd ? [{ data: initrd, cmdline: 'initrd' }] : []);
            break;
          case 'bzimage':
            loadLinux(mem, img, opts(initrd, c.cmdline));
            break;
          case 'vmlinux':
            loadLinuxElf(mem, img, opts(initrd, c.cmdline));
            break;
          case 'pvh':
            if (findPvhEntry(img) === undefined) return refused('no PVH note');
            loadPvh(mem, img, opts(initrd, c.cmdline));
            break;
        }
        return undefined;
      });
      if (v.kind === 'crash') return v;
      for (const a of mem.take())
        if (!(Number.isSafeInteger(a.gpa) && a.gpa >= 0 && inRam(a.gpa, a.len)))
          return oob(`loader ${a.kind} of ${a.len} bytes at 0x${a.gpa.toString(16)} outside guest RAM (${v.kind})`);
      return v;
    },
  };
});
