/**
 * Unit tests for the Linux boot protocol loaders (bzImage, ELF vmlinux, PVH) on images built here
 * byte by byte and loaded into real (anonymous) guest memory: every zero-page and hvm_start_info
 * field, kernel and initrd placement, each rejection with its one-line ImageError, fuzzing that
 * only clean rejections escape, and, when VIREO_TEST_BZIMAGE names one, a real distribution kernel.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, beforeEach, describe, test } from 'node:test';
import fc from 'fast-check';
import {
  BP,
  HDR,
  KASLR_FLAG,
  LOADED_HIGH,
  XLF_CAN_BE_LOADED_ABOVE_4G,
  XLF_KERNEL_64,
} from '../src/arch/x86_64/boot-params.js';
import { LAYOUT, MMIO_HOLE_START, ramRanges } from '../src/arch/x86_64/layout.js';
import {
  BOOT_CS,
  BOOT_DS,
  GDT_LINUX_32,
  GDT_LINUX_64,
  setupLinuxLongMode,
  setupLinuxProtectedMode,
} from '../src/arch/x86_64/linux-entry.js';
import { E820_RAM, E820_RESERVED, type MemMapEntry, memoryMap } from '../src/arch/x86_64/memmap.js';
import { GiB, MiB } from '../src/common/address.js';
import { GuestMemoryError, ImageError } from '../src/common/errors.js';
import { prepareKit } from '../src/kit/kit.js';
import type { Segment, Sregs } from '../src/kvm/structs.js';
import {
  bzImageFootprint,
  isBzImage,
  type LinuxBootOptions,
  loadLinux,
  loadLinuxElf,
  parseBzImage,
} from '../src/loader/linux.js';
import { findPvhEntry, loadPvh, XEN_HVM_START_MAGIC_VALUE } from '../src/loader/pvh.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';

import {
  type BzSpec,
  buildBzImage,
  buildElf,
  buildVmlinux,
  KERNEL,
  note,
  pattern,
  u32,
  u64,
  VMLINUX_TEXT,
} from './support/linux-images.js';

// ---------------------------------------------------------------------------------------------
// Guest memory: 40 MiB at 0 and 16 MiB at 4 GiB (above the MMIO hole, where no initrd may go).

const LOW = { gpa: 0, size: 40 * MiB };
const HIGH = { gpa: 4 * GiB, size: 16 * MiB };
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
    assert.ok(e instanceof ImageError, `expected ImageError, got ${e instanceof Error ? e.stack : String(e)}`);
    assert.equal(e.code, 'VIREO_ERR_BAD_IMAGE');
    assert.ok(!e.message.includes('\n'), 'one line');
    assert.match(e.message, re);
    return true;
  };

const allCc = (gpa: number, len: number): boolean => mem.read(gpa, len).every((b) => b === 0xcc);

const E820_TEST: MemMapEntry[] = [
  { addr: 0, size: 0x9fc00, type: E820_RAM },
  { addr: 0x9fc00, size: 0x400, type: E820_RESERVED },
  { addr: 0xf0000, size: 0x10000, type: E820_RESERVED },
  { addr: 1 * MiB, size: LOW.size - 1 * MiB, type: E820_RAM },
  { addr: HIGH.gpa, size: HIGH.size, type: E820_RAM },
];

const opts = (o: Partial<LinuxBootOptions> = {}): LinuxBootOptions => ({
  cmdline: 'console=ttyS0 root=/dev/vda',
  e820: E820_TEST,
  rsdpAddr: 0xe0000,
  ...o,
});

function readE820From(m: GuestMemory, zp: number): MemMapEntry[] {
  const n = m.read8(zp + BP.e820Entries);
  return Array.from({ length: n }, (_, i) => {
    const o = zp + BP.e820Table + i * 20;
    return { addr: Number(m.read64(o)), size: Number(m.read64(o + 8)), type: m.read32(o + 16) };
  });
}
const readE820 = (zp: number): MemMapEntry[] => readE820From(mem, zp);

// ---------------------------------------------------------------------------------------------

describe('bzImage setup header', () => {
  test('parse reads every field the loader uses', () => {
    const img = buildBzImage();
    assert.equal(isBzImage(img), true);
    assert.deepEqual(parseBzImage(img), {
      version: 0x020f,
      setupSects: 4,
      setupBytes: 5 * 512,
      headerEnd: 0x26c,
      loadflags: LOADED_HIGH | 0x80 | KASLR_FLAG,
      xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
      initrdAddrMax: 0x7fffffff,
      kernelAlignment: 0x200000,
      relocatable: true,
      cmdlineSize: 2047,
      prefAddress: 0x1000000,
      initSize: 0x800000,
      kernelSize: KERNEL.length,
    });
  });

  test('setup_sects 0 means 4', () => {
    const h = parseBzImage(buildBzImage({ setupSects: 0 }));
    assert.equal(h.setupSects, 4);
    assert.equal(h.setupBytes, 2560);
    assert.equal(parseBzImage(buildBzImage({ setupSects: 27 })).setupBytes, 28 * 512);
  });

  test('fields from later protocols are ignored in older ones', () => {
    // 2.11: no xloadflags (the 64-bit entry is unknown); 2.09: no pref_address or init_size.
    assert.equal(parseBzImage(buildBzImage({ version: 0x020b })).xloadflags, 0);
    const h = parseBzImage(buildBzImage({ version: 0x0209, jumpLen: 0x3a }));
    assert.deepEqual([h.prefAddress, h.initSize, h.xloadflags, h.headerEnd], [0, 0, 0, 0x23c]);
  });

  test('isBzImage is false for ELF, short and empty files', () => {
    assert.equal(isBzImage(buildVmlinux()), false);
    assert.equal(isBzImage(Buffer.alloc(0)), false);
    assert.equal(isBzImage(buildBzImage().subarray(0, 0x205)), false);
  });

  test('footprint: a relocatable kernel runs at max(align_up(load), pref_address) for init_size', () => {
    const h = parseBzImage(buildBzImage());
    assert.deepEqual(bzImageFootprint(h, 1 * MiB), { start: 1 * MiB, end: 16 * MiB + 0x800000 });
    const low = parseBzImage(buildBzImage({ prefAddress: 0n, kernelAlignment: 0x400000 }));
    assert.deepEqual(bzImageFootprint(low, 1 * MiB), { start: 1 * MiB, end: 4 * MiB + 0x800000 });
    // A fixed kernel runs at pref_address.
    const fixed = parseBzImage(buildBzImage({ relocatable: false, prefAddress: 0x200000n, initSize: 0x100000 }));
    assert.deepEqual(bzImageFootprint(fixed, 1 * MiB), { start: 1 * MiB, end: 3 * MiB });
    // An init_size smaller than the file still covers the file.
    const tiny = parseBzImage(buildBzImage({ prefAddress: 0n, kernelAlignment: 0x1000, initSize: 0x10 }));
    assert.deepEqual(bzImageFootprint(tiny, 1 * MiB), { start: 1 * MiB, end: 1 * MiB + KERNEL.length });
  });
});

describe('bzImage load', () => {
  test('the protected-mode kernel lands at 1 MiB; 64-bit entry at +0x200', () => {
    const img = buildBzImage();
    const r = loadLinux(mem, img, opts());
    assert.equal(r.kernelLoad, 0x100000);
    assert.equal(r.entry, 0x100200);
    assert.equal(r.entryMode, '64');
    assert.equal(r.kernelEnd, 16 * MiB + 0x800000);
    assert.deepEqual(mem.read(0x100000, KERNEL.length), KERNEL);
    assert.ok(allCc(0x100000 + KERNEL.length, 0x1000), 'nothing after the kernel bytes');
    assert.ok(allCc(0x100000 - 0x1000, 0x1000), 'nothing right below 1 MiB');
    assert.equal(r.zeroPage, LAYOUT.bootInfo);
    assert.equal(r.cmdlineAddr, LAYOUT.cmdline);
    assert.equal(r.initrd, undefined);
  });

  test('without XLF_KERNEL_64 (or before 2.12) the entry is 32-bit at the load address', () => {
    for (const img of [buildBzImage({ xloadflags: 0 }), buildBzImage({ version: 0x020b })]) {
      const r = loadLinux(mem, img, opts());
      assert.equal(r.entry, 0x100000);
      assert.equal(r.entryMode, '32');
    }
  });

  test('zero page: every field', () => {
    const img = buildBzImage();
    const initrd = pattern(0x5000, 7);
    const r = loadLinux(mem, img, opts({ initrd }));
    const zp = r.zeroPage;
    const rd = r.initrd as { addr: number; size: number };

    // Header fields copied from the image and kept.
    assert.equal(mem.read8(zp + HDR.setupSects), 4);
    assert.equal(mem.read16(zp + HDR.bootFlag), 0xaa55);
    assert.equal(mem.read32(zp + HDR.header), 0x53726448);
    assert.equal(mem.read16(zp + HDR.version), 0x020f);
    assert.equal(mem.read16(zp + 0x1fc), 0x0801, 'root_dev');
    assert.equal(mem.read32(zp + HDR.initrdAddrMax), 0x7fffffff);
    assert.equal(mem.read32(zp + HDR.kernelAlignment), 0x200000);
    assert.equal(mem.read8(zp + HDR.relocatableKernel), 1);
    assert.equal(mem.read16(zp + HDR.xloadflags), 3);
    assert.equal(mem.read32(zp + HDR.cmdlineSize), 2047);
    assert.equal(mem.read64(zp + HDR.prefAddress), 0x1000000n);
    assert.equal(mem.read32(zp + HDR.initSize), 0x800000);
    assert.equal(mem.read32(zp + HDR.kernelInfoOffset), 0xd000);
    // Fields the loader writes.
    assert.equal(mem.read8(zp + HDR.typeOfLoader), 0xff, 'type_of_loader: undefined');
    assert.equal(mem.read8(zp + HDR.extLoaderType), 0);
    assert.equal(mem.read8(zp + HDR.extLoaderVer), 0);
    assert.equal(mem.read8(zp + HDR.loadflags), LOADED_HIGH, 'LOADED_HIGH only: no heap, no KASLR_FLAG');
    assert.equal(mem.read16(zp + HDR.heapEndPtr), 0);
    assert.equal(mem.read16(zp + HDR.vidMode), 0xffff);
    assert.equal(mem.read32(zp + HDR.code32Start), 0x100000);
    assert.equal(mem.read32(zp + HDR.cmdLinePtr), LAYOUT.cmdline);
    assert.equal(mem.read32(zp + BP.extCmdLinePtr), 0);
    assert.equal(mem.read32(zp + HDR.ramdiskImage), rd.addr);
    assert.equal(mem.read32(zp + HDR.ramdiskSize), 0x5000);
    assert.equal(mem.read32(zp + BP.extRamdiskImage), 0);
    assert.equal(mem.read32(zp + BP.extRamdiskSize), 0);
    assert.equal(mem.read64(zp + HDR.setupData), 0n, 'no setup_data list');
    assert.equal(mem.read32(zp + HDR.hardwareSubarch), 0);
    assert.equal(mem.read64(zp + HDR.hardwareSubarch + 4), 0n);
    assert.equal(mem.read64(zp + BP.acpiRsdpAddr), 0xe0000n);
    assert.equal(mem.read8(zp + BP.sentinel), 0, 'sentinel clear: the header was copied cleanly');
    assert.deepEqual(readE820(zp), E820_TEST);
    assert.equal(mem.readCString(LAYOUT.cmdline), 'console=ttyS0 root=/dev/vda');
    assert.deepEqual(mem.read(rd.addr, rd.size), initrd);

    // And nothing else: the whole page equals a zeroed page with the header copied and the fields set.
    const want = Buffer.alloc(4096);
    img.copy(want, 0x1f1, 0x1f1, 0x26c);
    want[HDR.typeOfLoader] = 0xff;
    want[HDR.extLoaderVer] = 0;
    want[HDR.extLoaderType] = 0;
    want[HDR.loadflags] = LOADED_HIGH;
    want.writeUInt16LE(0, HDR.heapEndPtr);
    want.writeUInt16LE(0xffff, HDR.vidMode);
    want.writeUInt32LE(0x100000, HDR.code32Start);
    want.writeUInt32LE(LAYOUT.cmdline, HDR.cmdLinePtr);
    want.writeUInt32LE(rd.addr, HDR.ramdiskImage);
    want.writeUInt32LE(rd.size, HDR.ramdiskSize);
    want.writeBigUInt64LE(0n, HDR.setupData);
    want.writeUInt32LE(0, HDR.hardwareSubarch);
    want.writeBigUInt64LE(0n, HDR.hardwareSubarch + 4);
    want.writeBigUInt64LE(0xe0000n, BP.acpiRsdpAddr);
    want[BP.e820Entries] = E820_TEST.length;
    E820_TEST.forEach((e, i) => {
      want.writeBigUInt64LE(BigInt(e.addr), BP.e820Table + i * 20);
      want.writeBigUInt64LE(BigInt(e.size), BP.e820Table + i * 20 + 8);
      want.writeUInt32LE(e.type, BP.e820Table + i * 20 + 16);
    });
    assert.deepEqual(mem.read(zp, 4096), want);
    assert.ok(allCc(zp + 4096, 0x100) && allCc(zp - 0x100, 0x100), 'nothing around the zero page');
  });

  test('the setup header is copied only as far as the jump says (0x202 + byte at 0x201)', () => {
    const r = loadLinux(mem, buildBzImage({ jumpLen: 0x66 }), opts()); // Ends at 0x268: no kernel_info_offset.
    assert.equal(mem.read32(r.zeroPage + HDR.handoverOffset), 0x190);
    assert.equal(mem.read32(r.zeroPage + HDR.kernelInfoOffset), 0);
    assert.ok(mem.read(r.zeroPage + 0x268, 0x290 - 0x268).every((b) => b === 0));
    assert.ok(mem.read(r.zeroPage, 0x1f1 - 1).every((b, i) => b === 0 || (i >= 0x70 && i < 0x78) || i >= 0x1e8));
  });

  test('custom addresses and a high RSDP; an empty initrd is no initrd', () => {
    const r = loadLinux(
      mem,
      buildBzImage(),
      opts({ cmdline: '', zeroPageAddr: 0x8000, cmdlineAddr: 0x90000, rsdpAddr: 0, initrd: Buffer.alloc(0) }),
    );
    assert.equal(r.zeroPage, 0x8000);
    assert.equal(r.cmdlineAddr, 0x90000);
    assert.equal(mem.read32(0x8000 + HDR.cmdLinePtr), 0x90000);
    assert.equal(mem.read8(0x90000), 0, 'an empty command line is an empty string');
    assert.equal(mem.read64(0x8000 + BP.acpiRsdpAddr), 0n);
    assert.equal(r.initrd, undefined);
    assert.equal(mem.read32(0x8000 + HDR.ramdiskImage), 0);
    assert.equal(mem.read32(0x8000 + HDR.ramdiskSize), 0);
  });

  test('the command line may be exactly cmdline_size bytes; UTF-8 is kept', () => {
    const r = loadLinux(mem, buildBzImage({ cmdlineSize: 16 }), opts({ cmdline: 'x'.repeat(16) }));
    assert.equal(mem.readCString(r.cmdlineAddr), 'x'.repeat(16));
    loadLinux(mem, buildBzImage(), opts({ cmdline: 'hostname=vireo\u00e9' }));
    assert.equal(mem.read(LAYOUT.cmdline, 17).toString('utf8'), 'hostname=vireo\u00e9\0');
  });

  test('the default memory map is memoryMap(mem)', () => {
    const r = loadLinux(mem, buildBzImage(), { cmdline: 'x' });
    assert.deepEqual(readE820(r.zeroPage), memoryMap(mem));
    assert.equal(mem.read64(r.zeroPage + BP.acpiRsdpAddr), 0n);
  });
});

describe('initrd placement', () => {
  const initrdAt = (spec: BzSpec, size: number, e820 = E820_TEST): { addr: number; size: number } => {
    const r = loadLinux(mem, buildBzImage(spec), opts({ initrd: Buffer.alloc(size, 0x11), e820 }));
    const rd = r.initrd as { addr: number; size: number };
    assert.equal(mem.read32(r.zeroPage + HDR.ramdiskImage), rd.addr);
    assert.ok(mem.read(rd.addr, size).every((b) => b === 0x11));
    return rd;
  };

  test('as high as possible in low RAM, page aligned; never above the MMIO hole', () => {
    // The RAM at 4 GiB is higher but beyond the 32-bit ramdisk_image and the MMIO hole.
    assert.deepEqual(initrdAt({ initrdAddrMax: 0xffffffff }, 0x5000), { addr: LOW.size - 0x5000, size: 0x5000 });
    mem.fill(LOW.size - 0x5000, 0x5000, 0xcc);
    assert.deepEqual(initrdAt({}, 0x4321), { addr: LOW.size - 0x5000, size: 0x4321 });
    assert.ok(allCc(LOW.size - 0x5000 + 0x4321, 0x5000 - 0x4321), 'nothing written past the initrd');
  });

  test('initrd_addr_max is the highest byte the initrd may occupy', () => {
    // 0x1ffffff: an initrd of 0x2000 bytes may start at 0x1ffe000 exactly.
    assert.equal(initrdAt({ initrdAddrMax: 0x1ffffff }, 0x2000).addr, 0x1ffe000);
    assert.equal(initrdAt({ initrdAddrMax: 0x1ffffff }, 0x2001).addr, 0x1ffd000);
  });

  test('never over the kernel: initrd_addr_max inside the kernel footprint leaves no room', () => {
    // The footprint is 1 MiB .. 24 MiB (pref_address 16 MiB + init_size 8 MiB).
    assert.throws(
      () => initrdAt({ initrdAddrMax: 20 * MiB - 1 }, 0x1000),
      bad(
        /initrd of 4096 bytes does not fit .* beside the kernel \(0x100000\.\.0x1800000\); give the VM more memory \(--mem\)/,
      ),
    );
    // Just above it fits, right at the footprint's end.
    assert.equal(initrdAt({ initrdAddrMax: 24 * MiB + 0xfff }, 0x1000).addr, 24 * MiB);
  });

  test('only e820 RAM is used: reserved ranges (ACPI tables) at the top are skipped', () => {
    const e820: MemMapEntry[] = [
      ...E820_TEST.slice(0, 3),
      { addr: 1 * MiB, size: 36 * MiB, type: E820_RAM },
      { addr: 37 * MiB, size: 3 * MiB, type: 3 },
    ];
    assert.equal(initrdAt({}, 0x3000, e820).addr, 37 * MiB - 0x3000);
  });

  test('the highest hole between the kernel, zero page and command line is taken', () => {
    // A kernel whose footprint stops at 3 MiB, the command line placed high at 30 MiB with less than
    // a page of RAM after it.
    const spec: BzSpec = { relocatable: false, prefAddress: 0x200000n, initSize: 0x100000 };
    const r = loadLinux(
      mem,
      buildBzImage(spec),
      opts({
        cmdlineAddr: 30 * MiB,
        initrd: Buffer.alloc(0x1000),
        e820: [{ addr: 0, size: 30 * MiB + 0x1800, type: 1 }],
      }),
    );
    assert.equal(r.kernelEnd, 3 * MiB);
    assert.equal(r.initrd?.addr, 30 * MiB - 0x1000);
  });

  test('an initrd too big for the RAM left is rejected before anything is written', () => {
    assert.throws(
      () => loadLinux(mem, buildBzImage(), opts({ initrd: Buffer.alloc(16 * MiB + 1) })),
      bad(/initrd of 16777217 bytes does not fit in guest RAM below 0x80000000 .*--mem/),
    );
    assert.ok(allCc(0x100000, 0x1000) && allCc(LAYOUT.bootInfo, 0x1000) && allCc(LAYOUT.cmdline, 0x100));
    // Exactly what is left fits.
    assert.equal(loadLinux(mem, buildBzImage(), opts({ initrd: Buffer.alloc(16 * MiB) })).initrd?.addr, 24 * MiB);
  });

  test('property: the initrd is aligned, in e820 RAM, below the ceiling and clear of everything else', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 * MiB }),
        fc.integer({ min: 2 * MiB, max: 0xffffffff }),
        fc.integer({ min: 0, max: 12 * MiB }),
        (size, addrMax, initSize) => {
          const spec: BzSpec = { initrdAddrMax: addrMax, initSize, prefAddress: 0x200000n };
          const h = parseBzImage(buildBzImage(spec));
          const fp = bzImageFootprint(h, 1 * MiB);
          try {
            const r = loadLinux(mem, buildBzImage(spec), opts({ initrd: Buffer.alloc(size) }));
            const rd = r.initrd as { addr: number; size: number };
            assert.equal(rd.addr % 4096, 0);
            assert.ok(rd.addr >= fp.end || rd.addr + size <= fp.start, 'clear of the kernel');
            assert.ok(rd.addr + size - 1 <= addrMax, 'at or below initrd_addr_max');
            assert.ok(rd.addr >= 1 * MiB && rd.addr + size <= LOW.size, 'in low RAM above 1 MiB');
            // As high as possible: one more page up would break a rule.
            const up = rd.addr + 4096;
            assert.ok(up + size > LOW.size || up + size - 1 > addrMax);
          } catch (e) {
            bad(/does not fit/)(e);
            // It really does not fit: the room above the kernel and below the ceiling is too small.
            const top = Math.min(addrMax + 1, LOW.size);
            assert.ok(Math.floor((top - size) / 4096) * 4096 < fp.end);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('bzImage rejections', () => {
  const withByte = (at: number, v: number, img = buildBzImage()): Buffer => {
    img[at] = v;
    return img;
  };
  const rejections: [string, () => Buffer, RegExp, Partial<LinuxBootOptions>?][] = [
    ['an empty file', () => Buffer.alloc(0), /not a bootable bzImage: file is 0 bytes, too short/],
    ['a bad boot_flag', () => buildBzImage({ bootFlag: 0x55aa }), /boot_flag at 0x1fe is 0x55aa, not 0xaa55/],
    ['an ELF file', () => buildVmlinux(), /boot_flag at 0x1fe is 0x[0-9a-f]+, not 0xaa55/],
    ['no "HdrS"', () => buildBzImage({ magic: 0x53726449 }), /no "HdrS" signature at 0x202/],
    [
      'protocol 2.05',
      () => buildBzImage({ version: 0x0205 }),
      /^kernel uses Linux boot protocol 2\.05; vireo needs 2\.06 or later \(Linux 2\.6\.22\+\)$/,
    ],
    ['protocol 2.00', () => buildBzImage({ version: 0x0200 }), /boot protocol 2\.00; vireo needs 2\.06/],
    ['no LOADED_HIGH (a zImage)', () => buildBzImage({ loadflags: 0x80 }), /loadflags lacks LOADED_HIGH: a zImage/],
    ['no jump at 0x200', () => buildBzImage({ jumpOp: 0xe9 }), /no short jump at 0x200/],
    [
      'a header too short for its protocol',
      () => buildBzImage({ jumpLen: 0x50 }),
      /setup header ends at 0x252 but protocol 2\.15 fields reach 0x264/,
    ],
    [
      'a header past 0x290',
      () => buildBzImage({ jumpLen: 0x90 }),
      /setup header ends at 0x292, past boot_params' limit/,
    ],
    [
      'a file ending inside the header',
      () => buildBzImage().subarray(0, 0x260),
      /file ends at 0x260, inside the setup header/,
    ],
    [
      'setup_sects past the end of the file',
      () => withByte(HDR.setupSects, 200),
      /setup_sects 200 puts the kernel at 0x19200, past the end of the file/,
    ],
    [
      'a truncated kernel (syssize beyond the file)',
      () => buildBzImage().subarray(0, 5 * 512 + 1000),
      /syssize says 65536 bytes of kernel but the file has 1000 after the setup \(truncated\?\)/,
    ],
    [
      'a kernel_alignment that is not a power of two',
      () => buildBzImage({ kernelAlignment: 0x300000 }),
      /kernel_alignment 0x300000 is not a power of two/,
    ],
    ['a zero kernel_alignment', () => buildBzImage({ kernelAlignment: 0 }), /kernel_alignment 0x0 is not a power/],
    [
      'pref_address above 4 GiB',
      () => buildBzImage({ prefAddress: 1n << 40n }),
      /pref_address 0x10000000000 is above 4 GiB/,
    ],
    [
      'a kernel that does not fit (init_size)',
      () => buildBzImage({ initSize: 0x2000000 }),
      /kernel needs guest RAM at 0x100000\.\.0x3000000 \(file 65536 bytes, init_size 33554432\); give the VM more memory \(--mem\)/,
    ],
    [
      'a fixed kernel whose pref_address is beyond RAM',
      () => buildBzImage({ relocatable: false, prefAddress: 0x8000000n }),
      /needs guest RAM at 0x100000\.\.0x8800000/,
    ],
    [
      'a command line longer than cmdline_size',
      () => buildBzImage({ cmdlineSize: 10 }),
      /^the kernel command line is 11 bytes; kernel accepts at most 10$/,
      { cmdline: 'x'.repeat(11) },
    ],
    ['a command line with a NUL', () => buildBzImage(), /command line contains a NUL character/, { cmdline: 'a\0b' }],
    [
      'a zero page outside memory',
      () => buildBzImage(),
      /zero page at 0x2800000 is outside guest memory below 4 GiB/,
      { zeroPageAddr: 40 * MiB },
    ],
    [
      'a command line outside memory',
      () => buildBzImage(),
      /command line at 0x27ffff0 is outside guest memory/,
      { cmdlineAddr: 40 * MiB - 16, cmdline: 'x'.repeat(20) },
    ],
    [
      'a command line over the zero page',
      () => buildBzImage(),
      /command line overlaps the zero page/,
      { cmdlineAddr: LAYOUT.bootInfo + 0x800 },
    ],
    [
      'a zero page inside the kernel',
      () => buildBzImage(),
      /kernel at 0x100000\.\.0x1800000 overlaps the zero page at 0x200000/,
      { zeroPageAddr: 2 * MiB },
    ],
    [
      'an initrd with no room',
      () => buildBzImage(),
      /initrd of \d+ bytes does not fit/,
      { initrd: Buffer.alloc(LOW.size) },
    ],
  ];
  for (const [what, image, re, o] of rejections)
    test(`rejects ${what}, before writing anything`, () => {
      assert.throws(() => loadLinux(mem, image(), opts(o)), bad(re));
      assert.ok(allCc(0x100000, 0x10000), 'kernel area untouched');
      assert.ok(allCc(LAYOUT.bootInfo, 0x1000), 'zero page untouched');
      assert.ok(allCc(LAYOUT.cmdline, 0x100), 'command line untouched');
    });

  test('the kernel name leads the message', () => {
    assert.throws(
      () => loadLinux(mem, buildBzImage({ bootFlag: 0 }), opts({ name: 'vmlinuz-6.1' })),
      bad(/^vmlinuz-6\.1 is not a bootable bzImage/),
    );
  });

  test('a bad caller memory map is a layout error, not an image error', () => {
    const many = Array.from({ length: 129 }, (_, i) => ({ addr: i * 4096, size: 4096, type: 1 }));
    assert.throws(() => loadLinux(mem, buildBzImage(), opts({ e820: many })), /at most 128/);
    assert.throws(
      () => loadLinux(mem, buildBzImage(), opts({ e820: [{ addr: -1, size: 1, type: 1 }] })),
      /bad memory map entry/,
    );
  });
});

// ---------------------------------------------------------------------------------------------

describe('ELF vmlinux', () => {
  test('segments at their paddr and a made-up setup header in the zero page', () => {
    const initrd = pattern(0x1800, 2);
    const r = loadLinuxElf(mem, buildVmlinux(), opts({ initrd }));
    assert.equal(r.entry, 0x1000000);
    assert.equal(r.entryMode, '64');
    assert.equal(r.kernelLoad, 0x1000000);
    assert.equal(r.kernelEnd, 0x1006000);
    assert.equal(r.header, undefined);
    assert.deepEqual(mem.read(0x1000000, VMLINUX_TEXT.length), VMLINUX_TEXT);
    assert.ok(
      mem.read(0x1004100, 0x1f00).every((b) => b === 0),
      'BSS zeroed',
    );

    const zp = r.zeroPage;
    const rd = r.initrd as { addr: number; size: number };
    assert.equal(rd.addr, LOW.size - 0x2000);
    assert.deepEqual(mem.read(rd.addr, rd.size), initrd);
    const want = Buffer.alloc(4096);
    want.writeUInt16LE(0xaa55, HDR.bootFlag);
    want.writeUInt32LE(0x53726448, HDR.header);
    want.writeUInt16LE(0x020f, HDR.version);
    want[HDR.typeOfLoader] = 0xff;
    want[HDR.loadflags] = LOADED_HIGH;
    want.writeUInt16LE(0xffff, HDR.vidMode);
    want.writeUInt32LE(0x1000000, HDR.code32Start);
    want.writeUInt32LE(rd.addr, HDR.ramdiskImage);
    want.writeUInt32LE(rd.size, HDR.ramdiskSize);
    want.writeUInt32LE(LAYOUT.cmdline, HDR.cmdLinePtr);
    want.writeUInt32LE(0x1000000, HDR.kernelAlignment);
    want.writeUInt32LE(2047, HDR.cmdlineSize);
    want.writeBigUInt64LE(0xe0000n, BP.acpiRsdpAddr);
    want[BP.e820Entries] = E820_TEST.length;
    E820_TEST.forEach((e, i) => {
      want.writeBigUInt64LE(BigInt(e.addr), BP.e820Table + i * 20);
      want.writeBigUInt64LE(BigInt(e.size), BP.e820Table + i * 20 + 8);
      want.writeUInt32LE(e.type, BP.e820Table + i * 20 + 16);
    });
    assert.deepEqual(mem.read(zp, 4096), want);
    assert.equal(mem.readCString(LAYOUT.cmdline), 'console=ttyS0 root=/dev/vda');
  });

  test('a 32-bit vmlinux is entered in protected mode', () => {
    assert.equal(loadLinuxElf(mem, buildVmlinux(32), opts()).entryMode, '32');
  });

  const rejections: [string, () => Buffer, RegExp, Partial<LinuxBootOptions>?][] = [
    ['not ELF', () => buildBzImage(), /not a loadable ELF image: bad magic/],
    [
      'a segment below 1 MiB',
      () => buildElf(64, 0x100000, [{ paddr: 0x9000, data: pattern(16) }]),
      /segment at 0x9000 lies below 1 MiB/,
    ],
    [
      'a segment beyond RAM',
      () => buildElf(64, 0x1000000, [{ paddr: 0x1000000, data: pattern(16), memsz: 64 * MiB }]),
      /segment at 0x1000000 \(67108864 bytes\) does not fit in guest memory; give the VM more memory/,
    ],
    [
      'an entry point outside memory',
      () => buildElf(64, 0x3000000, [{ paddr: 0x1000000, data: pattern(16) }]),
      /entry point 0x3000000 is outside guest memory below 4 GiB/,
    ],
    [
      'a command line over 2047 bytes',
      () => buildVmlinux(),
      /command line is 2048 bytes; kernel accepts at most 2047/,
      { cmdline: 'y'.repeat(2048) },
    ],
    ['an initrd too big', () => buildVmlinux(), /initrd of \d+ bytes does not fit/, { initrd: Buffer.alloc(30 * MiB) }],
  ];
  for (const [what, image, re, o] of rejections)
    test(`rejects ${what}, before writing anything`, () => {
      assert.throws(() => loadLinuxElf(mem, image(), opts(o)), bad(re));
      assert.ok(allCc(0x1000000, 0x10000) && allCc(LAYOUT.bootInfo, 0x1000));
    });
});

// ---------------------------------------------------------------------------------------------

describe('PVH', () => {
  const gnu = note('GNU', 3, pattern(20, 4)); // NT_GNU_BUILD_ID first, as in a real vmlinux.
  const xen = (desc: Buffer, type = 18): Buffer => note('Xen', type, desc);

  test('findPvhEntry reads XEN_ELFNOTE_PHYS32_ENTRY (4- or 8-byte value) after other notes', () => {
    const notes = Buffer.concat([gnu, xen(u32(0x1234), 6), xen(u32(0x1000abc))]);
    assert.equal(findPvhEntry(buildVmlinux(64, notes)), 0x1000abc);
    assert.equal(findPvhEntry(buildVmlinux(32, notes)), 0x1000abc);
    assert.equal(findPvhEntry(buildVmlinux(64, Buffer.concat([gnu, xen(u64(0x1000040n))]))), 0x1000040);
    // 8-byte alignment (a segment of GNU property notes) pads names and values to 8.
    const n8 = Buffer.concat([note('GNU', 5, pattern(12), 8), note('Xen', 18, u32(0x1000080), 8)]);
    assert.equal(findPvhEntry(buildVmlinux(64, n8, 8)), 0x1000080);
  });

  test('findPvhEntry: undefined for non-ELF images and for ELF without the note', () => {
    assert.equal(findPvhEntry(buildBzImage()), undefined);
    assert.equal(findPvhEntry(Buffer.alloc(0)), undefined);
    assert.equal(findPvhEntry(buildVmlinux()), undefined);
    assert.equal(findPvhEntry(buildVmlinux(64, Buffer.concat([gnu, xen(u32(1), 17)]))), undefined);
    assert.equal(findPvhEntry(buildVmlinux(64, note('Xenon', 18, u32(0x1000000)))), undefined);
  });

  const noteRejections: [string, Buffer, RegExp][] = [
    ['a 2-byte value', xen(Buffer.from([1, 2])), /XEN_ELFNOTE_PHYS32_ENTRY has a 2-byte value \(4 or 8 expected\)/],
    ['an entry above 4 GiB', xen(u64(1n << 32n)), /PVH entry point 0x100000000 is above 4 GiB/],
    [
      'a note running past its segment',
      Buffer.concat([gnu, xen(u32(0x1000000)).subarray(0, 18)]),
      /a note in PT_NOTE segment 2 extends past the segment/,
    ],
  ];
  for (const [what, notes, re] of noteRejections)
    test(`findPvhEntry rejects ${what}`, () => {
      assert.throws(() => findPvhEntry(buildVmlinux(64, notes)), bad(re));
    });

  test('findPvhEntry rejects a PT_NOTE segment past the end of the file', () => {
    const img = buildVmlinux(64, xen(u32(0x1000000)));
    img.writeBigUInt64LE(BigInt(img.length), 64 + 2 * 56 + 8); // Segment 2's p_offset.
    assert.throws(() => findPvhEntry(img), bad(/PT_NOTE segment 2 extends past the end of the file/));
  });

  test('loadPvh: hvm_start_info, module list and memory map', () => {
    const initrd = pattern(0x2100, 8);
    const img = buildVmlinux(64, Buffer.concat([gnu, xen(u32(0x1000100))]));
    const r = loadPvh(mem, img, { ...opts({ initrd }), cmdline: 'console=hvc0' });
    assert.equal(r.entry, 0x1000100);
    assert.equal(r.startInfo, LAYOUT.bootInfo);
    assert.equal(r.kernelLoad, 0x1000000);
    assert.equal(r.kernelEnd, 0x1006000);
    assert.deepEqual(mem.read(0x1000000, VMLINUX_TEXT.length), VMLINUX_TEXT);
    const si = r.startInfo;
    const rd = r.initrd as { addr: number; size: number };
    assert.deepEqual(rd, { addr: LOW.size - 0x3000, size: 0x2100 });
    assert.deepEqual(mem.read(rd.addr, rd.size), initrd);
    assert.equal(mem.read32(si), XEN_HVM_START_MAGIC_VALUE);
    assert.equal(mem.read32(si), 0x336ec578);
    assert.equal(mem.read32(si + 4), 1, 'version');
    assert.equal(mem.read32(si + 8), 0, 'flags');
    assert.equal(mem.read32(si + 12), 1, 'nr_modules');
    const modlist = Number(mem.read64(si + 16));
    assert.equal(Number(mem.read64(si + 24)), LAYOUT.cmdline, 'cmdline_paddr');
    assert.equal(mem.readCString(LAYOUT.cmdline), 'console=hvc0');
    assert.equal(mem.read64(si + 32), 0xe0000n, 'rsdp_paddr');
    const memmap = Number(mem.read64(si + 40));
    assert.equal(mem.read32(si + 48), E820_TEST.length, 'memmap_entries');
    assert.equal(mem.read32(si + 52), 0, 'reserved');
    // hvm_modlist_entry {paddr, size, cmdline_paddr, reserved}
    assert.deepEqual(
      [mem.read64(modlist), mem.read64(modlist + 8), mem.read64(modlist + 16), mem.read64(modlist + 24)],
      [BigInt(rd.addr), 0x2100n, 0n, 0n],
    );
    // hvm_memmap_table_entry {addr u64, size u64, type u32, reserved u32}
    const entries = E820_TEST.map((_, i) => {
      const o = memmap + i * 24;
      assert.equal(mem.read32(o + 20), 0, 'reserved');
      return { addr: Number(mem.read64(o)), size: Number(mem.read64(o + 8)), type: mem.read32(o + 16) };
    });
    assert.deepEqual(entries, E820_TEST);
    // The three structures do not overlap and lie in the 4 KiB page.
    assert.ok(si + 56 <= modlist && modlist + 32 <= memmap && memmap + 128 * 24 <= si + 4096);
    assert.ok(allCc(si + 4096, 0x10));
  });

  test('loadPvh without an initrd: no modules; a custom start info address', () => {
    const img = buildVmlinux(32, xen(u32(0x1000000)));
    const r = loadPvh(mem, img, { cmdline: '', e820: E820_TEST, startInfoAddr: 0x6000 });
    assert.equal(r.startInfo, 0x6000);
    assert.equal(r.initrd, undefined);
    assert.equal(mem.read32(0x6000 + 12), 0);
    assert.equal(mem.read64(0x6000 + 16), 0n, 'modlist_paddr 0 when there are no modules');
    assert.equal(mem.read64(0x6000 + 32), 0n, 'no RSDP');
  });

  test('loadPvh rejects an ELF without the note, and a note entry outside memory', () => {
    assert.throws(
      () => loadPvh(mem, buildVmlinux(), opts()),
      bad(/no XEN_ELFNOTE_PHYS32_ENTRY note: it is not a PVH kernel/),
    );
    assert.throws(
      () => loadPvh(mem, buildVmlinux(64, xen(u32(0x3000000))), opts()),
      bad(/PVH entry point 0x3000000 is outside guest memory/),
    );
    assert.ok(allCc(0x1000000, 0x1000) && allCc(LAYOUT.bootInfo, 0x1000));
  });
});

// ---------------------------------------------------------------------------------------------

describe('Linux entry GDT', () => {
  const seg = (): Segment => ({
    base: 0n,
    limit: 0,
    selector: 0,
    type: 0,
    present: 0,
    dpl: 0,
    db: 0,
    s: 0,
    l: 0,
    g: 0,
    avl: 0,
    unusable: 1,
  });
  const sregs = (): Sregs => ({
    cs: seg(),
    ds: seg(),
    es: seg(),
    fs: seg(),
    gs: seg(),
    ss: seg(),
    tr: seg(),
    ldt: seg(),
    gdt: { base: 0n, limit: 0 },
    idt: { base: 0n, limit: 0 },
    cr0: 0x60000010n,
    cr2: 0n,
    cr3: 0n,
    cr4: 0n,
    cr8: 0n,
    efer: 0n,
    apicBase: 0xfee00900n,
    interruptBitmap: Buffer.alloc(32),
  });

  test('__BOOT_CS = 0x10 and __BOOT_DS = 0x18, flat; the TSS at 0x08; 32 bytes at LAYOUT.gdt', () => {
    assert.equal(BOOT_CS, 0x10);
    assert.equal(BOOT_DS, 0x18);
    assert.deepEqual(GDT_LINUX_32, [0n, 0x008f8b000000ffffn, 0x00cf9b000000ffffn, 0x00cf93000000ffffn]);
    assert.deepEqual(GDT_LINUX_64, [0n, 0x008f8b000000ffffn, 0x00af9b000000ffffn, 0x00cf93000000ffffn]);
    assert.ok(LAYOUT.gdt + GDT_LINUX_32.length * 8 <= LAYOUT.idt);
  });

  test('32-bit entry: protected mode, paging off, selectors per boot.rst', () => {
    const s = setupLinuxProtectedMode(mem, sregs());
    assert.equal(s.cs.selector, 0x10);
    assert.equal(s.cs.db, 1);
    assert.equal(s.cs.l, 0);
    for (const r of [s.ds, s.es, s.ss, s.fs, s.gs]) assert.equal(r.selector, 0x18);
    assert.equal(s.ds.limit, 0xffffffff);
    assert.equal(s.tr.selector, 0x08);
    assert.equal(s.tr.type, 0xb);
    assert.equal(s.cr0 & 0x80000001n, 1n);
    assert.equal(s.efer, 0n);
    assert.deepEqual(s.gdt, { base: BigInt(LAYOUT.gdt), limit: 31 });
    assert.equal(mem.read64(LAYOUT.gdt + 0x10), GDT_LINUX_32[2]);
    assert.equal(mem.read64(LAYOUT.gdt + 0x18), GDT_LINUX_32[3]);
  });

  test('64-bit entry: long mode over identity page tables, selectors per boot.rst', () => {
    const s = setupLinuxLongMode(mem, sregs());
    assert.equal(s.cs.selector, 0x10);
    assert.equal(s.cs.l, 1);
    assert.equal(s.ss.selector, 0x18);
    assert.equal(s.cr3, BigInt(LAYOUT.pml4));
    assert.equal(s.cr0 & 0x80000001n, 0x80000001n);
    assert.equal(s.efer & 0x500n, 0x500n);
    assert.equal(mem.read64(LAYOUT.pd + 8), 0x200000n | 0x83n, 'identity map 2 MiB pages');
  });
});

// ---------------------------------------------------------------------------------------------

describe('fuzzing', () => {
  const mutations = fc.array(
    fc.record({
      // Mostly the setup header, sometimes anywhere.
      pos: fc.oneof(fc.integer({ min: 0x1f1, max: 0x290 }), fc.nat()),
      byte: fc.oneof(fc.integer({ min: 0, max: 255 }), fc.constantFrom(0, 0xff, 0x7f, 0x80)),
    }),
    { minLength: 1, maxLength: 6 },
  );
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

  test('mutated bzImages load or throw ImageError, nothing else; a load stays in memory', () => {
    const base = buildBzImage({ initSize: 0x400000, prefAddress: 0x200000n });
    fc.assert(
      fc.property(mutations, fc.option(fc.nat(), { nil: undefined }), fc.nat({ max: 8 * MiB }), (ms, trunc, rdSize) => {
        const b = Buffer.from(base);
        for (const { pos, byte } of ms) b[pos % b.length] = byte;
        const img = trunc === undefined ? b : b.subarray(0, trunc % (b.length + 1));
        clean(() => {
          const r = loadLinux(mem, img, opts({ initrd: Buffer.alloc(rdSize) }));
          assert.ok(mem.isValid(r.kernelLoad, r.kernelEnd - r.kernelLoad));
          if (r.initrd) assert.ok(r.initrd.addr >= r.kernelEnd && r.initrd.addr + r.initrd.size <= LOW.size);
        });
      }),
      { numRuns: 400 },
    );
  });

  test('mutated PVH images are found/loaded or throw ImageError, nothing else', () => {
    const base = buildVmlinux(64, Buffer.concat([note('GNU', 3, pattern(20)), note('Xen', 18, u32(0x1000000))]));
    fc.assert(
      fc.property(mutations, (ms) => {
        const b = Buffer.from(base);
        for (const { pos, byte } of ms) b[pos % b.length] = byte;
        clean(() => {
          findPvhEntry(b);
          loadPvh(mem, b, opts());
        });
      }),
      { numRuns: 400 },
    );
  });
});

// ---------------------------------------------------------------------------------------------

describe("a real kernel (VIREO_TEST_BZIMAGE, else the guest kit's Debian kernel)", () => {
  test('Debian bzImage: the header parses and the kernel loads into 256 MiB', async () => {
    const path = process.env.VIREO_TEST_BZIMAGE || (await prepareKit()).kernel;
    const image = readFileSync(path);
    const h = parseBzImage(image, path);
    assert.ok(h.version >= 0x020f, `protocol ${h.version.toString(16)} (Linux 5.5+ has 2.15)`);
    assert.ok(h.xloadflags & XLF_KERNEL_64, 'XLF_KERNEL_64');
    assert.equal(h.relocatable, true);
    assert.ok(h.loadflags & LOADED_HIGH);
    assert.ok(h.initSize > h.kernelSize, 'init_size covers the decompressed kernel');
    assert.ok(h.cmdlineSize >= 255);

    const map = GuestMemoryMapping.allocate(ramRanges(256 * MiB));
    try {
      const m = new GuestMemory(map.descriptors);
      const initrd = pattern(3 * MiB, 6);
      const r = loadLinux(m, image, { cmdline: 'console=ttyS0 panic=-1', initrd, rsdpAddr: 0xe0000, name: path });
      assert.equal(r.entry, 0x100200);
      assert.equal(r.entryMode, '64');
      assert.deepEqual(m.read(0x100000, 4096), image.subarray(h.setupBytes, h.setupBytes + 4096));
      assert.deepEqual(m.read(0x100000 + h.kernelSize - 4096, 4096), image.subarray(image.length - 4096));
      assert.equal(r.kernelEnd, bzImageFootprint(h, 0x100000).end);
      const rd = r.initrd as { addr: number; size: number };
      assert.ok(rd.addr >= r.kernelEnd, 'initrd above the kernel footprint');
      assert.ok(rd.addr + rd.size - 1 <= h.initrdAddrMax);
      assert.equal(rd.addr, 256 * MiB - 3 * MiB, 'at the top of RAM');
      assert.deepEqual(m.read(rd.addr, 64), initrd.subarray(0, 64));
      const zp = r.zeroPage;
      assert.deepEqual(m.read(zp + 0x1f1, 0x210 - 0x1f1), image.subarray(0x1f1, 0x210), 'header copied');
      assert.equal(m.read16(zp + HDR.version), h.version);
      assert.equal(m.read8(zp + HDR.typeOfLoader), 0xff);
      assert.equal(m.read32(zp + HDR.cmdLinePtr), LAYOUT.cmdline);
      assert.equal(m.readCString(LAYOUT.cmdline), 'console=ttyS0 panic=-1');
      assert.deepEqual(readE820From(m, zp), memoryMap(m));
      assert.ok(r.kernelEnd < MMIO_HOLE_START);
    } finally {
      map.release();
    }
  });
});
