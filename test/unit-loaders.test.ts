/**
 * Unit tests for the ELF and Multiboot loaders, on images built here byte by byte and loaded into
 * real (anonymous) guest memory: valid loads, every rejection with its one-line ImageError, the
 * Multiboot information structure, and fuzzing that only ImageError/GuestMemoryError ever escape.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import fc from 'fast-check';
import { LAYOUT } from '../src/arch/x86_64/layout.js';
import { E820_RAM, E820_RESERVED } from '../src/arch/x86_64/memmap.js';
import { MiB } from '../src/common/address.js';
import { GuestMemoryError, ImageError } from '../src/common/errors.js';
import { isElf, loadElf, parseElf } from '../src/loader/elf.js';
import {
  findMultibootHeader,
  loadMultiboot,
  MULTIBOOT_HEADER_MAGIC,
  type MultibootModule,
} from '../src/loader/multiboot.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';

import {
  AOUT,
  buildAout,
  buildElf,
  buildMultibootElf,
  EH,
  mbHeader,
  PT_NOTE,
  pattern,
  phField,
  type SegSpec,
} from './support/images.js';

// ---------------------------------------------------------------------------------------------
// Guest memory: 4 MiB at 0 and 1 MiB at 8 MiB (a gap between).

const LOW = { gpa: 0, size: 4 * MiB };
const HIGH = { gpa: 8 * MiB, size: 1 * MiB };
let mapping: GuestMemoryMapping;
let mem: GuestMemory;

before(() => {
  mapping = GuestMemoryMapping.allocate([LOW, HIGH]);
  mem = new GuestMemory(mapping.descriptors);
});
after(() => mapping.release());
beforeEach(() => {
  mem.fill(LOW.gpa, LOW.size, 0xcc);
  mem.fill(HIGH.gpa, HIGH.size, 0xcc);
});

/** An ImageError with the bad-image code, a one-line message, matching re. */
const bad =
  (re: RegExp) =>
  (e: unknown): boolean => {
    assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
    assert.equal(e.code, 'VIREO_ERR_BAD_IMAGE');
    assert.ok(!e.message.includes('\n'), 'one line');
    assert.match(e.message, re);
    return true;
  };

const allCc = (gpa: number, len: number): boolean => mem.read(gpa, len).every((b) => b === 0xcc);
const allZero = (gpa: number, len: number): boolean => mem.read(gpa, len).every((b) => b === 0);

// ---------------------------------------------------------------------------------------------

describe('ELF', () => {
  for (const cls of [64, 32] as const) {
    test(`ELF${cls}: parse reports class, entry and the PT_LOAD segments only`, () => {
      const img = buildElf({
        cls,
        entry: 0x100080,
        segs: [
          { paddr: 0x100000, vaddr: 0x100000, data: pattern(300) },
          { type: PT_NOTE, paddr: 0, data: pattern(16) },
          { paddr: 0x200000, vaddr: 0x80200000, data: pattern(10), memsz: 0x1000 },
        ],
      });
      assert.equal(isElf(img), true);
      const elf = parseElf(img);
      assert.equal(elf.class, cls);
      assert.equal(elf.entry, 0x100080);
      assert.equal(elf.segments.length, 2);
      assert.deepEqual(
        elf.segments.map(({ paddr, vaddr, filesz, memsz }) => ({ paddr, vaddr, filesz, memsz })),
        [
          { paddr: 0x100000, vaddr: 0x100000, filesz: 300, memsz: 300 },
          { paddr: 0x200000, vaddr: 0x80200000, filesz: 10, memsz: 0x1000 },
        ],
      );
      assert.equal(elf.raw, img);
    });

    test(`ELF${cls}: load copies each segment to its paddr and zeroes the BSS`, () => {
      const a = pattern(0x1234, 3);
      const b = pattern(0x40, 9);
      const img = buildElf({
        cls,
        entry: 0x100000,
        segs: [
          { paddr: 0x100000, vaddr: 0xffffffff - 0xfffff, data: a, memsz: a.length + 0x300 },
          { paddr: HIGH.gpa + 0x1000, data: b, memsz: 0x2000 },
          { paddr: 0x300000, data: Buffer.alloc(0), memsz: 0 }, // Empty: skipped.
        ],
      });
      const loaded = loadElf(mem, parseElf(img));
      assert.deepEqual(loaded, { entry: 0x100000, low: 0x100000, high: HIGH.gpa + 0x3000 });
      assert.deepEqual(mem.read(0x100000, a.length), a, 'file bytes copied at paddr (not vaddr)');
      assert.ok(allZero(0x100000 + a.length, 0x300), 'BSS zeroed');
      assert.ok(allCc(0x100000 + a.length + 0x300, 0x100), 'nothing written past memsz');
      assert.ok(allCc(0x100000 - 0x100, 0x100), 'nothing written below paddr');
      assert.deepEqual(mem.read(HIGH.gpa + 0x1000, b.length), b);
      assert.ok(allZero(HIGH.gpa + 0x1000 + b.length, 0x2000 - b.length));
      assert.ok(allCc(HIGH.gpa + 0x3000, 0x10));
      assert.ok(allCc(0x300000, 0x10), 'the empty segment wrote nothing');
    });
  }

  test('ET_DYN images are accepted', () => {
    const img = buildElf({ cls: 64, type: 3, entry: 0x100000, segs: [{ paddr: 0x100000, data: pattern(8) }] });
    assert.equal(parseElf(img).segments.length, 1);
  });

  test('the image name leads the message', () => {
    assert.throws(
      () => parseElf(Buffer.from('nope, not an elf at all'), 'bzImage'),
      bad(/^bzImage is not a loadable ELF image: bad magic/),
    );
  });

  const valid64 = () =>
    buildElf({ cls: 64, entry: 0x100000, segs: [{ paddr: 0x100000, data: pattern(64), memsz: 128 }] });
  const valid32 = () =>
    buildElf({ cls: 32, entry: 0x100000, segs: [{ paddr: 0x100000, data: pattern(64), memsz: 128 }] });

  const rejections: [string, () => Buffer, RegExp][] = [
    ['bad magic', () => Object.assign(valid64(), { 0: 0x7e }), /bad magic/],
    ['empty file', () => Buffer.alloc(0), /bad magic/],
    ['truncated header (shorter than any ELF header)', () => valid64().subarray(0, 40), /shorter than an ELF header/],
    ['truncated ELF64 header', () => valid64().subarray(0, 60), /shorter than an ELF64 header/],
    ['unknown class', () => Object.assign(valid64(), { 4: 3 }), /unknown ELF class 3/],
    ['big-endian', () => Object.assign(valid64(), { 5: 2 }), /not little-endian/],
    [
      'relocatable object',
      () => buildElf({ cls: 64, type: 1, entry: 0, segs: [{ paddr: 0x100000, data: pattern(4) }] }),
      /type 1 is not an executable/,
    ],
    [
      'ELF64 for another machine',
      () => buildElf({ cls: 64, machine: 183, entry: 0, segs: [{ paddr: 0x100000, data: pattern(4) }] }),
      /machine 183 is not x86_64/,
    ],
    [
      'ELF64 claiming i386',
      () => buildElf({ cls: 64, machine: 3, entry: 0, segs: [{ paddr: 0x100000, data: pattern(4) }] }),
      /machine 3 is not x86_64/,
    ],
    [
      'ELF32 claiming x86_64',
      () => buildElf({ cls: 32, machine: 62, entry: 0, segs: [{ paddr: 0x100000, data: pattern(4) }] }),
      /machine 62 is not i386/,
    ],
    ['no program headers', () => buildElf({ cls: 64, entry: 0, segs: [] }), /no program headers/],
    [
      'program header entries too small',
      () => {
        const b = valid64();
        b.writeUInt16LE(32, EH[64].phentsize);
        return b;
      },
      /program header size 32 is too small/,
    ],
    [
      'program headers outside the file (phoff)',
      () => {
        const b = valid64();
        b.writeBigUInt64LE(BigInt(b.length - 8), EH[64].phoff);
        return b;
      },
      /program headers lie outside the file/,
    ],
    [
      'program headers outside the file (phnum)',
      () => {
        const b = valid32();
        b.writeUInt16LE(200, EH[32].phnum);
        return b;
      },
      /program headers lie outside the file/,
    ],
    [
      'phoff beyond 2^53',
      () => {
        const b = valid64();
        b.writeBigUInt64LE(1n << 60n, EH[64].phoff);
        return b;
      },
      /program headers lie outside the file/,
    ],
    [
      'ELF64 filesz > memsz',
      () => {
        const b = valid64();
        b.writeBigUInt64LE(32n, phField(64, 0, 'memsz'));
        return b;
      },
      /segment 0 has filesz > memsz/,
    ],
    [
      'ELF32 filesz > memsz',
      () => {
        const b = valid32();
        b.writeUInt32LE(32, phField(32, 0, 'memsz'));
        return b;
      },
      /segment 0 has filesz > memsz/,
    ],
    [
      'segment past the end of the file (filesz)',
      () => {
        const b = valid64();
        b.writeBigUInt64LE(100n, phField(64, 0, 'filesz'));
        b.writeBigUInt64LE(200n, phField(64, 0, 'memsz'));
        return b;
      },
      /segment 0 extends past the end of the file/,
    ],
    [
      'segment past the end of the file (offset)',
      () => {
        const b = valid32();
        b.writeUInt32LE(0xfffffff0, phField(32, 0, 'offset'));
        return b;
      },
      /segment 0 extends past the end of the file/,
    ],
    [
      'segment addresses beyond 2^53',
      () => {
        const b = valid64();
        b.writeBigUInt64LE(0xffffffff80000000n, phField(64, 0, 'paddr'));
        return b;
      },
      /segment 0 has addresses beyond 2\^53/,
    ],
    [
      'no PT_LOAD segments',
      () => buildElf({ cls: 64, entry: 0, segs: [{ type: PT_NOTE, paddr: 0, data: pattern(8) }] }),
      /no PT_LOAD segments/,
    ],
  ];
  for (const [what, image, re] of rejections)
    test(`rejects: ${what}`, () => {
      assert.throws(() => parseElf(image()), bad(re));
    });

  test('segments that do not fit guest memory are rejected before anything is written', () => {
    const cases: [string, SegSpec[], number?][] = [
      ['in the gap', [{ paddr: LOW.size, data: pattern(16) }]],
      ['straddling the end of RAM', [{ paddr: LOW.size - 8, data: pattern(16) }]],
      ['BSS running off the end of RAM', [{ paddr: LOW.size - 0x1000, data: pattern(16), memsz: 0x2000 }]],
      ['beyond all memory', [{ paddr: 0xfee00000, data: pattern(16) }]],
      ['below the minimum address', [{ paddr: 0x1000, data: pattern(16) }], 0x100000],
    ];
    for (const [what, segs, minAddr] of cases) {
      const elf = parseElf(buildElf({ cls: 32, entry: 0x100000, segs }));
      assert.throws(() => loadElf(mem, elf, 'kernel', minAddr ?? 0), bad(/does not fit in guest memory.*--mem/), what);
    }
    assert.ok(allCc(LOW.size - 0x1000, 0x1000));
  });
});

// ---------------------------------------------------------------------------------------------

describe('Multiboot header search', () => {
  const at = (offset: number, header: Buffer, size = offset + header.length + 64): Buffer => {
    const b = Buffer.alloc(size);
    header.copy(b, offset);
    return b;
  };

  test('finds a header at the start', () => {
    assert.deepEqual(findMultibootHeader(at(0, mbHeader(0x3))), {
      offset: 0,
      flags: 0x3,
      headerAddr: 0,
      loadAddr: 0,
      loadEndAddr: 0,
      bssEndAddr: 0,
      entryAddr: 0,
    });
  });

  test('reads the a.out kludge fields', () => {
    const h = findMultibootHeader(at(64, mbHeader(AOUT | 2, [0x100040, 0x100000, 0x102000, 0x103000, 0x100080])));
    assert.deepEqual(h, {
      offset: 64,
      flags: AOUT | 2,
      headerAddr: 0x100040,
      loadAddr: 0x100000,
      loadEndAddr: 0x102000,
      bssEndAddr: 0x103000,
      entryAddr: 0x100080,
    });
  });

  test('the header must lie wholly within the first 8 KiB', () => {
    assert.equal(findMultibootHeader(at(8180, mbHeader(0), 16384))?.offset, 8180);
    assert.equal(findMultibootHeader(at(8184, mbHeader(0), 16384)), undefined);
    assert.equal(findMultibootHeader(at(12288, mbHeader(0), 16384)), undefined);
  });

  test('the header must be 4-byte aligned', () => {
    for (const o of [1, 2, 3, 6, 4097]) assert.equal(findMultibootHeader(at(o, mbHeader(0))), undefined, `offset ${o}`);
    assert.equal(findMultibootHeader(at(4096, mbHeader(0)))?.offset, 4096);
  });

  test('the checksum must make the three words sum to zero', () => {
    const h = mbHeader(0x3);
    h.writeUInt32LE(h.readUInt32LE(8) + 1, 8);
    assert.equal(findMultibootHeader(at(0, h)), undefined);
    // A bad candidate is skipped and the search goes on.
    const b = at(0, h, 256);
    mbHeader(0x2).copy(b, 32);
    assert.equal(findMultibootHeader(b)?.offset, 32);
    assert.equal(findMultibootHeader(b)?.flags, 0x2);
  });

  test('a header at the very end of a short file is found; a truncated one is not', () => {
    assert.equal(findMultibootHeader(mbHeader(0))?.offset, 0);
    assert.equal(findMultibootHeader(mbHeader(0).subarray(0, 11)), undefined);
    assert.equal(findMultibootHeader(Buffer.alloc(0)), undefined);
    // An a.out header needs its 32 bytes.
    assert.equal(findMultibootHeader(mbHeader(AOUT, [0, 0, 0, 0, 0]).subarray(0, 28)), undefined);
  });
});

describe('Multiboot load', () => {
  const mods = (): MultibootModule[] => [
    { data: Buffer.from('first module'), cmdline: 'mod1 arg=1' },
    { data: pattern(5000, 5), cmdline: 'mod2' },
  ];

  test('a.out kludge: bytes at load_addr, BSS zeroed to bss_end_addr, entry from the header', () => {
    const img = buildAout({ payload: pattern(500), bss: 0x2345, entryOffset: 0x40 });
    const r = loadMultiboot(mem, img, '', []);
    assert.equal(r.entry, 0x100040);
    assert.deepEqual(mem.read(0x100000, img.length), img);
    const loadEnd = 0x100000 + img.length;
    assert.ok(allZero(loadEnd, 0x2345), 'BSS zeroed');
    assert.equal(r.kernelEnd, loadEnd + 0x2345);
    assert.ok(allCc(r.kernelEnd, 0x100), 'nothing past bss_end_addr');
    assert.ok(allCc(0x100000 - 0x100, 0x100), 'nothing below load_addr');
    assert.deepEqual(r.modules, []);
  });

  test('a.out kludge: the header need not be at the start of the file', () => {
    // The file starts at load_addr; the header sits 0x80 bytes in, so header_addr is load_addr + 0x80.
    const img = buildAout({ headerOffset: 0x80, loadAddr: 0x180000 });
    const r = loadMultiboot(mem, img, '', []);
    assert.deepEqual(mem.read(0x180000, img.length), img);
    assert.equal(mem.read32(0x180080), MULTIBOOT_HEADER_MAGIC);
    assert.equal(r.entry, 0x180000 + 0x80 + 32);
  });

  test('a.out kludge: load_addr after the file start skips the leading bytes', () => {
    // header_addr - load_addr = 0x10 while the header is at 0x40: the file is loaded from offset 0x30.
    const img = buildAout({ headerOffset: 0x40, loadAddr: 0x100000, headerAddr: 0x100010, loadEndAddr: 0 });
    loadMultiboot(mem, img, '', []);
    assert.deepEqual(mem.read(0x100000, img.length - 0x30), img.subarray(0x30));
  });

  test('a.out kludge: load_end_addr 0 loads the whole file, bss_end_addr 0 means no BSS', () => {
    const img = buildAout({ loadEndAddr: 0, bssEndAddr: 0 });
    const r = loadMultiboot(mem, img, '', []);
    assert.deepEqual(mem.read(0x100000, img.length), img);
    assert.equal(r.kernelEnd, 0x100000 + img.length);
    assert.ok(allCc(r.kernelEnd, 0x10));
  });

  test('a.out kludge: optional (high) flag bits are ignored', () => {
    const img = buildAout({ flags: AOUT | (1 << 17) | (1 << 31) | 0x3 });
    assert.equal(loadMultiboot(mem, img, '', []).entry, 0x100020);
  });

  test('ELF32 Multiboot kernel loads through the ELF loader', () => {
    const img = buildMultibootElf();
    const r = loadMultiboot(mem, img, '', []);
    assert.equal(r.entry, 0x10000c);
    assert.equal(mem.read32(0x100000), MULTIBOOT_HEADER_MAGIC);
    const textLen = 12 + 100;
    assert.equal(r.kernelEnd, 0x100000 + textLen + 0x800);
    assert.ok(allZero(0x100000 + textLen, 0x800));
  });

  test('information structure: flags, memory, command line, modules, memory map, loader name', () => {
    const img = buildAout();
    const r = loadMultiboot(mem, img, 'console=ttyS0 quiet', mods());
    const info = r.infoAddr;
    assert.equal(info, LAYOUT.multibootInfo);
    assert.equal(mem.read32(info), 0x24d, 'MEMORY | CMDLINE | MODS | MEM_MAP | BOOT_LOADER_NAME');
    assert.equal(mem.read32(info + 4), 639, 'mem_lower: KiB below the EBDA');
    assert.equal(mem.read32(info + 8), (LOW.size - 1 * MiB) / 1024, 'mem_upper: KiB from 1 MiB to the first hole');
    assert.equal(mem.readCString(mem.read32(info + 16)), 'console=ttyS0 quiet');
    assert.equal(mem.readCString(mem.read32(info + 64)), 'vireo');

    // Modules: after the kernel, page aligned, each with its string.
    assert.equal(mem.read32(info + 20), 2);
    const modsAddr = mem.read32(info + 24);
    const expected = mods();
    let prevEnd = r.kernelEnd;
    expected.forEach((m, i) => {
      const e = modsAddr + i * 16;
      const start = mem.read32(e);
      const end = mem.read32(e + 4);
      assert.equal(start % 4096, 0, `module ${i} is page aligned`);
      assert.ok(start >= prevEnd, `module ${i} starts after what precedes it`);
      assert.equal(end - start, m.data.length);
      assert.deepEqual(mem.read(start, m.data.length), m.data);
      assert.equal(mem.readCString(mem.read32(e + 8)), m.cmdline);
      assert.equal(mem.read32(e + 12), 0, 'reserved');
      assert.deepEqual(r.modules[i], { start, end });
      prevEnd = end;
    });
    assert.equal(
      mem.read32(modsAddr),
      Math.ceil(r.kernelEnd / 4096) * 4096,
      'the first module at the first page after the kernel',
    );

    // Memory map: size=20 entries, 24 bytes apart.
    const mmapLen = mem.read32(info + 44);
    const mmapAddr = mem.read32(info + 48);
    assert.equal(mmapLen % 24, 0);
    const entries = [];
    for (let o = mmapAddr; o < mmapAddr + mmapLen; o += 24) {
      assert.equal(mem.read32(o), 20, 'size field excludes itself');
      entries.push({ addr: Number(mem.read64(o + 4)), size: Number(mem.read64(o + 12)), type: mem.read32(o + 20) });
    }
    assert.deepEqual(entries, [
      { addr: 0, size: 0x9fc00, type: E820_RAM },
      { addr: 0x9fc00, size: 0x400, type: E820_RESERVED },
      { addr: 0xf0000, size: 0x10000, type: E820_RESERVED },
      { addr: 1 * MiB, size: LOW.size - 1 * MiB, type: E820_RAM },
      { addr: HIGH.gpa, size: HIGH.size, type: E820_RAM },
    ]);
  });

  test('no modules: mods_count 0', () => {
    const r = loadMultiboot(mem, buildAout(), '', []);
    assert.equal(mem.read32(r.infoAddr + 20), 0);
    assert.equal(mem.readCString(mem.read32(r.infoAddr + 16)), '');
  });

  const rejections: [string, () => Buffer, RegExp, MultibootModule[]?][] = [
    ['no header', () => pattern(4096), /no Multiboot header in its first 8 KiB/],
    ['a required video mode (flag 2)', () => buildAout({ flags: AOUT | 0x7 }), /video mode \(Multiboot flag 2\)/],
    ['unknown required flags', () => buildAout({ flags: AOUT | 0x8 | 0x3 }), /features 0x8 /],
    ['unknown required flags (ELF)', () => buildMultibootElf(32, 0x8000), /features 0x8000 /],
    ['neither a.out kludge nor ELF', () => Buffer.concat([mbHeader(0x3), pattern(64)]), /must be ELF/],
    ['a 64-bit ELF', () => buildMultibootElf(64), /must be 32-bit/],
    [
      'an ELF segment below 1 MiB',
      () => {
        const text = Buffer.concat([mbHeader(0x3), pattern(16)]);
        return buildElf({ cls: 32, entry: 0x10000, segs: [{ paddr: 0x10000, data: text }] });
      },
      /does not fit in guest memory/,
    ],
    ['header_addr below load_addr', () => buildAout({ headerAddr: 0xff000 }), /header_addr is below load_addr/],
    [
      'load_addr before the start of the file',
      () => buildAout({ headerAddr: 0x100000 + 0x1000 }),
      /load_addr points before the start of the file/,
    ],
    [
      'load_end_addr past the end of the file',
      () => buildAout({ loadEndAddr: 0x200000 }),
      /load_end_addr extends past the end of the file/,
    ],
    [
      'load_end_addr below load_addr',
      () => buildAout({ loadEndAddr: 0xff000 }),
      /load_end_addr extends past the end of the file/,
    ],
    [
      'bss_end_addr below load_end_addr',
      () => buildAout({ bssEndAddr: 0x100010 }),
      /bss_end_addr is below load_end_addr/,
    ],
    ['an image below 1 MiB', () => buildAout({ loadAddr: 0x10000 }), /does not fit in guest memory above 1 MiB/],
    [
      'a BSS running into the gap',
      () => buildAout({ loadAddr: LOW.size - 0x1000, bss: 0x2000 }),
      /does not fit in guest memory above 1 MiB/,
    ],
    [
      'an entry point outside memory',
      () => buildAout({ entryAddr: 5 * MiB }),
      /entry point 0x500000 is outside guest memory/,
    ],
    [
      'a module that does not fit',
      () => buildAout(),
      /module of \d+ bytes does not fit/,
      [{ data: Buffer.alloc(4 * MiB), cmdline: '' }],
    ],
    [
      'too many modules',
      () => buildAout(),
      /at most 48 Multiboot modules/,
      Array.from({ length: 49 }, () => ({ data: Buffer.from('m'), cmdline: '' })),
    ],
  ];
  for (const [what, image, re, modules] of rejections)
    test(`rejects ${what}`, () => {
      assert.throws(() => loadMultiboot(mem, image(), 'cmd', modules ?? []), bad(re));
    });

  test('strings beyond the 64 KiB info area are rejected', () => {
    assert.throws(() => loadMultiboot(mem, buildAout(), 'x'.repeat(0x10000), []), bad(/strings are too long/));
  });
});

// ---------------------------------------------------------------------------------------------

describe('fuzzing', () => {
  /** Byte mutations, biased to the headers where the parsers look. */
  const mutations = fc.array(
    fc.record({
      pos: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.nat()),
      byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 0xff, 0x7f, 0x80)),
    }),
    { minLength: 1, maxLength: 6 },
  );
  /** Mostly no truncation; sometimes cut the file at a random length. */
  const truncation = fc.oneof({ arbitrary: fc.constant(null), weight: 5 }, { arbitrary: fc.nat(), weight: 1 });
  const mutate = (img: Buffer, ms: { pos: number; byte: number }[], truncate: number | null): Buffer => {
    const b = Buffer.from(img);
    for (const { pos, byte } of ms) b[pos % b.length] = byte;
    return truncate === null ? b : b.subarray(0, truncate % (b.length + 1));
  };
  /** Only a clean rejection is allowed to escape. */
  const clean = (f: () => void): void => {
    try {
      f();
    } catch (e) {
      assert.ok(
        e instanceof ImageError || e instanceof GuestMemoryError,
        `unexpected ${e instanceof Error ? e.stack : String(e)}`,
      );
      assert.ok(!e.message.includes('\n'));
    }
  };

  const elfs = [
    buildElf({
      cls: 64,
      entry: 0x100000,
      segs: [
        { paddr: 0x100000, data: pattern(256), memsz: 0x2000 },
        { paddr: HIGH.gpa, data: pattern(64), memsz: 64 },
      ],
    }),
    buildElf({ cls: 32, entry: 0x100000, segs: [{ paddr: 0x100000, data: pattern(256), memsz: 0x1000 }] }),
  ];

  test('mutated ELF images load or throw ImageError, nothing else', () => {
    fc.assert(
      fc.property(fc.constantFrom(...elfs), mutations, truncation, (img, ms, trunc) => {
        clean(() => loadElf(mem, parseElf(mutate(img, ms, trunc))));
      }),
      { numRuns: 500 },
    );
  });

  /** Multiboot images with the header's checksum repaired after mutation, so the loader goes deeper. */
  const fixChecksum = (b: Buffer): Buffer => {
    const h = findMultibootHeader(b);
    if (h !== undefined) return b;
    for (let o = 0; o + 12 <= Math.min(b.length, 8192); o += 4)
      if (b.readUInt32LE(o) === MULTIBOOT_HEADER_MAGIC) {
        b.writeUInt32LE(-(MULTIBOOT_HEADER_MAGIC + b.readUInt32LE(o + 4)) >>> 0, o + 8);
        break;
      }
    return b;
  };
  const mbImages = [buildAout({ headerOffset: 0x40, bss: 0x800 }), buildMultibootElf()];

  test('mutated Multiboot images load or throw ImageError/GuestMemoryError, nothing else', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...mbImages),
        mutations,
        truncation,
        fc.boolean(),
        fc.array(fc.record({ size: fc.integer({ min: 0, max: 3 * MiB }), cmdline: fc.string({ maxLength: 20 }) }), {
          maxLength: 3,
        }),
        (img, ms, trunc, fix, modSpecs) => {
          const b = mutate(img, ms, trunc);
          const modules = modSpecs.map((m) => ({ data: Buffer.alloc(m.size, 0x6d), cmdline: m.cmdline }));
          clean(() => {
            const r = loadMultiboot(mem, fix ? fixChecksum(b) : b, 'cmd', modules);
            // A successful load describes memory that exists.
            assert.ok(mem.isValid(r.entry, 1));
            for (const m of r.modules)
              assert.ok(m.start % 4096 === 0 && mem.isValid(m.start, Math.max(1, m.end - m.start)));
          });
        },
      ),
      { numRuns: 400 },
    );
  });

  test('random a.out header fields load or throw ImageError, nothing else', () => {
    const u32 = fc.integer({ min: 0, max: 0xffffffff });
    /** Mostly near the consistent value, sometimes anything. */
    const near = (spread: number) =>
      fc.oneof(
        { arbitrary: fc.constant(0), weight: 4 },
        { arbitrary: fc.integer({ min: -spread, max: spread }), weight: 4 },
        { arbitrary: u32.map((v) => ({ raw: v })), weight: 1 },
      );
    const field = (base: number, d: number | { raw: number }): number =>
      typeof d === 'number' ? (base + d) >>> 0 : d.raw;
    fc.assert(
      fc.property(
        fc.oneof(
          fc.integer({ min: 0xf0000, max: 0x200000 }),
          fc.integer({ min: LOW.size - 0x2000, max: LOW.size + 0x1000 }),
          fc.integer({ min: HIGH.gpa - 0x1000, max: HIGH.gpa + HIGH.size }),
          u32,
        ),
        fc.integer({ min: 0, max: 64 }),
        near(64),
        fc.oneof(fc.constant({ raw: 0 }), near(400)),
        fc.oneof(fc.constant({ raw: 0 }), near(0x4000)),
        near(0x800),
        (loadAddr, headerWords, dh, dle, dbss, dent) => {
          const headerOffset = headerWords * 4;
          const img = buildAout({ headerOffset, payload: pattern(300) });
          const loadEnd = field(loadAddr, typeof dle === 'number' ? img.length + dle : dle);
          const bssEnd = field(loadEnd, dbss);
          mbHeader(AOUT | 3, [
            field(loadAddr, typeof dh === 'number' ? headerOffset + dh : dh),
            loadAddr,
            loadEnd,
            bssEnd,
            field(loadAddr, dent),
          ]).copy(img, headerOffset);
          clean(() => {
            const r = loadMultiboot(mem, img, '', []);
            assert.ok(r.kernelEnd >= loadAddr && mem.isValid(loadAddr, r.kernelEnd - loadAddr));
            assert.ok(mem.isValid(r.entry, 1));
          });
        },
      ),
      { numRuns: 500 },
    );
  });
});
