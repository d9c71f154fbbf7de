/**
 * Kernel loading and the boot vCPU's entry state. Picks the loader by what the image is:
 * a Multiboot header wins (Multiboot kernels are often also ELF), then ELF64.
 */
import { readFileSync } from 'node:fs';
import { LAYOUT } from '../arch/x86_64/layout.js';
import { setupLongMode, setupProtectedMode, zeroRegs } from '../arch/x86_64/regs.js';
import { ImageError } from '../common/errors.js';
import type { Vcpu } from '../kvm/kvm.js';
import { isElf, loadElf, parseElf } from '../loader/elf.js';
import { findMultibootHeader, loadMultiboot, MULTIBOOT_BOOTLOADER_MAGIC } from '../loader/multiboot.js';
import type { GuestMemory } from '../memory/guest-memory.js';

export interface BootSource {
  kernel: string;
  initrd?: string | undefined;
  cmdline: string;
}

export type BootProtocol = 'multiboot' | 'elf64';

export interface BootResult {
  protocol: BootProtocol;
  entry: number;
}

function readImage(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ImageError(
      code === 'ENOENT' ? `${what} ${path} does not exist` : `cannot read ${what} ${path}: ${code ?? String(e)}`,
    );
  }
}

/** Zero page (Linux boot_params) offsets vireo fills for 64-bit ELF entry. */
const BP_CMD_LINE_PTR = 0x228;
const BP_CMDLINE_SIZE = 0x238;

export function loadKernel(mem: GuestMemory, boot: Vcpu, source: BootSource): BootResult {
  const image = readImage(source.kernel, 'kernel');
  if (image.length === 0) throw new ImageError(`kernel ${source.kernel} is empty`);
  const initrd = source.initrd !== undefined ? readImage(source.initrd, 'initrd') : undefined;

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
    const elf = parseElf(image, source.kernel);
    if (elf.class !== 64)
      throw new ImageError(
        `${source.kernel} is a 32-bit ELF without a Multiboot header: vireo boots 64-bit ELF kernels and Multiboot images`,
      );
    const loaded = loadElf(mem, elf, source.kernel);
    if (initrd)
      throw new ImageError(
        '--initrd with a plain ELF64 kernel needs the Linux boot protocol; use a Multiboot or Linux kernel',
      );
    if (!mem.isValid(loaded.entry, 1))
      throw new ImageError(`${source.kernel}: entry point 0x${loaded.entry.toString(16)} is outside guest memory`);
    // A zero page with the command line, as a Linux vmlinux expects in RSI.
    const cmd = Buffer.from(`${source.cmdline}\0`, 'latin1');
    if (cmd.length > LAYOUT.cmdlineMax)
      throw new ImageError(`command line is longer than ${LAYOUT.cmdlineMax - 1} bytes`);
    mem.fill(LAYOUT.bootInfo, 0x1000);
    mem.write(LAYOUT.cmdline, cmd);
    mem.write32(LAYOUT.bootInfo + BP_CMD_LINE_PTR, LAYOUT.cmdline);
    mem.write32(LAYOUT.bootInfo + BP_CMDLINE_SIZE, cmd.length - 1);
    boot.setSregs(setupLongMode(mem, boot.getSregs()));
    boot.setRegs({
      ...zeroRegs(),
      rip: BigInt(loaded.entry),
      rsp: BigInt(LAYOUT.bootStack),
      rbp: BigInt(LAYOUT.bootStack),
      rsi: BigInt(LAYOUT.bootInfo),
    });
    return { protocol: 'elf64', entry: loaded.entry };
  }

  throw new ImageError(`${source.kernel} is not a kernel vireo can boot: expected a Multiboot image or a 64-bit ELF`);
}
