/**
 * Kernel loading and the boot vCPU's entry state. Picks the loader by what the image is:
 * a Multiboot header wins (Multiboot kernels are often also ELF), then ELF64.
 */
import { type VirtioMmioAcpi, writeAcpiTables } from '../arch/x86_64/acpi.js';
import { LAYOUT } from '../arch/x86_64/layout.js';
import { setupLinuxLongMode, setupLinuxProtectedMode } from '../arch/x86_64/linux-entry.js';
import { writeMpTable } from '../arch/x86_64/mptable.js';
import { setupProtectedMode, zeroRegs } from '../arch/x86_64/regs.js';
import { ImageError } from '../common/errors.js';
import { formatSize, readUserFile } from '../common/files.js';
import { PVPANIC_PORT } from '../devices/legacy/pvpanic.js';
import type { Vcpu } from '../kvm/kvm.js';
import { isElf, parseElf } from '../loader/elf.js';
import { isBzImage, loadLinux, loadLinuxElf } from '../loader/linux.js';
import { findMultibootHeader, loadMultiboot, MULTIBOOT_BOOTLOADER_MAGIC } from '../loader/multiboot.js';
import { findPvhEntry, loadPvh } from '../loader/pvh.js';
import type { GuestMemory } from '../memory/guest-memory.js';

export interface BootSource {
  kernel: string;
  initrd?: string | undefined;
  cmdline: string;
  /** vCPUs, for the ACPI and MP tables Linux kernels get. */
  cpus: number;
  /** virtio-mmio devices to declare in the DSDT. */
  virtioMmio?: readonly VirtioMmioAcpi[] | undefined;
}

export type BootProtocol = 'multiboot' | 'elf64' | 'linux-bzimage' | 'linux-elf' | 'pvh';

export interface BootResult {
  protocol: BootProtocol;
  entry: number;
}

/**
 * Reads a kernel or initrd whole: a regular file no larger than guest memory (anything larger could
 * not be loaded anyway; /dev/zero or a FIFO is refused before a byte is read).
 */
function readImage(path: string, what: string, mem: GuestMemory): Buffer {
  return readUserFile(path, {
    what,
    maxBytes: mem.size,
    bound: `the guest's ${formatSize(mem.size)} of memory`,
    error: (m) => new ImageError(m),
  });
}

/**
 * The largest file isLinuxKernel looks at: it runs before guest memory exists, so it has no bound of
 * its own; a larger "kernel" is left to loadKernel, which refuses it against guest memory.
 */
const PROBE_MAX = 1 << 30;

/**
 * Whether the file is a Linux kernel (bzImage, or an ELF vmlinux — with or without a PVH note); false when
 * unreadable. A PVH note alone does not make a Linux kernel: small PVH guests (and other OSes' PVH kernels)
 * link low and run natively; a Linux vmlinux always links at the kernel map.
 */
export function isLinuxKernel(path: string, maxBytes = PROBE_MAX): boolean {
  let image: Buffer;
  try {
    image = readUserFile(path, { what: 'kernel', maxBytes, error: (m) => new ImageError(m) });
  } catch {
    return false;
  }
  if (isBzImage(image)) return true;
  if (!isElf(image) || findMultibootHeader(image)) return false;
  try {
    return isLinuxVmlinux(parseElf(image));
  } catch {
    return false;
  }
}

/** ACPI tables (for SMP and power-off) and an MP table (for kernels without ACPI); returns the RSDP. */
function writeFirmwareTables(mem: GuestMemory, cpus: number, virtioMmio: readonly VirtioMmioAcpi[] = []): number {
  const acpi = writeAcpiTables(mem, { cpus, pvpanicPort: PVPANIC_PORT, virtioMmio });
  writeMpTable(mem, cpus);
  return acpi.rsdpAddr;
}

/** Linux's 64-bit entry (RSI → zero page) or 32-bit protected-mode entry (ESI → zero page). */
function enterLinux(mem: GuestMemory, boot: Vcpu, mode: '64' | '32', entry: number, zeroPage: number): void {
  if (mode === '64') {
    boot.setSregs(setupLinuxLongMode(mem, boot.getSregs()));
    boot.setRegs({
      ...zeroRegs(),
      rip: BigInt(entry),
      rsp: BigInt(LAYOUT.bootStack),
      rbp: BigInt(LAYOUT.bootStack),
      rsi: BigInt(zeroPage),
    });
  } else {
    boot.setSregs(setupLinuxProtectedMode(mem, boot.getSregs()));
    boot.setRegs({ ...zeroRegs(), rip: BigInt(entry), rsi: BigInt(zeroPage) });
  }
}

/** A Linux vmlinux links at the kernel map (0xffffffff8...) with physical load addresses. */
const isLinuxVmlinux = (elf: ReturnType<typeof parseElf>): boolean =>
  elf.segments.some((s) => s.vaddr >= 0xffffffff80000000 - 2 ** 31 && s.vaddr !== s.paddr);

export function loadKernel(mem: GuestMemory, boot: Vcpu, source: BootSource): BootResult {
  const image = readImage(source.kernel, 'kernel', mem);
  if (image.length === 0) throw new ImageError(`kernel ${source.kernel} is empty`);
  const initrd = source.initrd !== undefined ? readImage(source.initrd, 'initrd', mem) : undefined;

  // A Linux bzImage (setup header with "HdrS").
  if (isBzImage(image)) {
    const rsdp = writeFirmwareTables(mem, source.cpus, source.virtioMmio);
    const l = loadLinux(mem, image, { cmdline: source.cmdline, initrd, rsdpAddr: rsdp, name: source.kernel });
    enterLinux(mem, boot, l.entryMode, l.entry, l.zeroPage);
    return { protocol: 'linux-bzimage', entry: l.entry };
  }

  if (findMultibootHeader(image)) {
    const modules = initrd ? [{ data: initrd, cmdline: source.initrd as string }] : [];
    const mb = loadMultiboot(mem, image, source.cmdline, modules, source.kernel);
    boot.setSregs(setupProtectedMode(mem, boot.getSregs()));
    boot.setRegs({
      ...zeroRegs(),
      rip: BigInt(mb.entry),
      rax: BigInt(MULTIBOOT_BOOTLOADER_MAGIC),
      rbx: BigInt(mb.infoAddr),
    });
    return { protocol: 'multiboot', entry: mb.entry };
  }

  if (isElf(image)) {
    // PVH: an ELF kernel with Xen's PHYS32_ENTRY note (Linux built with CONFIG_PVH).
    const pvhEntry = findPvhEntry(image, source.kernel);
    if (pvhEntry !== undefined) {
      const rsdp = writeFirmwareTables(mem, source.cpus, source.virtioMmio);
      const p = loadPvh(mem, image, { cmdline: source.cmdline, initrd, rsdpAddr: rsdp, name: source.kernel });
      boot.setSregs(setupLinuxProtectedMode(mem, boot.getSregs()));
      boot.setRegs({ ...zeroRegs(), rip: BigInt(p.entry), rbx: BigInt(p.startInfo) });
      return { protocol: 'pvh', entry: p.entry };
    }
    const elf = parseElf(image, source.kernel);
    if (elf.class !== 64)
      throw new ImageError(
        `${source.kernel} is a 32-bit ELF without a Multiboot header: vireo boots Linux, 64-bit ELF and Multiboot kernels`,
      );
    // An ELF64 kernel (a Linux vmlinux, or any 64-bit kernel): loaded at its physical addresses and
    // entered in long mode with RSI → a zero page (command line, e820 map, initrd, RSDP), as Firecracker does.
    const rsdp = writeFirmwareTables(mem, source.cpus, source.virtioMmio);
    const l = loadLinuxElf(mem, image, { cmdline: source.cmdline, initrd, rsdpAddr: rsdp, name: source.kernel });
    enterLinux(mem, boot, '64', l.entry, l.zeroPage);
    return { protocol: isLinuxVmlinux(elf) ? 'linux-elf' : 'elf64', entry: l.entry };
  }

  throw new ImageError(
    `${source.kernel} is not a kernel vireo can boot: expected a Linux bzImage, a Multiboot image or a 64-bit ELF`,
  );
}
