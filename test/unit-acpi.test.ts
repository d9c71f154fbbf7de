/**
 * ACPI tables, their AML and the Intel MP table, written into real guest memory and read back:
 * checksums, pointers, the fields Linux reads, MADT and MP entries for several vCPU counts. The
 * strongest checks hand the tables to Intel's ACPICA tools (Debian's acpica-tools): `iasl -d`
 * disassembles each table without a warning, the disassembly recompiles to the same bytes, and
 * `acpiexec` (the interpreter Linux uses) loads FADT + FACS + MADT + DSDT and enters S5 with SLP_TYP 5.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  ACPI_OEM_ID,
  ACPI_PM_TMR,
  ACPI_PM1A_CNT,
  ACPI_PM1A_EVT,
  ACPI_RESET_PORT,
  ACPI_RESET_VALUE,
  ACPI_S5_SLP_TYP,
  ACPI_SCI_IRQ,
  type AcpiConfig,
  type AcpiTables,
  buildAcpiTables,
  byteSum,
  dsdtAml,
  FADT_F,
  IAPC_BOOT_ARCH,
  MADT_TYPE,
  processorName,
  writeAcpiTables,
} from '../src/arch/x86_64/acpi.js';
import { eisaIdValue, integer, nameString, pkg, pkgLength, string } from '../src/arch/x86_64/aml.js';
import {
  ACPI_TABLES_END,
  ACPI_TABLES_START,
  BIOS_AREA_END,
  BIOS_AREA_START,
  IO_APIC_ADDR,
  LOCAL_APIC_ADDR,
  MAX_XAPIC_CPUS,
  MPTABLE_END,
  MPTABLE_START,
} from '../src/arch/x86_64/firmware-layout.js';
import { MP_ENTRY, MP_ENTRY_SIZE, MP_INT, writeMpTable } from '../src/arch/x86_64/mptable.js';
import { ConfigError, VireoError } from '../src/common/errors.js';
import { GuestMemory, GuestMemoryMapping } from '../src/memory/guest-memory.js';

let mapping: GuestMemoryMapping;
let mem: GuestMemory;
let work: string;

before(() => {
  mapping = GuestMemoryMapping.allocate([{ gpa: 0, size: 16 << 20 }]);
  mem = new GuestMemory(mapping.descriptors);
  work = mkdtempSync(join(tmpdir(), 'vireo-acpi-'));
});
after(() => {
  mapping.release();
  rmSync(work, { recursive: true, force: true });
});

/** Clear the BIOS area, then write the tables. */
function write(config: AcpiConfig): AcpiTables {
  mem.fill(BIOS_AREA_START, BIOS_AREA_END - BIOS_AREA_START, 0);
  return writeAcpiTables(mem, config);
}

function find(t: AcpiTables, name: string): { addr: number; length: number } {
  const e = t.tables.find((x) => x.name === name);
  assert.ok(e, `table ${name} is written`);
  return e;
}

function bytesOf(t: AcpiTables, name: string): Buffer {
  const e = find(t, name);
  return mem.read(e.addr, e.length);
}

const ascii = (b: Uint8Array, off: number, len: number): string =>
  Buffer.from(b.subarray(off, off + len)).toString('latin1');

interface MadtEntry {
  type: number;
  bytes: Buffer;
}

function madtEntries(madt: Buffer): MadtEntry[] {
  const out: MadtEntry[] = [];
  let o = 44;
  while (o < madt.length) {
    const len = madt[o + 1] as number;
    assert.ok(len >= 2 && o + len <= madt.length, `MADT entry at ${o} has a sane length`);
    out.push({ type: madt[o] as number, bytes: madt.subarray(o, o + len) });
    o += len;
  }
  assert.equal(o, madt.length, 'MADT entries fill the table exactly');
  return out;
}

// ---------------------------------------------------------------------------------------------
// ACPICA tools.

const INSTALL_HINT =
  'install Intel’s ACPICA tools: `apt-get install acpica-tools` (Debian/Ubuntu; scripts/setup.sh installs it)';

function tool(name: string, args: string[], cwd = work): { status: number; out: string } {
  const r = spawnSync(name, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT')
    assert.fail(`${name} is not installed: the ACPI table tests check vireo's tables with it; ${INSTALL_HINT}`);
  if (r.error) throw r.error;
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

/** Lines where ACPICA complains: firmware/BIOS warnings and errors, bad checksums, "****" markers. */
function complaints(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => /warning|error|incorrect|invalid|unknown|\*\*\*\*/i.test(l))
    .filter((l) => !/Compilation successful\. 0 Errors, 0 Warnings/.test(l));
}

/** Disassemble one table with `iasl -d`: no complaints; returns the .dsl text. */
function disassemble(name: string, bytes: Uint8Array): string {
  const dat = join(work, `${name}.dat`);
  writeFileSync(dat, bytes);
  const r = tool('iasl', ['-d', dat]);
  assert.equal(r.status, 0, `iasl -d ${name}: ${r.out}`);
  assert.deepEqual(complaints(r.out), [], `iasl -d ${name} complains:\n${r.out}`);
  const dsl = readFileSync(join(work, `${name}.dsl`), 'utf8');
  assert.deepEqual(complaints(dsl.replace(/^ \* .*$/gm, '')), [], `${name}.dsl flags problems`);
  return dsl;
}

/** Recompile a disassembly: iasl must accept it and give back the same bytes (bar checksum and compiler ID). */
function recompile(name: string, original: Uint8Array, hasHeader: boolean): void {
  const r = tool('iasl', ['-p', `rt-${name}`, `${name}.dsl`]);
  assert.equal(r.status, 0, `iasl ${name}.dsl: ${r.out}`);
  assert.match(r.out, /Compilation successful\. 0 Errors, 0 Warnings/, r.out);
  const back = readFileSync(join(work, `rt-${name}.aml`));
  assert.equal(back.length, original.length, `${name} recompiles to the same length`);
  const mask = (b: Uint8Array): Buffer => {
    const c = Buffer.from(b);
    if (hasHeader) {
      c[9] = 0; // checksum: covers the compiler ID below
      c.fill(0, 28, 36); // creator ID and revision: iasl writes its own
    }
    return c;
  };
  assert.deepEqual(mask(back), mask(original), `${name}: the disassembly recompiles to the same bytes`);
}

/**
 * Run acpiexec until its output shows `until`, then stop it: after entering S5 for real, ACPICA
 * stalls 10 s before retrying, which acpiexec sits through. stdbuf makes its output line-buffered.
 */
async function acpiexecUntil(args: string[], until: string): Promise<{ out: string; sawIt: boolean }> {
  tool('acpiexec', ['-v']); // fails with the install hint when it is missing
  const hasStdbuf = spawnSync('stdbuf', ['--version']).status === 0;
  const child = hasStdbuf
    ? spawn('stdbuf', ['-oL', '-eL', 'acpiexec', ...args], { cwd: work })
    : spawn('acpiexec', args, { cwd: work });
  let out = '';
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const onData = (d: Buffer): void => {
      out += d.toString('utf8');
      if (out.includes(until)) child.kill('SIGTERM');
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', () => {
      clearTimeout(timer);
      resolve({ out, sawIt: out.includes(until) });
    });
  });
}

// ---------------------------------------------------------------------------------------------

describe('AML encoder', () => {
  test('PkgLength takes 1..4 bytes and counts itself', () => {
    assert.deepEqual(pkgLength(0), [1]);
    assert.deepEqual(pkgLength(62), [63]);
    assert.deepEqual(pkgLength(63), [0x40 | ((63 + 2) & 0xf), (63 + 2) >> 4]);
    assert.deepEqual(pkgLength(0xffd), [0x4f, 0xff]); // 0xfff total
    const three = pkgLength(0xffe); // 0x1001 total
    assert.deepEqual(three, [0x80 | 0x1, 0x00, 0x01]);
    const four = pkgLength(0x100000);
    assert.equal(four.length, 4);
    assert.equal((four[0] as number) >> 6, 3);
  });

  test('integers use the shortest encoding', () => {
    assert.deepEqual(integer(0), [0x00]);
    assert.deepEqual(integer(1), [0x01]);
    assert.deepEqual(integer(5), [0x0a, 5]);
    assert.deepEqual(integer(0x3f8), [0x0b, 0xf8, 0x03]);
    assert.deepEqual(integer(0xfec00000), [0x0c, 0x00, 0x00, 0xc0, 0xfe]);
    assert.deepEqual(integer(0x1_0000_0000), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert.deepEqual(integer(0xffff_ffff_ffff_ffffn), [0xff]);
    assert.throws(() => integer(-1), VireoError);
    assert.throws(() => integer(1.5), VireoError);
  });

  test('names, strings, packages and EISA IDs', () => {
    assert.deepEqual(nameString('_S5'), [0x5f, 0x53, 0x35, 0x5f]);
    assert.deepEqual(nameString('\\_SB_'), [0x5c, 0x5f, 0x53, 0x42, 0x5f]);
    assert.equal(nameString('_SB_.COM1')[0], 0x2e);
    assert.deepEqual(nameString('\\_SB_.PCI0.ISA').slice(0, 3), [0x5c, 0x2f, 3]);
    assert.deepEqual(nameString('^FOO').slice(0, 1), [0x5e]);
    assert.throws(() => nameString('1ABC'), VireoError);
    assert.throws(() => nameString('TOOLONG'), VireoError);
    assert.deepEqual(string('AB'), [0x0d, 0x41, 0x42, 0]);
    assert.throws(() => string('é'), VireoError);
    assert.deepEqual(pkg([integer(5), integer(0)]), [0x12, 5, 2, 0x0a, 5, 0]); // PkgLength counts itself
    assert.equal(eisaIdValue('PNP0501'), 0x0105d041);
    assert.equal(eisaIdValue('PNP0303'), 0x0303d041);
    assert.equal(eisaIdValue('PNP0B00'), 0x000bd041);
    assert.throws(() => eisaIdValue('pnp0501'), VireoError);
  });

  test('the DSDT names \\_S5 as Package(){5, 5, 0, 0}', () => {
    const aml = dsdtAml({ cpus: 1 });
    const s5 = [0x08, ...nameString('_S5_'), 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00];
    const at = Buffer.from(aml).indexOf(Buffer.from(s5));
    assert.ok(at >= 0, 'Name(_S5_, Package(){5, 5, 0, 0}) is in the DSDT');
  });
});

describe('ACPI tables', () => {
  test('placement: RSDP at 0xF0000, tables after it inside the reserved BIOS area, aligned', () => {
    const t = write({ cpus: 2 });
    assert.equal(t.rsdpAddr, 0xf0000);
    assert.equal(t.rsdpAddr, ACPI_TABLES_START);
    assert.deepEqual(
      t.tables.map((x) => x.name),
      ['RSDP', 'XSDT', 'FACP', 'FACS', 'APIC', 'DSDT'],
    );
    let prevEnd = t.rsdpAddr;
    for (const x of t.tables) {
      assert.ok(x.addr >= prevEnd, `${x.name} does not overlap the table before it`);
      assert.equal(x.addr % (x.name === 'FACS' ? 64 : 16), 0, `${x.name} is aligned`);
      prevEnd = x.addr + x.length;
    }
    assert.equal(t.end, prevEnd);
    assert.ok(t.end <= ACPI_TABLES_END);
  });

  for (const cpus of [1, 2, 8]) {
    test(`${cpus} vCPU(s): every checksum is right, RSDP → XSDT → FADT/MADT, FADT → DSDT/FACS`, () => {
      const t = write({ cpus });
      const rsdp = bytesOf(t, 'RSDP');
      assert.equal(ascii(rsdp, 0, 8), 'RSD PTR ');
      assert.equal(byteSum(rsdp.subarray(0, 20)), 0, 'RSDP ACPI 1.0 checksum');
      assert.equal(byteSum(rsdp), 0, 'RSDP extended checksum');
      assert.equal(ascii(rsdp, 9, 6), ACPI_OEM_ID);
      assert.equal(rsdp[15], 2, 'RSDP revision 2');
      assert.equal(rsdp.readUInt32LE(20), 36);
      const xsdtAddr = Number(rsdp.readBigUInt64LE(24));
      assert.equal(xsdtAddr, find(t, 'XSDT').addr);

      for (const x of t.tables) {
        if (x.name === 'RSDP' || x.name === 'FACS') continue;
        const b = bytesOf(t, x.name);
        assert.equal(ascii(b, 0, 4), x.name);
        assert.equal(b.readUInt32LE(4), x.length, `${x.name} length`);
        assert.equal(byteSum(b), 0, `${x.name} checksum`);
        assert.equal(ascii(b, 10, 6), 'VIREO ');
      }

      const xsdt = bytesOf(t, 'XSDT');
      const ptrs = [Number(xsdt.readBigUInt64LE(36)), Number(xsdt.readBigUInt64LE(44))];
      assert.equal(xsdt.length, 36 + 16);
      assert.deepEqual(
        ptrs.map((p) => mem.read(p, 4).toString('latin1')),
        ['FACP', 'APIC'],
      );

      const fadt = bytesOf(t, 'FACP');
      const dsdtAddr = find(t, 'DSDT').addr;
      const facsAddr = find(t, 'FACS').addr;
      assert.equal(fadt.readUInt32LE(40), dsdtAddr, 'DSDT');
      assert.equal(Number(fadt.readBigUInt64LE(140)), dsdtAddr, 'X_DSDT');
      assert.equal(fadt.readUInt32LE(36), facsAddr, 'FIRMWARE_CTRL');
      assert.equal(Number(fadt.readBigUInt64LE(132)), facsAddr, 'X_FIRMWARE_CTRL');
      assert.equal(mem.read(dsdtAddr, 4).toString('latin1'), 'DSDT');
      const facs = bytesOf(t, 'FACS');
      assert.equal(ascii(facs, 0, 4), 'FACS');
      assert.equal(facs.readUInt32LE(4), 64);
    });
  }

  test('FADT: full (not hardware-reduced) ACPI with PM1a at the exported ports, SCI 9, ACPI always on', () => {
    const fadt = bytesOf(write({ cpus: 1 }), 'FACP');
    assert.equal(fadt.length, 276);
    assert.equal(fadt[8], 6, 'revision 6');
    assert.equal(fadt[131], 3, 'minor version 3');
    assert.equal(fadt.readUInt16LE(46), ACPI_SCI_IRQ);
    assert.equal(fadt.readUInt32LE(48), 0, 'SMI_CMD 0: always in ACPI mode');
    assert.equal(fadt[52], 0);
    assert.equal(fadt[53], 0);
    assert.equal(fadt.readUInt32LE(56), ACPI_PM1A_EVT);
    assert.equal(fadt.readUInt32LE(64), ACPI_PM1A_CNT);
    assert.equal(fadt[88], 4, 'PM1_EVT_LEN');
    assert.equal(fadt[89], 2, 'PM1_CNT_LEN');
    assert.equal(fadt.readUInt32LE(76), 0, 'no PM timer by default');
    assert.equal(fadt[91], 0);
    for (const off of [60, 68, 72, 80, 84]) assert.equal(fadt.readUInt32LE(off), 0, `absent block at ${off}`);
    const flags = fadt.readUInt32LE(112);
    assert.equal(flags & FADT_F.HW_REDUCED_ACPI, 0, 'not hardware-reduced');
    for (const f of [FADT_F.WBINVD, FADT_F.PROC_C1, FADT_F.SLP_BUTTON, FADT_F.RESET_REG_SUP])
      assert.ok(flags & f, `flag ${f}`);
    assert.equal(flags & FADT_F.PWR_BUTTON, 0, 'fixed-feature power button');
    const boot = fadt.readUInt16LE(109);
    assert.ok(boot & IAPC_BOOT_ARCH.LEGACY_DEVICES);
    assert.ok(boot & IAPC_BOOT_ARCH.I8042);
    assert.equal(boot & IAPC_BOOT_ARCH.CMOS_RTC_NOT_PRESENT, 0);
    assert.equal(fadt[108], 0x32, 'CMOS century register');
    // RESET_REG: I/O port 0xCF9, 8 bits, byte access; the reset value.
    assert.deepEqual([...fadt.subarray(116, 120)], [1, 8, 0, 1]);
    assert.equal(Number(fadt.readBigUInt64LE(120)), ACPI_RESET_PORT);
    assert.equal(fadt[128], ACPI_RESET_VALUE);
    // The X_ blocks repeat the legacy ones as System I/O generic addresses.
    const gasAt = (off: number): number[] => [...fadt.subarray(off, off + 4), Number(fadt.readBigUInt64LE(off + 4))];
    assert.deepEqual(gasAt(148), [1, 32, 0, 2, ACPI_PM1A_EVT], 'X_PM1a_EVT_BLK');
    assert.deepEqual(gasAt(172), [1, 16, 0, 2, ACPI_PM1A_CNT], 'X_PM1a_CNT_BLK');
    for (const off of [160, 184, 196, 208, 220, 232, 244, 256]) assert.deepEqual(gasAt(off), [0, 0, 0, 0, 0]);
  });

  test('FADT options: PM timer, no CMOS RTC, no i8042, another reset register', () => {
    const fadt = bytesOf(
      write({ cpus: 1, pmTimer: true, cmosRtc: false, i8042: false, reset: { port: 0x64, value: 0xfe } }),
      'FACP',
    );
    assert.equal(fadt.readUInt32LE(76), ACPI_PM_TMR);
    assert.equal(fadt[91], 4);
    assert.deepEqual([...fadt.subarray(208, 212)], [1, 32, 0, 3]);
    assert.equal(Number(fadt.readBigUInt64LE(212)), ACPI_PM_TMR);
    const boot = fadt.readUInt16LE(109);
    assert.equal(boot & IAPC_BOOT_ARCH.I8042, 0);
    assert.ok(boot & IAPC_BOOT_ARCH.CMOS_RTC_NOT_PRESENT);
    assert.equal(fadt[108], 0, 'no century register');
    assert.equal(Number(fadt.readBigUInt64LE(120)), 0x64);
    assert.equal(fadt[128], 0xfe);
    assert.equal(byteSum(fadt), 0);
  });

  for (const cpus of [1, 2, 8]) {
    test(`MADT for ${cpus} vCPU(s): one enabled local APIC per vCPU, the I/O APIC, SCI override, LINT1 NMI`, () => {
      const madt = bytesOf(write({ cpus }), 'APIC');
      assert.equal(madt.readUInt32LE(36), LOCAL_APIC_ADDR);
      assert.equal(madt.readUInt32LE(40), 1, 'PCAT_COMPAT');
      const entries = madtEntries(madt);
      const lapics = entries.filter((e) => e.type === MADT_TYPE.LOCAL_APIC);
      assert.equal(lapics.length, cpus);
      lapics.forEach((e, i) => {
        assert.equal(e.bytes.length, 8);
        assert.equal(e.bytes[2], i, 'processor UID = vCPU index');
        assert.equal(e.bytes[3], i, 'APIC ID = vCPU index');
        assert.equal(e.bytes.readUInt32LE(4), 1, 'enabled');
      });
      const ioapics = entries.filter((e) => e.type === MADT_TYPE.IO_APIC);
      assert.equal(ioapics.length, 1);
      const io = ioapics[0]!.bytes;
      assert.equal(io.length, 12);
      assert.equal(io[2], cpus, 'I/O APIC ID = vCPU count');
      assert.equal(io.readUInt32LE(4), IO_APIC_ADDR);
      assert.equal(io.readUInt32LE(8), 0, 'GSI base 0');
      const isos = entries.filter((e) => e.type === MADT_TYPE.INTERRUPT_OVERRIDE).map((e) => e.bytes);
      assert.deepEqual(
        isos.map((b) => [b.length, b[2], b[3], b.readUInt32LE(4), b.readUInt16LE(8)]),
        [[10, 0, ACPI_SCI_IRQ, ACPI_SCI_IRQ, 0x000d]],
        'only the SCI is overridden (level, active high); IRQ 0 stays on GSI 0 as KVM routes it',
      );
      const nmis = entries.filter((e) => e.type === MADT_TYPE.LOCAL_APIC_NMI).map((e) => e.bytes);
      assert.deepEqual(
        nmis.map((b) => [b.length, b[2], b.readUInt16LE(3), b[5]]),
        [[6, 0xff, 0, 1]],
      );
      assert.equal(entries.length, cpus + 3);
      assert.equal(madt[8], 5, 'MADT revision 5');
    });
  }

  test('irq0ToGsi2 adds the QEMU-style IRQ0 → GSI 2 override', () => {
    const madt = bytesOf(write({ cpus: 2, irq0ToGsi2: true }), 'APIC');
    const isos = madtEntries(madt)
      .filter((e) => e.type === MADT_TYPE.INTERRUPT_OVERRIDE)
      .map((e) => [e.bytes[3], e.bytes.readUInt32LE(4), e.bytes.readUInt16LE(8)]);
    assert.deepEqual(isos, [
      [0, 2, 0],
      [9, 9, 0x0d],
    ]);
    assert.equal(byteSum(madt), 0);
  });

  test(`${MAX_XAPIC_CPUS} vCPUs fit in the ACPI area; more, fewer than 1 or fractional are refused`, () => {
    const t = write({ cpus: MAX_XAPIC_CPUS });
    assert.ok(t.end <= ACPI_TABLES_END, `ends at ${t.end.toString(16)}`);
    const madt = bytesOf(t, 'APIC');
    assert.equal(madtEntries(madt).filter((e) => e.type === MADT_TYPE.LOCAL_APIC).length, MAX_XAPIC_CPUS);
    for (const cpus of [0, MAX_XAPIC_CPUS + 1, 1.5, Number.NaN])
      assert.throws(() => writeAcpiTables(mem, { cpus }), ConfigError, `cpus ${cpus}`);
  });

  test('a misaligned RSDP, a too-small limit or memory below the tables is refused and writes nothing', () => {
    assert.throws(() => buildAcpiTables({ cpus: 1 }, 0xf0008), ConfigError);
    mem.fill(BIOS_AREA_START, BIOS_AREA_END - BIOS_AREA_START, 0xaa);
    assert.throws(
      () => writeAcpiTables(mem, { cpus: 8, limit: ACPI_TABLES_START + 0x100 }),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_MEMORY_LAYOUT',
    );
    assert.ok(
      mem.read(BIOS_AREA_START, 0x1000).every((b) => b === 0xaa),
      'nothing written',
    );
    const small = GuestMemoryMapping.allocate([{ gpa: 0, size: 0xa0000 }]);
    try {
      assert.throws(
        () => writeAcpiTables(new GuestMemory(small.descriptors), { cpus: 1 }),
        (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_MEMORY_LAYOUT',
      );
    } finally {
      small.release();
    }
  });

  test('the RSDP can go elsewhere (e.g. above 1 MiB) with the tables after it', () => {
    const t = writeAcpiTables(mem, { cpus: 2, rsdpAddr: 0x200000 });
    assert.equal(t.rsdpAddr, 0x200000);
    const rsdp = mem.read(0x200000, 36);
    assert.equal(byteSum(rsdp), 0);
    assert.equal(Number(rsdp.readBigUInt64LE(24)), find(t, 'XSDT').addr);
    assert.ok(t.tables.every((x) => x.addr >= 0x200000));
  });

  test('DSDT: sleep packages, processor devices matching the MADT UIDs, legacy devices', () => {
    const aml = Buffer.from(dsdtAml({ cpus: 3, pvpanicPort: 0x505 }));
    for (let i = 0; i < 3; i++) assert.ok(aml.includes(Buffer.from(processorName(i))), `${processorName(i)}`);
    assert.equal(processorName(253), 'C0FD');
    for (const id of ['ACPI0007', 'QEMU0001']) assert.ok(aml.includes(Buffer.from(id)), id);
    const withoutLegacy = Buffer.from(dsdtAml({ cpus: 1, serial: false, i8042: false, cmosRtc: false }));
    for (const n of ['COM1', 'PS2K', 'RTC_', 'PEVT']) assert.ok(!withoutLegacy.includes(Buffer.from(n)), n);
    assert.equal(ACPI_S5_SLP_TYP, 5);
  });
});

describe('ACPI tables through ACPICA (iasl, acpiexec)', () => {
  for (const cpus of [1, 2, 8, MAX_XAPIC_CPUS]) {
    test(`${cpus} vCPU(s): iasl disassembles every table without a complaint and recompiles it byte for byte`, () => {
      const t = write({ cpus, pvpanicPort: 0x505 });
      for (const name of ['XSDT', 'FACP', 'FACS', 'APIC', 'DSDT']) {
        const b = bytesOf(t, name);
        const file = `${name.toLowerCase()}-${cpus}`;
        disassemble(file, b);
        recompile(file, b, name !== 'FACS');
      }
    });
  }

  test('the DSDT disassembles to Name (_S5, Package (0x04) {0x05, 0x05, Zero, Zero}) and the devices', () => {
    const t = write({ cpus: 2 });
    // Without the disassembler's // comments.
    const dsl = disassemble('dsdt-s5', bytesOf(t, 'DSDT')).replace(/\s*\/\/.*$/gm, '');
    assert.match(dsl, /DefinitionBlock \("", "DSDT", 2, "VIREO ", "VIREOVM ", 0x00000001\)/);
    assert.match(dsl, /Name \(_S5, Package \(0x04\)[^{]*\{\s*0x05,\s*0x05,\s*Zero,\s*Zero\s*\}\)/);
    assert.match(dsl, /Name \(_S0, Package \(0x04\)[^{]*\{\s*Zero,\s*Zero,\s*Zero,\s*Zero\s*\}\)/);
    assert.match(dsl, /Device \(C001\)\s*\{\s*Name \(_HID, "ACPI0007"[^\n]*\n\s*Name \(_UID, One\)/);
    assert.match(
      dsl,
      /EisaId \("PNP0501"\)[\s\S]*?IO \(Decode16,\s*0x03F8,\s*0x03F8,\s*0x00,\s*0x08,[\s\S]*?IRQNoFlags \(\)\s*\{4\}/,
    );
    assert.match(dsl, /EisaId \("PNP0303"\)[\s\S]*?0x0060,[\s\S]*?0x0064,[\s\S]*?\{1\}/);
    assert.match(dsl, /EisaId \("PNP0B00"\)[\s\S]*?0x0070,[\s\S]*?\{8\}/);
  });

  test('the FADT and MADT disassemble to the fields Linux reads', () => {
    const t = write({ cpus: 2 });
    const fadt = disassemble('facp-fields', bytesOf(t, 'FACP'));
    assert.match(fadt, /SCI Interrupt : 0009/);
    assert.match(fadt, /PM1A Event Block Address : 00000600/);
    assert.match(fadt, /PM1A Control Block Address : 00000604/);
    assert.match(fadt, /Hardware Reduced \(V5\) : 0/);
    assert.match(fadt, /8042 Present on ports 60\/64 \(V2\) : 1/);
    assert.match(fadt, /Reset Register Supported \(V2\) : 1/);
    const madt = disassemble('apic-fields', bytesOf(t, 'APIC'));
    assert.equal(madt.match(/\[Processor Local APIC\]/g)?.length, 2);
    assert.match(madt, /I\/O Apic ID : 02\s*\n.*\n.*Address : FEC00000/);
    assert.match(madt, /Source : 09\s*\n.*Interrupt : 00000009\s*\n.*Flags \(decoded below\) : 000D/);
    assert.match(madt, /\[Local APIC NMI\][\s\S]*Processor ID : FF[\s\S]*Interrupt Input LINT : 01/);
  });

  test('acpiexec loads FADT, FACS, MADT and DSDT and enters S5 with SLP_TYP 5', async () => {
    const t = write({ cpus: 8 });
    const files = ['FACP', 'FACS', 'APIC', 'DSDT'].map((n) => {
      const f = join(work, `exec-${n.toLowerCase()}.dat`);
      writeFileSync(f, bytesOf(t, n));
      return f;
    });
    const r = await acpiexecUntil(
      ['-b', 'evaluate _SB.C007._UID; evaluate _SB.COM1._CRS; sleep 5', ...files],
      'Entering sleep state [S5]',
    );
    assert.deepEqual(
      r.out.split('\n').filter((l) => /(ACPI|Firmware)( BIOS)? (Warning|Error)|Incorrect checksum/i.test(l)),
      [],
      r.out,
    );
    assert.match(r.out, /ACPI: FACP 0x[0-9A-F]+ 000114 \(v06 VIREO/);
    assert.match(r.out, /ACPI: APIC 0x[0-9A-F]+ [0-9A-F]{6} \(v05 VIREO/);
    assert.match(r.out, /Evaluation of \\_SB\.C007\._UID returned[^\n]*\n\s*\[Integer\] = 0000000000000007/);
    assert.match(r.out, /47 01 F8 03 F8 03 00 08 22 10 00 79 00/, 'COM1 _CRS: IO 0x3F8/8, IRQ 4');
    assert.match(r.out, /Register values for sleep state S5: Sleep-A: 05, Sleep-B: 05/);
    assert.ok(r.sawIt, `ACPICA entered S5:\n${r.out}`);
  });
});

describe('MP table', () => {
  interface MpEntry {
    type: number;
    bytes: Buffer;
  }

  function readMp(addr: number): { table: Buffer; entries: MpEntry[] } {
    const fp = mem.read(addr, 16);
    assert.equal(ascii(fp, 0, 4), '_MP_');
    assert.equal(byteSum(fp), 0, 'floating pointer checksum');
    assert.equal(fp[8], 1, 'length: one paragraph');
    assert.equal(fp[9], 4, 'spec 1.4');
    assert.equal(fp[11], 0, 'a configuration table is present');
    const tableAddr = fp.readUInt32LE(4);
    assert.equal(tableAddr, addr + 16);
    const len = mem.read16(tableAddr + 4);
    const table = mem.read(tableAddr, len);
    assert.equal(ascii(table, 0, 4), 'PCMP');
    assert.equal(byteSum(table), 0, 'configuration table checksum');
    assert.equal(table[6], 4);
    assert.equal(table.readUInt32LE(36), LOCAL_APIC_ADDR);
    const entries: MpEntry[] = [];
    let o = 44;
    while (o < len) {
      const type = table[o] as number;
      const size = MP_ENTRY_SIZE[type];
      assert.ok(size !== undefined, `known entry type ${type}`);
      entries.push({ type, bytes: table.subarray(o, o + size) });
      o += size;
    }
    assert.equal(o, len, 'entries fill the table exactly');
    assert.equal(table.readUInt16LE(34), entries.length, 'entry count');
    return { table, entries };
  }

  for (const cpus of [1, 2, 8, MAX_XAPIC_CPUS]) {
    test(`${cpus} vCPU(s): processors (BSP = 0), ISA bus, I/O APIC, ISA IRQs 0-15, LINT0 ExtINT and LINT1 NMI`, () => {
      mem.fill(BIOS_AREA_START, BIOS_AREA_END - BIOS_AREA_START, 0);
      const addr = writeMpTable(mem, cpus);
      assert.equal(addr, MPTABLE_START);
      const { table, entries } = readMp(addr);
      assert.ok(addr + 16 + table.length <= MPTABLE_END);
      const cpusE = entries.filter((e) => e.type === MP_ENTRY.PROCESSOR).map((e) => e.bytes);
      assert.equal(cpusE.length, cpus);
      cpusE.forEach((b, i) => {
        assert.equal(b[1], i, 'APIC ID');
        assert.equal(b[3], i === 0 ? 3 : 1, 'enabled, BSP only on vCPU 0');
      });
      const buses = entries.filter((e) => e.type === MP_ENTRY.BUS).map((e) => e.bytes);
      assert.deepEqual(
        buses.map((b) => [b[1], ascii(b, 2, 6)]),
        [[0, 'ISA   ']],
      );
      const ioapics = entries.filter((e) => e.type === MP_ENTRY.IOAPIC).map((e) => e.bytes);
      assert.equal(ioapics.length, 1);
      assert.equal(ioapics[0]![1], cpus, 'I/O APIC ID = vCPU count, as in the MADT');
      assert.equal(ioapics[0]![3], 1, 'usable');
      assert.equal(ioapics[0]!.readUInt32LE(4), IO_APIC_ADDR);
      const ints = entries.filter((e) => e.type === MP_ENTRY.IO_INTERRUPT).map((e) => e.bytes);
      assert.deepEqual(
        ints.map((b) => [b[1], b.readUInt16LE(2), b[4], b[5], b[6], b[7]]),
        Array.from({ length: 16 }, (_, irq) => [MP_INT.INT, 0, 0, irq, cpus, irq]),
      );
      const lints = entries.filter((e) => e.type === MP_ENTRY.LOCAL_INTERRUPT).map((e) => e.bytes);
      assert.deepEqual(
        lints.map((b) => [b[1], b[6], b[7]]),
        [
          [MP_INT.EXTINT, 0, 0],
          [MP_INT.NMI, 0xff, 1],
        ],
      );
      assert.equal(entries.length, cpus + 1 + 1 + 16 + 2);
    });
  }

  test('irq0ToGsi2: IRQ 0 → pin 2 and no entry for the cascade IRQ 2', () => {
    const addr = writeMpTable(mem, 2, { irq0ToGsi2: true });
    const ints = readMp(addr)
      .entries.filter((e) => e.type === MP_ENTRY.IO_INTERRUPT)
      .map((e) => [e.bytes[5], e.bytes[7]]);
    assert.equal(ints.length, 15);
    assert.deepEqual(ints[0], [0, 2]);
    assert.ok(!ints.some(([irq]) => irq === 2));
  });

  test('bad vCPU counts, addresses, limits and memory are refused', () => {
    for (const cpus of [0, MAX_XAPIC_CPUS + 1, 2.5]) assert.throws(() => writeMpTable(mem, cpus), ConfigError);
    assert.throws(() => writeMpTable(mem, 1, { addr: 0x9fc08 }), ConfigError);
    assert.throws(
      () => writeMpTable(mem, 8, { limit: MPTABLE_START + 64 }),
      (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_MEMORY_LAYOUT',
    );
    const small = GuestMemoryMapping.allocate([{ gpa: 0, size: 0xa0000 }]);
    try {
      const m = new GuestMemory(small.descriptors);
      assert.throws(
        () => writeMpTable(m, 1),
        (e: unknown) => e instanceof VireoError && e.code === 'VIREO_ERR_MEMORY_LAYOUT',
      );
      // The EBDA also works (Firecracker's spot) when the table fits.
      assert.equal(writeMpTable(m, 2, { addr: 0x9fc00, limit: 0xa0000 }), 0x9fc00);
      assert.equal(byteSum(m.read(0x9fc00, 16)), 0);
    } finally {
      small.release();
    }
  });
});
